"""The ``edgel2`` command line: a thin layer over the Python API.

Heavy libraries (Keras, TensorFlow, JAX) are imported inside the commands, after the backend
is chosen, so ``edgel2 --help`` is instant and ``--backend`` takes effect.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from edgel2 import __version__
from edgel2.backend import BACKENDS, use_backend
from edgel2.config import DEFAULT_IMAGE_SIZE, MAX_BODY_MB, TrainConfig, check_name, parse_devices
from edgel2.errors import EdgeL2Error, OptionError, missing_extra
from edgel2.export.onnx import MAX_OPSET, MIN_OPSET
from edgel2.runtime.batcher import MAX_DELAY_MS
from edgel2.runtime.engines import ENGINES, INFERENCE_PRECISION_ALIASES, INFERENCE_PRECISIONS
from edgel2.runtime.probe import LATENCY, THROUGHPUT, WORKLOADS
from edgel2.variants import BENCHMARK_FORMATS, FORMATS, PRECISION_ALIASES, PRECISIONS

DEFAULTS = TrainConfig()
FINETUNE = TrainConfig.finetune()
NON_NEGATIVE = click.FloatRange(min=0)
# Older spellings of options, one word per meaning now: still accepted, with a one-line note.
RENAMED_OPTIONS = {
    "infer": {"--output": "--out", "--format": "--out-format"},
    "export": {"--batch": "--fixed-batch"},
    "benchmark": {"--formats": "--format", "--json": "--out"},
}


def _renamed(args: list[str]) -> list[str]:
    """``args`` with the older spellings of options (:data:`RENAMED_OPTIONS`) replaced, and a
    note on stderr for each one.

    Example:
        >>> _renamed(["infer", "x.png", "--output=r.json", "--format", "json"])
        ['infer', 'x.png', '--out=r.json', '--out-format', 'json']
    """
    command = next((a for a in args if not a.startswith("-")), "")
    renames = RENAMED_OPTIONS.get(command, {})
    out = []
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in renames:
            click.echo(f"edgel2: note: {command} {name} is now {renames[name]}; the old "
                       "spelling still works for now", err=True)
            arg = renames[name] + eq + value
        out.append(arg)
    return out


def _plural(count: int, noun: str, plural: str = "") -> str:
    """``1 image``, ``2 images`` (``plural``: a noun's irregular plural).

    Example:
        >>> _plural(1, "image"), _plural(1000, "image"), _plural(2, "copy", "copies")
        ('1 image', '1,000 images', '2 copies')
    """
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


class _Cli(click.Group):
    """The one place where every expected failure becomes one line on stderr and a documented
    exit code: 2 for bad options (as argparse and click do), 1 for bad input, a failed run or
    a missing optional dependency (the line names what to install), 3 when ``infer`` could
    not classify some images, 4 when finished results could not be written where asked (they
    go to stdout instead), 130 for Ctrl-C."""

    def main(self, args=None, prog_name=None, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            args = _renamed(list(sys.argv[1:] if args is None else args))
            code = super().main(args, prog_name or "edgel2", **kwargs)
        except click.UsageError as e:
            click.echo(f"edgel2: error: {e.format_message()}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:  # a command's heavy import, on an install without it
            error = missing_extra(e)
            if error is None:
                raise
            click.echo(f"edgel2: error: {error}", err=True)
            sys.exit(error.exit_code)
        except EdgeL2Error as e:
            click.echo(f"edgel2: error: {e}", err=True)
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("edgel2: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"],
                                         "max_content_width": 100})
@click.version_option(__version__, prog_name="edgel2")
def cli() -> None:
    """edgel2: train an L2-regularized ResNet-18 on CIFAR-10 or your own photos, export it,
    deploy it.

    \b
    Your own photos (photos/<class>/*.jpg; later commands remember the data):
      edgel2 train --data photos --pretrained --epochs 10 --name photos --out runs/train/photos
      edgel2 eval runs/train/photos/model.keras
      edgel2 export runs/train/photos/model.keras --format onnx,tflite --quantize int8
      edgel2 infer new-photos/ --model runs/train/photos/export/photos-int8.onnx --save annotated/
      edgel2 serve --model runs/train/photos/export/photos-int8.onnx

    \b
    Quick start on a CPU (what scripts/quickstart.sh runs; a few minutes on 2 cores):
      edgel2 train --width 16 --epochs 4 --subset 10000 --batch-size 128 --lr 0.2 \\
          --test-subset 2000 --name quickstart --out runs/train/quickstart
      edgel2 eval runs/train/quickstart/model.keras
      edgel2 export runs/train/quickstart/model.keras --format all --quantize all --allow-drop
      edgel2 infer photos/ --model runs/train/quickstart/export/quickstart-int8.onnx --top-k 2
      edgel2 serve --model runs/train/quickstart/export/quickstart-int8.onnx
    """


DATA_HELP = ("Image folder (train/<class>/ with test/<class>/, and val/<class>/ as a "
             "validation split; or <class>/ alone) or cifar-10-batches-py/.")
RECORDED_DATA = ("Default: the data the model was trained on (its run's config.json, or the "
                 "file's metadata); for a model with no record, $EDGEL2_DATA, else CIFAR-10.")


def _data_options(training: bool):
    """--data, --test-split and --image-size: for training, or for a command on a model
    (which defaults to the data the model remembers)."""
    def decorate(f):
        f = click.option(
            "--image-size", type=click.IntRange(min=1), default=None,
            help=(f"Resize every image to N x N. Default: as stored when all images have one "
                  f"size; a folder of mixed sizes is resized to the pretrained weights' input "
                  f"({DEFAULT_IMAGE_SIZE}) or {DEFAULT_IMAGE_SIZE}." if training else
                  "Resize every image to N x N (default: the model's input size)."))(f)
        f = click.option("--test-split", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                         default=DEFAULTS.test_split if training else None,
                         show_default=training,
                         help="Test fraction of a folder of bare class subfolders (seeded, "
                              "class-balanced)" + ("." if training else
                                                   "; default: the run's."))(f)
        f = click.option("--data", type=str, default=None,
                         help=DATA_HELP + (" Default: $EDGEL2_DATA, else CIFAR-10."
                                           if training else " " + RECORDED_DATA))(f)
        return f
    return decorate


def _backend_option(f):
    return click.option("--backend", type=click.Choice(BACKENDS), default=None,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow).")(f)


def _checked_name(ctx, param, value):
    """``--name``, checked by the one rule (edgel2.config.check_name)."""
    if value is None:
        return None
    try:
        return check_name(value)
    except OptionError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def _devices_option(ctx, param, value):
    """``--devices``, checked by the one parser (edgel2.config.parse_devices)."""
    try:
        parse_devices(value)
    except OptionError as e:
        raise click.BadParameter(str(e).removeprefix("--devices "), ctx, param) from None
    return value


@cli.command()
@_data_options(training=True)
@_backend_option
@click.option("--width", type=click.IntRange(min=1), default=DEFAULTS.width, show_default=True,
              help="Channels of the first stage (64 = the standard 11.17M-parameter ResNet-18).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help=f"Images per step [default: {DEFAULTS.batch_size}; {FINETUNE.batch_size} "
                   "with --pretrained or --weights].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Peak learning rate of the schedule [default: {DEFAULTS.lr}; "
                   f"{FINETUNE.lr} with --pretrained or --weights].")
@click.option("--schedule", type=click.Choice(["onecycle", "cosine"]), default=DEFAULTS.schedule,
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
              help="Scale brightness, contrast and saturation by random factors in [1-J, 1+J] "
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
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              default=DEFAULTS.precision, show_default=True,
              help="auto: mixed bf16 on a GPU, fp32 on the CPU.")
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
                   "which is new for the data's classes. Width 64; any image size.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Fine-tune from this edgel2 .keras file (or an .onnx edgel2 exported) instead.")
@click.option("--freeze", type=click.IntRange(0, 4), default=DEFAULTS.freeze, show_default=True,
              help="When fine-tuning, keep the stem and the first N of the 4 stages frozen "
                   "(their batch norms in inference mode); 4: only the classifier trains.")
@click.option("--patience", type=click.IntRange(min=0), default=DEFAULTS.patience,
              show_default=True,
              help="Stop when the validation top-1 has not improved for N epochs (needs "
                   "--val-split or a val/ folder; best.keras is that best epoch). 0: off.")
@click.option("--name", default=None, callback=_checked_name,
              help="The run's name, which exported files (NAME-int8.onnx), their metadata and "
                   "served models carry (default: the run directory's name).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/train/exp, exp2, ...).")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this directory after its last checkpoint, exactly "
                   "as it would have gone on (its saved config is used; other options are "
                   "ignored). Finishes a run killed after its last epoch.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Write last.keras, best.keras and curves.png every N epochs (and after "
                   "the last): on a GPU an epoch can be shorter than the writes.")
@click.option("--quiet", is_flag=True,
              help="One line per epoch instead of a progress bar (the default when the "
                   "output is not a terminal).")
@click.option("--devices", default="1", show_default=True, callback=_devices_option,
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
    """Train the L2-regularized CIFAR ResNet-18 and fill a run directory.

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
    use_backend(backend)
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
               f"after {_plural(result.history[-1]['epoch'], 'epoch')}")
    if result.best:
        click.echo(f"best.keras: epoch {result.best['epoch']}, chosen on validation top-1 "
                   f"{100 * result.best['val_acc']:.2f} %; test top-1 "
                   f"{100 * result.best['test_acc']:.2f} %")
    click.echo(f"run directory: {result.run_dir} (name: {result.name})")


@cli.command(name="eval")
@click.argument("model", type=click.Path(dir_okay=False))
@_data_options(training=False)
@_backend_option
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="Engine for an exported file (as edgel2 infer); ignored for .keras.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Engine threads for an exported file (default: the engine's choice).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per batch (default: 256 for .keras, 64 for an exported file).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where eval.json and confusion.png go (default: beside MODEL, in eval/ "
                   "for .keras and eval/FILE-NAME/ for an exported file).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def evaluate(model, data, test_split, image_size, backend, engine, threads, batch_size, out,
             as_json) -> None:
    """Top-1 and per-class accuracy of MODEL on the test split, and a confusion matrix (PNG
    and JSON). MODEL is a trained .keras file or an exported .onnx/.tflite file (run by the
    runtime, as edgel2 infer runs it; its report adds the calibration: ECE and NLL)."""
    from edgel2.evaluate import default_report_folder, evaluate_path, save_report

    report = evaluate_path(model, data=data, test_split=test_split, image_size=image_size,
                           engine=engine, threads=threads, batch_size=batch_size,
                           backend=backend, on_batch=_ProgressBars(f"evaluating {Path(model).name}"))
    paths = save_report(report, out or default_report_folder(model))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{'class':<14}{'top-1':>8}")
    for name, acc in report["per_class"].items():
        click.echo(f"{name:<14}{100 * acc:>7.2f}%")
    click.echo(f"{'all':<14}{100 * report['accuracy']:>7.2f}%  ({_plural(report['images'], 'test image')} "
               f"of {report['data']['name']}, from {report['data']['source']})")
    if "model" in report:
        calibration = report.get("calibration")
        click.echo(f"{Path(model).name} on {report['model']['engine']}" + (
            f"; calibration: mean confidence {calibration['mean_confidence']:.3f}, "
            f"ECE {calibration['ece']:.4f}, NLL {calibration['nll']:.4f}" if calibration else ""))
    click.echo(f"report: {paths['json']}  confusion matrix: "
               + (str(paths["png"]) if paths["png"] else 'none (pip install "edgel2[train]" '
                  "for the PNG)"))


class _IntList(click.ParamType):
    """Whole numbers >= 1, comma-separated (the option may also be repeated: see _flat)."""

    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        try:
            numbers = [int(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of whole numbers", param, ctx)
        if not numbers or min(numbers) < 1:
            self.fail(f"{value!r} needs numbers >= 1", param, ctx)
        return numbers


class _ChoiceList(click.ParamType):
    """Names from ``choices``, comma-separated. With ``multiple=True`` and ``callback=_flat``
    the option may also be repeated: every list option of the CLI takes both
    ``--formats onnx,tflite`` and ``--formats onnx --formats tflite``. ``aliases`` maps older
    spellings to their one name (not listed in the help)."""

    def __init__(self, choices, aliases: dict[str, str] | None = None, single: bool = False):
        self.choices = list(choices)
        self.aliases = aliases or {}
        self.single = single  # one name, not a list
        self.name = "[" + "|".join(self.choices) + "]" + ("" if single else ",...")

    def get_metavar(self, param, ctx=None) -> str:
        return self.name

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        parts = [str(value)] if self.single else str(value).split(",")
        names = [self.aliases.get(n, n) for n in (v.strip() for v in parts) if n]
        unknown = [n for n in names if n not in self.choices]
        if unknown or not names:
            self.fail(f"{unknown[0] if unknown else value!r} is not one of "
                      f"{', '.join(self.choices)}", param, ctx)
        return names[0] if self.single else names


def _flat(ctx, param, value):
    """A repeated list option (a tuple of lists) as one list, in order, without repeats."""
    flat = [v for group in value or () for v in (group if isinstance(group, list) else [group])]
    return list(dict.fromkeys(flat))


class _CheckCount(click.ParamType):
    """A number of test images, or ``all`` for the whole test split (None)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() == "all":
            return None
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a whole number nor 'all'", param, ctx)
        if count < 0:
            self.fail(f"{count} is negative", param, ctx)
        return count


@cli.command(name="export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--format", "formats", type=_ChoiceList([*FORMATS, "all"]), multiple=True,
              default=["onnx"], show_default=True, callback=_flat,
              help="Several comma-separated or repeated, or 'all'.")
@click.option("--quantize", "precisions",
              type=_ChoiceList([*PRECISIONS, "all"], aliases=PRECISION_ALIASES),
              multiple=True, default=["fp32"], show_default=True, callback=_flat,
              help="fp32 (full precision; 'none' is read as fp32), fp16, dynamic (int8 weights), "
                   "int8 (full integer, calibrated); several comma-separated or repeated, "
                   "or 'all'.")
@click.option("--data", type=str, default=None,
              help="Images to quantize, calibrate and check on. " + RECORDED_DATA)
@click.option("--calib", type=click.IntRange(min=1), default=512, show_default=True,
              help="Class-balanced training images for int8 calibration.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="ONNX int8 calibration.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=MIN_OPSET,
              show_default=True, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: export/ beside MODEL).")
@click.option("--check", type=_CheckCount(), default="1000", show_default=True,
              help="Held-out test images to compare each file with Keras on; 'all' or 0.")
@click.option("--allow-drop", is_flag=True,
              help="Keep quantized files that lose more than 2 points of top-1.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Fit a calibration on the run's validation split (else half of the test "
                   "split) and record it in every file when it lowers the held-out NLL, so "
                   "that probabilities match accuracy (see `edgel2 calibrate`).")
@click.option("--flip-average", is_flag=True,
              help="Put the left-right mirror image into the graph and average the two logits "
                   "(test-time augmentation: more accurate, twice the compute). Files go to "
                   "export-flip/ unless --out.")
@click.option("--fixed-batch", "batch", type=click.IntRange(min=1), default=None,
              help="Fix the batch dimension at N images (NPUs, NNAPI and delegates want static "
                   "shapes); the file refuses other batches, edgel2's runtime pads to it. "
                   "Files go to export-bN/ unless --out. Default: any batch.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def export(model, formats, precisions, data, calib, calib_method, opset, out, check, allow_drop,
           calibrate, flip_average, batch, force) -> None:
    """Export MODEL (.keras, trained on any backend) to ONNX and/or TFLite, in fp32, fp16,
    dynamic-range or int8, and check every file against the Keras model.

    \b
    Every file takes uint8 NHWC pixels, returns float32 logits, and carries its metadata
    (class names, input layout, normalization, quantization, measured accuracy). Writes
    export_report.json beside the files and exits 1 if any file failed its check.
    """
    use_backend("tensorflow")  # tf2onnx and the TFLite converter need TensorFlow
    from edgel2.export import export_model, format_table

    report = export_model(model, formats, precisions, data=data, calib=calib,
                          calib_method=calib_method, opset=opset, out=out, check=check,
                          force=force, allow_drop=allow_drop, calibrate=calibrate,
                          flip_average=flip_average, batch=batch,
                          progress=lambda line: click.echo(f"export: {line}", err=True),
                          check_progress=_ProgressBars("running the check images"))
    click.echo(format_table(report))
    click.echo(f"report: {Path(report['out']) / 'export_report.json'}")
    failed = [r for r in report["rows"] if r["status"] != "ok"]
    if failed:
        raise EdgeL2Error(f"{len(failed)} of {len(report['rows'])} exports failed: "
                          + "; ".join(f"{r['file']}: {r['reason']}" for r in failed))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=str, default=None,
              help="Labelled images to fit on (the validation split, else half of the test "
                   "split) and report on (the test split, or its other half). " + RECORDED_DATA)
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Reliability diagram PNG (default: beside MODEL, e.g. "
                   "model-int8-onnx-reliability.png).")
@click.option("--dry-run", is_flag=True, help="Measure and plot; leave the file as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
def calibrate(model, data, plot, dry_run, as_json) -> None:
    """Make MODEL's (.onnx or .tflite) probabilities match its accuracy: fit a one-parameter
    calibration (a temperature, or the inverse of label smoothing, whichever fits better) to
    its logits on the validation split (else one half of the test split), report top-1, ECE
    and NLL before and after on the test split (or its other half), and record it in the
    file's metadata. A fit on fewer than 100 images, at the end of its search range, sharper
    than 4x or that does not lower the held-out NLL is refused: the file keeps plain softmax.

    \b
    The graph is not touched: the edgel2 runtime applies the calibration to the logits,
    and it never changes the order of the classes. `edgel2 export` does this by default.
    """
    from edgel2.export.calibrate import calibrate_file, describe, format_calibration

    path = Path(model)
    plot = plot or path.with_name(f"{path.stem}-{path.suffix.lstrip('.')}-reliability.png")
    result = calibrate_file(path, data=data, write=not dry_run, plot=plot,
                            on_batch=_ProgressBars(f"logits of {path.name}"))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(format_calibration(result))
    if "plot" in result:
        click.echo(f"reliability diagram: {result['plot']}")
    if not dry_run:
        click.echo(f"{describe(result)} written into {path}")


class _ProgressBars:
    """A ``(done, total)`` callback that draws one click progress bar per pass on stderr when
    it is a terminal, and nothing otherwise (a log or a pipe gets no bars and no escapes)."""

    def __init__(self, label: str):
        self.label = label
        self.bar: Any = None  # a click progress bar, once the first pass starts
        self.shown = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.shown:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)
        if done >= total:
            self.bar.__exit__(None, None, None)
            self.bar = None


@cli.command()
@click.argument("source", type=click.Path(exists=False))
@click.option("--data", type=str, default=None, help="Test images for top-1. " + RECORDED_DATA)
@click.option("--format", "formats", type=_ChoiceList(BENCHMARK_FORMATS), multiple=True,
              default=None, callback=_flat,
              help="Runtimes to measure, comma-separated or repeated (default: all "
                   "installed; openvino runs the ONNX files).")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="Measure the exported files on this engine only, beside Keras "
                   "(auto: every installed engine).")
@click.option("--batch-sizes", type=_IntList(), multiple=True, default=["1,8,64"],
              show_default=True, callback=_flat, help="Comma-separated or repeated.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per runtime (default: all cores).")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto",
              show_default=True, help="ONNX Runtime provider.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=2.0,
              show_default=True, help="Time per cell (latency, each batch size).")
@click.option("--check", type=_CheckCount(), default="1000", show_default=True,
              help="Test images for top-1; 'all' for the whole split.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None,
              help="Exit 1 if any row's top-1 (a fraction, e.g. 0.9) is below: a CI gate.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rounds over all rows, interleaved; each cell is the median (steadier "
                   "ratios on a machine whose speed drifts).")
@click.option("--export-missing/--no-export-missing", default=None,
              help="Export the files a row needs that are not there (default: only when "
                   "SOURCE is a .keras model; an export folder is measured as it is).")
@click.option("--out", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Where the JSON report goes (default: benchmark.json in the export folder); "
                   "the chart goes beside it as .png.")
def benchmark(source, data, formats, engine, batch_sizes, threads, provider, seconds, check,
              min_accuracy, repeat, export_missing, json_path) -> None:
    """Size, top-1, batch-1 latency and throughput of every format and precision of SOURCE
    (a .keras model, exporting what is missing, or an export folder, measured as it is) on
    this machine.

    \b
    Each runtime runs in its own process; speed-ups are against Keras fp32 in the same run.
    """
    from edgel2.benchmark import ENGINE, default_formats, format_table, plot_report
    from edgel2.benchmark import benchmark as run_benchmark
    from edgel2.utils import check_output, deliver_text

    if json_path:
        check_output(json_path)
    if engine != "auto":  # Keras stays as the baseline
        formats = [f for f in formats or default_formats() if ENGINE.get(f, engine) == engine]
        if formats == ["keras"] or not formats:
            raise click.UsageError(f"--engine {engine} runs none of the formats asked for")
    report = run_benchmark(source, data=data, formats=formats or None, batch_sizes=batch_sizes,
                           threads=threads, provider=provider, seconds=seconds, check=check,
                           min_accuracy=min_accuracy, repeat=repeat,
                           export_missing=export_missing,
                           progress=lambda line: click.echo(f"benchmark: {line}", err=True))
    click.echo(format_table(report))
    json_path = Path(json_path) if json_path else Path(report["export_dir"]) / "benchmark.json"
    deliver_text(json.dumps(report, indent=2) + "\n", json_path, echo=click.echo)
    plot_report(report, json_path.with_suffix(".png"))
    click.echo(f"report: {json_path}  chart: {json_path.with_suffix('.png')}")
    bad = [r for r in report["rows"] if r["status"] not in ("ok", "skipped")]
    if bad:
        raise EdgeL2Error(f"{len(bad)} of {len(report['rows'])} rows failed: " + "; ".join(
            f"{r['format']} {r['precision']}: {r['reason']}" for r in bad))


SOME_IMAGES_FAILED = 3
LOCAL_FORMATS = ("table", "json", "csv")
RAY_FORMATS = ("parquet", "jsonl")


def _ray_address(text: str) -> bool:
    """Whether ``--ray``'s value is a Ray address (``auto``, ``local``, ``ray://HOST:PORT``,
    ``HOST:PORT``) rather than the first of the paths.

    Example:
        >>> [_ray_address(t) for t in ("auto", "ray://head:10001", "10.0.0.1:6379", "photos/")]
        [True, True, True, False]
    """
    import re

    return text in ("auto", "local") or "://" in text or bool(re.fullmatch(r"[\w.-]+:\d+", text))


def _infer_on_ray(paths, model, top_k, batch_size, engine, workload, fmt, output, address,
                  actors, cpus_per_actor) -> None:
    """``edgel2 infer --ray``: edgel2.cluster.classify_on_ray, and its one-line summary."""
    if fmt not in RAY_FORMATS:
        raise click.UsageError(f"with --ray, --out-format is one of {', '.join(RAY_FORMATS)}")
    if not output:
        raise click.UsageError("--ray writes a folder of part files: pass --out FOLDER")
    from edgel2.cluster import classify_on_ray

    report = classify_on_ray(paths, output, model=model, output_format=fmt,
                             address=None if address == "local" else address, top_k=top_k,
                             batch_size=batch_size, actors=actors, cpus_per_actor=cpus_per_actor,
                             engine=engine, workload=workload, progress=sys.stderr.isatty())
    click.echo(f"edgel2: {_plural(report.images, 'image')} in {report.seconds:.2f} s "
               f"({report.images / max(report.seconds, 1e-9):.1f} img/s) on Ray, "
               f"{report.actors} actor{'s' * (report.actors != 1)} x {report.cpus_per_actor} "
               f"CPU{'s' * (report.cpus_per_actor != 1)}; {fmt} in {report.output}", err=True)
    if report.failed:
        click.echo(f"edgel2: {report.failed} of {_plural(report.images, 'image')} failed", err=True)
        sys.exit(SOME_IMAGES_FAILED)


@cli.command()
@click.argument("paths", nargs=-1)
@click.option("--model", type=click.Path(), default=None,
              help="Exported .onnx or .tflite, or a folder holding one model's ONNX and "
                   "TFLite files (default: the int8 pair shipped with edgel2).")
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Labels per image (at most the model's class count).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto",
              show_default=True, help="auto: TensorRT, then CUDA, then CPU.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads (default: all cores).")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="auto: on a CPU, the engine and settings measured fastest here for "
                   "--workload (measured once per machine and model, then remembered; "
                   "EDGEL2_ENGINE_PROBE=0 turns that off); on a GPU, ONNX Runtime.")
@click.option("--workload", type=click.Choice(WORKLOADS), default=THROUGHPUT, show_default=True,
              help="What auto measures: images per second at --batch-size (throughput), or "
                   "the time for one image (latency).")
@click.option("--precision", type=_ChoiceList(INFERENCE_PRECISIONS, INFERENCE_PRECISION_ALIASES,
                                              single=True),
              default="fp32", show_default=True,
              help="OpenVINO: compute floating-point layers in bfloat16 (CPUs with AVX512_BF16/AMX).")
@click.option("--out-format", "fmt", type=click.Choice([*LOCAL_FORMATS, *RAY_FORMATS]),
              default=None,
              help=f"{', '.join(LOCAL_FORMATS)} (default table); with --ray "
                   f"{', '.join(RAY_FORMATS)} (default parquet).")
@click.option("--out", "output", type=click.Path(), default=None,
              help="Write the results here (atomically) instead of stdout; with --ray, a new "
                   "folder of part files (required).")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a copy of each image with its top label and probability drawn "
                   "on into this folder.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Run on Ray (pip install \"edgel2[ray]\"): a local Ray on this machine, or "
                   "the cluster at ADDRESS (auto, ray://HOST:10001). PATHS may also be "
                   "filesystem URIs pyarrow reads (s3://, gs://, hdfs://, file://).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="With --ray: Classifier actors (default: the cluster's CPUs / "
                   "--cpus-per-actor).")
@click.option("--cpus-per-actor", type=click.IntRange(min=1), default=None,
              help="With --ray: CPUs (engine and decoding threads) of each actor (default 2, "
                   "or 1 on nodes of 1 CPU).")
@click.option("-v", "--verbose", is_flag=True,
              help="Say which engine auto chose and the figures behind the choice.")
def infer(paths, model, top_k, batch_size, provider, threads, engine, workload, precision, fmt,
          output, save_dir, ray_address, actors, cpus_per_actor, verbose) -> None:
    """Classify images: files, folders (recursive) and globs.

    \b
    Bad files (empty, truncated, not an image, too large, not a regular file, unreadable)
    and folders that cannot be read are reported in the output with a reason; every other
    file is still classified. Exit code 0 when all succeeded, 3 when some images failed,
    1 for a missing or non-edgel2 model, 2 for bad options, 4 when --out could not be
    written at the end (the results went to stdout).

    \b
    On Ray (one Classifier per actor; Parquet or JSON lines, the fields of --out-format json):
      edgel2 infer --ray photos/ --out results/
      edgel2 infer --ray auto s3://bucket/photos/ --out s3://bucket/results/ --out-format jsonl

    \b
    Copies with the top label drawn on, to look at:
      edgel2 infer photos/ --model runs/train/photos/export/photos-int8.onnx --save annotated/
    """
    if ray_address is not None and not _ray_address(ray_address):
        # `--ray photos/`: the optional value was the first path
        paths, ray_address = (ray_address, *paths), "local"
    if not paths:
        raise click.UsageError("Missing argument 'PATHS...'.")
    if ray_address is not None:
        if save_dir:
            raise click.UsageError("--save draws on local copies: it does not go with --ray")
        _infer_on_ray(paths, model, top_k, batch_size, engine, workload, fmt or "parquet",
                      output, ray_address, actors, cpus_per_actor)
        return
    if fmt in RAY_FORMATS:
        raise click.UsageError(f"--out-format {fmt} is written by --ray; without it use one of "
                               f"{', '.join(LOCAL_FORMATS)}")
    if actors is not None or cpus_per_actor is not None:
        raise click.UsageError("--actors and --cpus-per-actor go with --ray")
    fmt = fmt or "table"
    import warnings

    from edgel2.runtime import Classifier, FileResult, ProviderFallbackWarning
    from edgel2.runtime.io import expand_paths, render
    from edgel2.utils import check_output, deliver_text

    if output:
        check_output(output)  # before the work: the results must have somewhere to go
    # Pillow warns about odd files it still decodes (bad TIFF tags, ICO sizes): the results
    # report real failures, so these would only be noise between them
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    entries = expand_paths(paths)
    if save_dir:
        from edgel2.runtime.annotate import prepare_folder, save_annotated

        prepare_folder(save_dir)  # before the work: an unwritable folder is one line at once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        classifier = Classifier(model, providers=provider, threads=threads,
                                batch_size=batch_size, engine=engine, precision=precision,
                                workload=workload)
    for w in caught:
        if issubclass(w.category, ProviderFallbackWarning):
            click.echo(f"edgel2: warning: {w.message}", err=True)
    for line in classifier.reasons() if verbose else []:
        click.echo(f"edgel2: {line}", err=True)
    top_k = min(top_k, len(classifier.class_names))
    start = time.perf_counter()
    files = [e for e in entries if not isinstance(e, FileResult)]
    with click.progressbar(classifier.predict_files(files, top_k=top_k), length=len(files),
                           label="classifying", file=sys.stderr,
                           hidden=len(files) <= batch_size) as bar:
        classified = iter(list(bar))
    # walk failures (unreadable folders) keep their place among the classified files
    results = [e if isinstance(e, FileResult) else next(classified) for e in entries]
    deliver_text(render(results, fmt, top_k), output, echo=lambda t: click.echo(t, nl=False))
    seconds = time.perf_counter() - start
    click.echo(f"edgel2: {_plural(len(files), 'image')} in {seconds:.2f} s "
               f"({len(files) / max(seconds, 1e-9):.1f} img/s): {classifier.describe()}", err=True)
    if save_dir:
        saved = save_annotated(results, save_dir)
        click.echo(f"edgel2: {_plural(len(saved), 'annotated copy', 'annotated copies')} in "
                   f"{save_dir}", err=True)
    failed = sum(r.error is not None for r in results)
    if failed:
        click.echo(f"edgel2: {failed} of {_plural(len(results), 'image')} failed", err=True)
        sys.exit(SOME_IMAGES_FAILED)


@cli.command()
@click.option("--model", type=click.Path(), default=None,
              help="As for edgel2 infer: a file, or a folder holding one model's pair "
                   "(default: the int8 pair shipped with edgel2).")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="As for edgel2 infer.")
@click.option("--workload", type=click.Choice(WORKLOADS), default=LATENCY, show_default=True,
              help="What auto measures: the time for one image (latency: an interactive "
                   "app's requests), or images per second (throughput: clients that send "
                   "batches).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Engine threads (default: the engine's choice).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; think before you do).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most images in one model call.")
@click.option("--max-delay-ms", type=click.FloatRange(0, MAX_DELAY_MS), default=2.0,
              show_default=True, help="How long the first image of a batch waits for others.")
@click.option("--max-queue", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Images waiting for the model before requests get 503 (Retry-After).")
@click.option("--max-body-mb", type=click.FloatRange(0, MAX_BODY_MB, min_open=True), default=16.0,
              show_default=True, help="Largest request body, however it is sent; larger gets 413.")
@click.option("--max-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most images in one request (files, or a v2 tensor's batch); more gets 413.")
@click.option("--max-request-mpx", type=click.FloatRange(0, min_open=True), default=100.0,
              show_default=True,
              help="Most decoded megapixels in one request, read from the files' headers "
                   "before decoding; more gets 413.")
@click.option("--client-timeout-s", type=click.FloatRange(0.01, 3600), default=10.0,
              show_default=True,
              help="A client silent this long in the middle of a request is disconnected.")
@click.option("--grace-s", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="After SIGTERM, how long requests in flight may finish; then they get 503.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Labels per image from /v1/classify (a request may ask ?top_k=N).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with its own model, behind one port.")
@click.option("--name", default=None, callback=_checked_name,
              help="The served model's name in the URLs and the page (default: the run's name "
                   "and precision from the file's metadata, e.g. photos-int8; else the file's "
                   "name without suffix).")
def serve(model, engine, workload, threads, host, port, max_batch, max_delay_ms, max_queue, max_body_mb,
          max_images, max_request_mpx, client_timeout_s, grace_s, top_k, workers, name) -> None:
    """Serve the model over HTTP until SIGTERM or Ctrl-C (then finish what is in flight and
    exit 0). Needs the serve extra: pip install "edgel2[serve]".

    \b
    GET  /                          a page: drop an image, see the top-k
    POST /v1/classify               image files (multipart) or one image (raw body) -> top-k JSON
    GET  /v2/health/live, /v2/health/ready, /v2/models/NAME    KServe v2 (Open Inference Protocol)
    POST /v2/models/NAME/infer      uint8 NHWC tensors in JSON -> logits
    GET  /metrics                   Prometheus: requests, latency, batch sizes, queue depth

    \b
    Facing clients you do not control (behind a proxy): headers are bounded (64 KiB, 100
    lines: 431), a client silent mid-request is disconnected (--client-timeout-s), requests
    take turns for decoding and for the model, and a request whose client has gone costs no
    model work. A port in use is one line and exit 1; with --port 0 the system chooses and
    the first lines printed say which.
    """
    from edgel2.serve import ServeConfig, run

    config = ServeConfig(model=model, name=name, engine=engine, workload=workload,
                         threads=threads, max_batch=max_batch,
                         max_delay_ms=max_delay_ms, max_queue=max_queue,
                         max_body_mb=max_body_mb, max_images=max_images,
                         max_request_mpx=max_request_mpx, client_timeout_s=client_timeout_s,
                         grace_s=grace_s, top_k=top_k)
    from edgel2.serve import open_model

    # opened here (once, even for several workers, whose own opens find the choice it
    # measured), so that a bad file is one line before anything listens
    classifier = open_model(config)
    served = name or classifier.name

    def listening(url: str) -> None:
        click.echo(f"edgel2 serve: {served} ({classifier.describe(why=True)}) at "
                   f"{url}/v2/models/{served}", err=True)
        click.echo(f"edgel2 serve: {url}/ (Ctrl-C or SIGTERM to stop)", err=True)

    run(config, host=host, port=port, workers=workers,
        classifier=classifier if workers == 1 else None, on_listening=listening,
        check_model=False)


def main() -> None:
    """The console-script entry point: the CLI with native libraries' noise filtered out of
    stderr (:func:`edgel2.backend.quiet_native_stderr`)."""
    import os

    from edgel2.backend import quiet_native_stderr

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first line
    with quiet_native_stderr():
        cli()


if __name__ == "__main__":
    main()
