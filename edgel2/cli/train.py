"""``edgel2 train``: options in, :func:`edgel2.train.train` called, its summary out."""
from __future__ import annotations

import click

from edgel2.backend import recorded_backend, use_backend
from edgel2.cli.base import (
    DEFAULTS,
    FINETUNE,
    NON_NEGATIVE,
    backend_option,
    checked_name,
    cli,
    data_options,
    devices_option,
    plural,
)
from edgel2.config import (
    ARCHITECTURES,
    LOGIT_NORM_TEMPERATURE,
    SCHEDULES,
    TRAIN_COMPUTE_DTYPES,
    TrainConfig,
)

# --freeze's range: the stages of the deepest architecture (validate checks the chosen one's)
MOST_STAGES = max(len(a.stages) for a in ARCHITECTURES.values())


@cli.command()
@data_options(training=True)
@backend_option
@click.option("--arch", type=click.Choice(list(ARCHITECTURES)), default=DEFAULTS.arch,
              show_default=True,
              help="The network: " + "; ".join(f"{name}: {a.summary}"
                                              for name, a in ARCHITECTURES.items()) + ".")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="Channels of the first stage [default: the architecture's standard: "
                   + ", ".join(f"{a.width} for {name}" for name, a in ARCHITECTURES.items())
                   + "].")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help=f"Images per step [default: {DEFAULTS.batch_size}; {FINETUNE.batch_size} "
                   "with --pretrained or --weights].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Peak learning rate of the schedule [default: {DEFAULTS.lr}; "
                   f"{FINETUNE.lr} with --pretrained or --weights].")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULTS.schedule,
              show_default=True, help="Linear warm-up, then linear (onecycle) or cosine decay.")
@click.option("--warmup", type=click.FloatRange(0, 1, max_open=True), default=None,
              help=f"Fraction of all steps spent warming up [default: {DEFAULTS.warmup}; "
                   f"{FINETUNE.warmup} with --pretrained or --weights].")
@click.option("--momentum", type=click.FloatRange(0, 1), default=DEFAULTS.momentum,
              show_default=True, help="SGD momentum (Nesterov unless --no-nesterov).")
@click.option("--nesterov/--no-nesterov", default=DEFAULTS.nesterov, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True),
              default=DEFAULTS.label_smoothing, show_default=True)
@click.option("--weight-l2", type=NON_NEGATIVE, default=DEFAULTS.weight_l2, show_default=True,
              help="L2 on every conv/dense kernel: adds weight_l2*sum(w^2) to the loss. "
                   "2.5e-4 equals SGD weight decay 5e-4.")
@click.option("--feature-l2", type=NON_NEGATIVE, default=DEFAULTS.feature_l2, show_default=True,
              help="Penalty lambda*mean_batch ||u||^2 on the pooled features u before the "
                   "classifier (training only; absent from exports).")
@click.option("--bn-l2", type=NON_NEGATIVE, default=DEFAULTS.bn_l2, show_default=True,
              help="L2 on the batch-norm scales and offsets and the classifier bias (the "
                   "published recipes' 'weight decay on all parameters': equal to --weight-l2).")
@click.option("--l1", type=NON_NEGATIVE, default=DEFAULTS.l1, show_default=True,
              help="L1 on every conv/dense kernel (for comparisons).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS.dropout,
              show_default=True, help="Dropout before the classifier (for comparisons).")
@click.option("--augment/--no-augment", default=DEFAULTS.augment, show_default=True,
              help="Random crop (4-pixel padding) and horizontal flip while training.")
@click.option("--color-jitter", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Scale brightness, contrast and saturation by random factors from 1-J to 1+J "
                   f"[default: {DEFAULTS.color_jitter}; {FINETUNE.color_jitter} with "
                   "--pretrained or --weights].")
@click.option("--crop-scale", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Zoom into a random crop keeping at least this share of the image's area "
                   f"(1: off) [default: {DEFAULTS.crop_scale}; {FINETUNE.crop_scale} with "
                   "--pretrained or --weights].")
@click.option("--cutout", type=click.IntRange(min=0), default=DEFAULTS.cutout, show_default=True,
              help="Side of a square filled with the mean pixel in each training image (0: off).")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS.ema,
              show_default=True,
              help="Keep an exponential moving average of the weights with this momentum "
                   "(e.g. 0.99) and save it as model.keras; per-epoch test figures are of the "
                   "raw weights. 0: off.")
@click.option("--outliers", type=click.FloatRange(0, 1), default=DEFAULTS.outliers,
              show_default=True, metavar="SHARE",
              help="Outlier exposure: add this share of synthetic images of none of the classes "
                   "(jigsaws, noise, mixes of two classes) to each batch, with uniform targets, "
                   "so the network learns to be unsure on them (e.g. 0.25). 0: off.")
@click.option("--logit-norm", type=NON_NEGATIVE, default=DEFAULTS.logit_norm,
              show_default=True, metavar="TEMPERATURE",
              help="Train on logits / (T * ||logits||) (logit norm; its paper's T for CIFAR-10 "
                   f"is {LOGIT_NORM_TEMPERATURE}): no more confidence by growing the logits. "
                   "0: plain cross-entropy.")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="FILE",
              help="Distil from this edgel2 model (.keras, or an exported .onnx/.tflite, run by "
                   "edgel2's runtime; e.g. models/resnet18-int8.onnx): the loss gains its "
                   "softened logits on the same augmented batch.")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULTS.distill_temperature, show_default=True, metavar="T",
              help="Temperature both sets of logits are softened by, with --teacher.")
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=DEFAULTS.distill_weight,
              show_default=True, metavar="W",
              help="Weight of the distillation term, with --teacher; the labels' cross-entropy "
                   "gets 1 - W.")
@click.option("--compute-dtype", type=click.Choice(TRAIN_COMPUTE_DTYPES),
              default=DEFAULTS.compute_dtype, show_default=True,
              help="What layers compute in (weights stay fp32); auto: mixed bf16 on a GPU, "
                   "fp32 on the CPU. bf16 on a CPU pays only with AVX512_BF16 or AMX; "
                   "elsewhere it is emulated, about 3x slower (a warning says so).")
@click.option("--subset", type=click.IntRange(min=1), default=None,
              help="Train on a class-balanced random subset of N images (quick runs).")
@click.option("--test-subset", type=click.IntRange(min=1), default=None,
              help="Use a class-balanced subset of N test images (quick runs).")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True),
              default=DEFAULTS.val_split, show_default=True,
              help="Hold out this fraction of the training images (seeded, class-balanced) "
                   "as a validation split: per-epoch figures are on it and it chooses "
                   "best.keras. 0: none (per-epoch figures on the test split, no best.keras).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=DEFAULTS.seed,
              show_default=True)
@click.option("--pretrained", is_flag=True,
              help="Fine-tune the shipped ResNet-18 (trained on CIFAR-10-JPEG; rebuilt from "
                   "models/resnet18-int8.onnx, no download): every layer but the classifier, "
                   "which is new for the data's classes (kept for CIFAR-10's own). Width 64; "
                   "any image size.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Fine-tune from this edgel2 .keras file (or an .onnx edgel2 exported) instead; "
                   "its classifier too when the data has its classes, in its order.")
@click.option("--freeze", type=click.IntRange(0, MOST_STAGES), default=DEFAULTS.freeze,
              show_default=True,
              help="When fine-tuning, keep the stem and the first N stages frozen (their batch "
                   "norms in inference mode); all of them (4 for resnet18, 3 for resnet20): "
                   "only the classifier trains.")
@click.option("--patience", type=click.IntRange(min=0), default=DEFAULTS.patience,
              show_default=True,
              help="Stop when the validation top-1 has not improved for N epochs (needs "
                   "--val-split or a val/ folder; best.keras is that best epoch). 0: off.")
@click.option("--name", default=None, callback=checked_name,
              help="The run's name, which exported files (NAME-int8.onnx), their metadata and "
                   "served models carry (default: the run directory's name).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/train/exp, exp2, ...).")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this directory after its last checkpoint, exactly "
                   "as it would have gone on (its saved config and backend are used; other "
                   "options are ignored). Finishes a run killed after its last epoch.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Write last.keras, best.keras and curves.png every N epochs (and after "
                   "the last): on a GPU an epoch can be shorter than the writes.")
@click.option("--quiet", is_flag=True,
              help="One line per epoch instead of a progress bar (the default when the "
                   "output is not a terminal).")
@click.option("--devices", default="1", show_default=True, callback=devices_option,
              help="JAX: split each batch over 'all' or N local devices (GPUs; on a CPU, "
                   "XLA_FLAGS=--xla_force_host_platform_device_count=N simulates them). "
                   "--batch-size is the global batch and --lr is for it.")
@click.option("--num-processes", type=click.IntRange(min=1), default=None,
              help="JAX: train with this many processes (hosts) together; each runs the same "
                   "command with its own --process-id (else $KERAS_DISTRIBUTION_*).")
@click.option("--process-id", type=click.IntRange(min=0), default=None,
              help="This process's number, 0 to --num-processes - 1; process 0 writes the run "
                   "directory.")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="Where process 0 listens for the others (a free port on its host).")
def train(backend, out, resume, checkpoint_every, quiet, pretrained, devices, num_processes,
          process_id, coordinator, name, **options) -> None:
    """Train an L2-regularized CIFAR ResNet (--arch) and fill a run directory.

    \b
    The run directory gets model.keras (the final model), last.keras (the checkpoint
    --resume reads), best.keras (with --val-split), config.json, metrics.csv, curves.png
    and summary.json (the test top-1 of the saved models).

    \b
    Several GPUs or hosts (JAX; Keras' DataParallel, batch norm synchronised):
      edgel2 train --backend jax --devices all
      edgel2 train --backend jax --devices all --num-processes 2 --process-id 0 \\
          --coordinator 10.0.0.1:1234 --out /shared/run
    """
    if pretrained and options["weights"]:
        raise click.UsageError("--pretrained and --weights each name the weights to start "
                               "from: pass one")
    weights = options.pop("weights")
    weights = "pretrained" if pretrained else weights
    given = {k: v for k, v in options.items() if v is not None}  # unset: the recipe's
    config = TrainConfig.finetune(weights, **given) if weights else TrainConfig(**given)
    config.validate()  # before Keras loads: a bad option is one line at once
    use_backend(backend or (recorded_backend(resume) if resume else None))
    from edgel2.train import train as run_training
    from edgel2.train.distribute import place

    placement = place(devices, num_processes, process_id, coordinator)
    result = run_training(config, out, resume=resume, checkpoint_every=checkpoint_every,
                          verbose=2 if quiet else 1, placement=placement, name=name)
    if not placement.chief:
        click.echo(f"process {placement.process_id} of {placement.num_processes}: done; "
                   f"process 0 wrote the run directory {result.run_dir}")
        return
    if result.stopped_early:
        click.echo(f"stopped early after epoch {result.history[-1]['epoch']}: the validation "
                   "top-1 had stopped improving (--patience)")
    click.echo(f"model.keras: test top-1 {100 * result.test_acc:.2f} % on {result.test_data}, "
               f"after {plural(result.history[-1]['epoch'], 'epoch')}")
    if result.best:
        click.echo(f"best.keras: epoch {result.best['epoch']}, chosen on validation top-1 "
                   f"{100 * result.best['val_acc']:.2f} %; test top-1 "
                   f"{100 * result.best['test_acc']:.2f} %")
    click.echo(f"run directory: {result.run_dir} (name: {result.name})")

