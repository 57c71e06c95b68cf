"""The fit loop: a run directory, the model, the callbacks, Keras' ``fit``, and the end of a
run (the final model and its test figure). Resume goes through the same path."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgel2.augment import BatchAugmenter, with_augmentation
from edgel2.backend import accelerator, cpu_bfloat16, library_versions, recorded_backend
from edgel2.checkpoint import checkpoint_state, load_checkpoint, load_model, save_model
from edgel2.config import DEFAULT_IMAGE_SIZE, TrainConfig, check_name
from edgel2.data import Dataset, balanced_subset, carve, load_dataset, summary_lines
from edgel2.errors import DataError, OptionError, TrainingError, reported_write
from edgel2.model import build_network, count_params, network_of
from edgel2.train.batches import HeldOutBatches, ShuffledBatches, one_hot
from edgel2.train.callbacks import (
    Checkpoint,
    CurvesPlot,
    EpochLine,
    MetricsCSV,
    NameHeldOut,
    StopOnNaN,
    StopWhenStalled,
    history_rows,
    read_metrics,
    stalled,
)
from edgel2.train.distill import DistillationLoss, Teacher
from edgel2.train.distribute import ONE_DEVICE, Placement, check_batch_size, global_batch_size
from edgel2.train.outliers import KnownAccuracy, LogitNormCrossentropy, outlier_count
from edgel2.train.rundir import (
    default_name,
    finished,
    make_run_dir,
    remove_partial_writes,
    saved_config,
)
from edgel2.train.schedule import OneCycle
from edgel2.utils import config_hash, next_run_dir, remove_if_empty, write_json

# Printed at the start of a bf16 run on a CPU without native bfloat16 (edgel2.backend.cpu_bfloat16)
EMULATED_BF16 = ("warning: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16): bf16 "
                 "is emulated here, about 3x slower than --compute-dtype fp32")


@dataclass
class TrainResult:
    """What a finished run measured. ``test_acc`` is always of the saved ``model.keras``,
    measured after training on ``test_data``; ``best`` (with a validation split) is the epoch,
    validation top-1 and test top-1 of ``best.keras``.

    Examples:
        >>> result = train(TrainConfig(width=8, epochs=2, val_split=0.1))   # doctest: +SKIP
        >>> result.run_dir, result.test_acc, result.best["epoch"]           # doctest: +SKIP
        (PosixPath('runs/train/exp'), 0.38, 2)
    """

    run_dir: Path
    history: list[dict]     # metrics.csv: per-epoch figures on the `held_out` split
    held_out: str           # "val" or "test"
    test_acc: float
    test_data: str          # e.g. "CIFAR-10-JPEG test split (10,000 images)"
    data_name: str          # what the accuracy is on (Dataset.name)
    best: dict | None = None
    name: str = ""          # the run's name: exported files and served models carry it
    stopped_early: bool = False  # --patience ended the run before its last epoch


def prepare_data(config: TrainConfig, dataset: Dataset | None = None) -> Dataset:
    """The configured data as a new :class:`Dataset` (the one given is left as it is).

    A folder of mixed image sizes is resized to :func:`mixed_image_size`; then the
    class-balanced ``subset`` of the training images is taken, the validation split held out of
    them (seeded, class-balanced; or the data's own ``val/`` folder), and the class-balanced
    ``test_subset``.

    Args:
        config: The run's config (``data``, ``subset``, ``val_split``, ``test_subset``, ...).
        dataset: Data already loaded; None loads ``config.data``.

    Returns:
        The data the run trains and is measured on.

    Examples:
        >>> x = np.zeros((40, 4, 4, 3), np.uint8)
        >>> ds = Dataset(x, np.arange(40) % 2, x[:10], np.arange(10) % 2, ["a", "b"])
        >>> prepared = prepare_data(TrainConfig(subset=20, val_split=0.1), ds)
        >>> len(prepared.y_train), len(prepared.y_val), len(ds.y_train)
        (18, 2, 40)
    """
    ds = dataset or load_dataset(config.data, test_split=config.test_split,
                                 image_size=config.image_size, seed=config.seed,
                                 mixed_size=mixed_image_size(config))
    if ds.num_classes < 2:
        raise DataError(f"{ds.source or ds.name} has {ds.num_classes} class; a classifier "
                        "needs at least 2")
    ds = carve(ds, subset=config.subset, val_split=config.val_split, seed=config.seed)
    x_test, y_test = ds.x_test, ds.y_test
    if config.test_subset:
        x_test, y_test = balanced_subset(x_test, y_test, config.test_subset, config.seed)
    if config.patience and ds.y_val is None:
        raise OptionError("patience stops the run on the validation top-1: it needs a "
                          "validation split (`val_split`, or a val/ folder beside train/ "
                          "and test/); the test split never chooses")
    return dataclasses.replace(ds, x_test=x_test, y_test=y_test)


def mixed_image_size(config: TrainConfig) -> int:
    """The side a folder of mixed image sizes is resized to when ``config.image_size`` is
    unset: the input size of the weights a fine-tune starts from, else
    :data:`~edgel2.config.DEFAULT_IMAGE_SIZE`.

    Examples:
        >>> mixed_image_size(TrainConfig()), mixed_image_size(TrainConfig(weights="pretrained"))
        (32, 32)
    """
    if config.weights:
        from edgel2.pretrained import natural_image_size

        return natural_image_size(config.weights, config.arch) or DEFAULT_IMAGE_SIZE
    return DEFAULT_IMAGE_SIZE


def resize_reason(config: TrainConfig) -> str:
    """Why the images have the size they are trained at, for the data summary."""
    if config.image_size:
        return "--image-size"
    if config.weights == "pretrained":
        return "the pretrained model's input; --image-size N to change"
    if config.weights:
        return f"the input of {Path(config.weights).name}; --image-size N to change"
    return "the default for images of mixed sizes; --image-size N to change"


def train(config: TrainConfig, out: str | os.PathLike | None = None, *,
          dataset: Dataset | None = None, resume: str | os.PathLike | None = None,
          checkpoint_every: int = 1, verbose: int = 1,
          placement: Placement = ONE_DEVICE, name: str | None = None) -> TrainResult:
    """Train a network as ``config`` says and fill a run directory.

    A run killed part way is resumed exactly (``resume``): its config and checkpoint are used
    and training goes on after the last checkpointed epoch, as the run would have gone on (a
    run killed before its first checkpoint starts again; one killed after its last epoch is only
    finished). With ``verbose``, a summary of the data (classes, images per class and split,
    sizes, imbalance) is printed before training.

    Args:
        config: Every knob of the run (:class:`~edgel2.config.TrainConfig`;
            ``TrainConfig.finetune()`` for the fine-tuning recipe).
        out: The run directory; None for ``runs/train/exp`` (``exp2``, ``exp3``... if taken).
        dataset: The data, already loaded (tests, notebooks); None loads ``config.data``.
        resume: An earlier run directory to go on with (``config`` and ``out`` are then its own).
        checkpoint_every: Write the checkpoint, best.keras and curves.png every N epochs (and
            after the last): on a GPU an epoch can take less time than the writes.
        verbose: 0 silent; 1 a progress bar on a terminal and one line per epoch elsewhere; 2 one
            line per epoch.
        placement: Several devices or processes (:func:`~edgel2.train.distribute.place`); only
            process 0 writes the run directory, the others return their history with
            ``test_acc`` NaN.
        name: The run's name (default: the run directory's): the files exported from it and the
            models ``edgel2 serve`` serves from them carry it.

    Returns:
        The run's :class:`TrainResult`: its directory, the per-epoch history, the saved
        model's test top-1 (and ``best``, with a validation split).

    Examples:
        >>> result = train(TrainConfig(width=8, epochs=2, subset=1000), "runs/train/tiny")  # doctest: +SKIP
        >>> result.test_acc                                                                   # doctest: +SKIP
        0.31
    """
    chief = placement.chief
    created = None
    if resume is not None:
        run_dir = Path(resume)
        config, name = saved_config(run_dir)
        recorded = recorded_backend(run_dir)
        if recorded and recorded != keras.backend.backend():
            raise TrainingError(f"cannot resume {run_dir} exactly: it trained on {recorded} and "
                                f"Keras runs on {keras.backend.backend()} here; resume it with "
                                f"KERAS_BACKEND={recorded}")
        if chief:
            remove_partial_writes(run_dir)
        state = checkpoint_state(run_dir / "last.keras")
        if state and finished(run_dir):
            raise TrainingError(f"{run_dir} already finished all {config.epochs} epochs"
                                if state["epoch"] >= config.epochs else
                                f"{run_dir} already finished: it stopped early after epoch "
                                f"{state['epoch']} (`patience` {config.patience})")
    else:
        config.validate()
        check_batch_size(config.batch_size, placement)
        if out is None and not chief:
            raise OptionError("with several processes every process needs the same `out`")
        run_dir = Path(out) if out else next_run_dir("runs/train", "exp")
        name = check_name(name) if name else default_name(run_dir)
        if chief:
            remove_partial_writes(run_dir)
            if run_dir.exists() and any(run_dir.iterdir()):
                raise TrainingError(f"run directory {run_dir} is not empty; "
                                    "pick another `out` or continue it with `resume`")
            created = make_run_dir(run_dir)
        state = None
    # the run sets Keras' global dtype policy (mixed bf16 or fp32); the caller gets theirs back
    policy = keras.mixed_precision.dtype_policy()
    try:
        return _train(config, run_dir, name, state, dataset, checkpoint_every, verbose,
                      placement)
    except BaseException:
        if created is not None:
            remove_if_empty(run_dir, created)  # a run that failed before writing anything
        raise
    finally:
        keras.mixed_precision.set_dtype_policy(policy)


def _train(config: TrainConfig, run_dir: Path, name: str, state: dict | None,
           dataset: Dataset | None, checkpoint_every: int, verbose: int,
           placement: Placement) -> TrainResult:
    """:func:`train` once its run directory is settled."""
    chief = placement.chief
    start_epoch = state["epoch"] if state else 0

    keras.utils.set_random_seed(config.seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # same seed, same run on the CPU
    device = accelerator()
    compute_dtype = config.compute_dtype if config.compute_dtype != "auto" else (
        "bf16" if device else "fp32")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if compute_dtype == "bf16" else "float32")
    if verbose and chief and compute_dtype == "bf16" and not device and cpu_bfloat16() is False:
        print(EMULATED_BF16, flush=True)

    ds = prepare_data(config, dataset)
    if verbose and chief and not state:
        print("\n".join(summary_lines(ds, resize_reason(config))), flush=True)
    teacher = (Teacher(config.teacher, ds.num_classes, ds.image_shape)
               if config.teacher else None)
    batch_size = global_batch_size(config.batch_size, len(ds.y_train), placement)
    steps_per_epoch = max(1, len(ds.y_train) // batch_size)
    held_out = "val" if ds.y_val is not None else "test"

    if state:
        trainer = load_checkpoint(run_dir / "last.keras")
        step = int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))
        if step != state["step"] or step != start_epoch * steps_per_epoch:
            raise TrainingError(f"cannot resume {run_dir}: its checkpoint is at step {step}, "
                                f"its state at {state['step']} (epoch {start_epoch} of "
                                f"{steps_per_epoch} steps); the data or config changed")
    else:
        trainer = build_trainer(config, ds.num_classes, ds.image_shape, steps_per_epoch,
                                images=ds.x_train[:1024], class_names=ds.class_names)[0]
        if verbose and chief and config.weights:
            print(_started_from(config.weights, config.arch, ds.class_names), flush=True)
        if chief:
            described = _describe_run(config, ds, network_of(trainer), device, compute_dtype,
                                      placement, name)
            with reported_write(run_dir / "config.json"):
                write_json(run_dir / "config.json", described)
    model = network_of(trainer)

    history: list[dict] = []
    earlier = ([r for r in read_metrics(run_dir / "metrics.csv") if r["epoch"] <= start_epoch]
               if state and (run_dir / "metrics.csv").is_file() else [])
    with _writes_of(placement, run_dir) as writes:
        if start_epoch < config.epochs and not stalled(earlier, config.patience):
            best = checkpoint_state(run_dir / "best.keras") if state else None
            every = max(1, checkpoint_every)
            callbacks = [
                StopOnNaN(config.lr, run_dir / "last.keras"),
                NameHeldOut(held_out),
                # before the writes: a stopping epoch is checkpointed as the last one
                StopWhenStalled(config.patience, earlier),
                # on every process: saving a model is a collective operation under JAX
                Checkpoint(writes, model, every=every, last_epoch=config.epochs,
                           seed=config.seed, select=held_out == "val",
                           best_score=best["val_acc"] if best else -math.inf)]
            if chief:
                callbacks.insert(2, MetricsCSV(run_dir / "metrics.csv", held_out,
                                               steps_per_epoch * batch_size))
                callbacks.append(CurvesPlot(
                    run_dir / "metrics.csv", run_dir / "curves.png", every=every,
                    last_epoch=config.epochs,
                    title=f"{run_dir.name}: {_held_out_name(ds, held_out, config)}"))
            bar = verbose == 1 and sys.stdout.isatty() and chief
            if verbose and chief and not bar:
                callbacks.append(EpochLine(config.epochs, held_out))
            x_held, y_held = ((ds.x_val, ds.y_val) if held_out == "val"
                              else (ds.x_test, ds.y_test))
            assert x_held is not None and y_held is not None  # held_out "val" has a val split
            held_targets = one_hot(y_held, ds.num_classes)
            if teacher is not None:  # the loss reads [labels | teacher logits] there too
                held_targets = np.concatenate([held_targets, teacher(x_held)], axis=1)
            fitted = trainer.fit(
                ShuffledBatches(ds.x_train, one_hot(ds.y_train, ds.num_classes), batch_size,
                                seed=config.seed, epoch=start_epoch, shard=placement.shard,
                                outliers=outlier_count(config.outliers, batch_size,
                                                       placement.devices),
                                teacher=teacher,
                                augment=(BatchAugmenter(model, **augmentation_options(config))
                                         if teacher is not None and config.augment else None)),
                epochs=config.epochs, initial_epoch=start_epoch, shuffle=False,
                validation_data=HeldOutBatches(x_held, held_targets,
                                               max(batch_size, 256), placement.devices,
                                               shard=placement.shard),
                callbacks=callbacks, verbose=1 if bar else 0)
            history = history_rows(fitted.history, held_out, start_epoch)
        else:  # trained to the end (or stopped), killed before model.keras: what fit() does
            trainer.optimizer.finalize_variable_values(trainer.trainable_variables)
        if not chief:
            save_model(model, writes / "model.keras")  # process 0's save, in step with it
            return TrainResult(run_dir, history, held_out, math.nan,
                               _held_out_name(ds, "test", config), ds.name, name=name)
    result = _finish(run_dir, model, ds, held_out, _held_out_name(ds, "test", config))
    return dataclasses.replace(result, name=name,
                               stopped_early=result.history[-1]["epoch"] < config.epochs)


def build_trainer(config: TrainConfig, num_classes: int, input_shape: tuple[int, int, int],
                  steps_per_epoch: int, images: np.ndarray | None = None,
                  class_names: Sequence[str] | None = None) -> tuple[keras.Model, keras.Model]:
    """The compiled training model (augmentation + network) and the bare network inside it.

    With ``config.weights`` the network starts from those weights (all but the classifier,
    which is new for ``num_classes``, unless ``class_names`` are the weights' own; folded
    batch norms are recalibrated on ``images``) and ``config.freeze`` stages stay frozen (see
    :mod:`edgel2.pretrained`).

    Args:
        config: The run's config (network, both L2s, augmentation, optimizer, schedule).
        num_classes: Classes of the classifier.
        input_shape: (height, width, 3).
        steps_per_epoch: Optimizer steps per epoch (the schedule spans them all).
        images: Training images to recalibrate batch norms on when starting from weights.
        class_names: The data's classes: when they are those of ``config.weights``, in the
            same order, the classifier is loaded too (training goes on from that model).

    Returns:
        (trainer, network): the model ``fit`` runs, and the network that is saved and exported.

    Examples:
        >>> trainer, model = build_trainer(TrainConfig(width=4), 10, (32, 32, 3), 100)
        >>> trainer.optimizer.nesterov, model.name
        (True, 'resnet18_w4')
    """
    model = build_network(config.arch, num_classes, config.network_width,
                          weight_l2=config.weight_l2, bn_l2=config.bn_l2,
                          feature_l2=config.feature_l2, l1=config.l1, dropout=config.dropout,
                          input_shape=input_shape)
    if config.weights:
        from edgel2.pretrained import freeze_stages, start_from

        start_from(model, config.weights, images, class_names)
        freeze_stages(model, config.freeze)
    # with a teacher the batches come augmented (the teacher sees them): no augmentation here
    trainer = (with_augmentation(model, seed=config.seed, **augmentation_options(config))
               if config.augment and not config.teacher else model)
    total = steps_per_epoch * config.epochs
    schedule = OneCycle(config.lr, total, int(config.warmup * total), config.schedule)
    # With an EMA, fit() ends by writing the averaged weights into the model (Keras'
    # finalize_variable_values), so model.keras holds them.
    trainer.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=config.momentum,
                                       nesterov=config.nesterov, use_ema=config.ema > 0,
                                       ema_momentum=config.ema or 0.99),
        loss=training_loss(config),
        # weighted: the held-out batches' padding rows weigh 0 (HeldOutBatches); the top-1 of
        # known images only (a batch's synthetic outliers have no class)
        weighted_metrics=[KnownAccuracy(name="acc")])
    return trainer, model


def training_loss(config: TrainConfig) -> keras.losses.Loss:
    """The loss ``config`` trains with: cross-entropy with label smoothing (on length-
    normalised logits with ``logit_norm``), inside the distillation loss with a ``teacher``.

    Examples:
        >>> type(training_loss(TrainConfig(teacher="t.onnx"))).__name__
        'DistillationLoss'
    """
    base = (LogitNormCrossentropy(config.logit_norm, config.label_smoothing)
            if config.logit_norm else
            keras.losses.CategoricalCrossentropy(from_logits=True,
                                                 label_smoothing=config.label_smoothing))
    if not config.teacher:
        return base
    return DistillationLoss(config.distill_temperature, config.distill_weight, base)


def augmentation_options(config: TrainConfig) -> dict:
    """The augmentation knobs of ``config``, as :func:`~edgel2.augment.with_augmentation`
    and :class:`~edgel2.augment.BatchAugmenter` take them."""
    return {"cutout": config.cutout, "crop_scale": config.crop_scale,
            "color_jitter": config.color_jitter}


@contextlib.contextmanager
def _writes_of(placement: Placement, run_dir: Path):
    """Where this process writes checkpoints: the run directory on process 0; on the others a
    scratch folder, removed at the end, so that they take part in each save (a collective
    operation under JAX) without touching the run directory."""
    if placement.chief:
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix=f"edgel2-process{placement.process_id}-") as scratch:
        yield Path(scratch)


def _finish(run_dir: Path, model: keras.Model, ds: Dataset, held_out: str,
            test_data: str) -> TrainResult:
    """Save the final model, then measure on the test split the files that were saved (the
    final model, and best.keras when a validation split chose one): ``summary.json``."""
    save_model(model, run_dir / "model.keras")
    # measured on this process alone: a distributed predict would wait for the others
    keras.distribution.set_distribution(None)
    summary: dict[str, Any] = {"test_data": test_data,
               "model.keras": {"test_acc": _test_top1(run_dir / "model.keras", ds)}}
    best = checkpoint_state(run_dir / "best.keras")
    if best:
        best = {"epoch": best["epoch"], "val_acc": best["val_acc"],
                "test_acc": _test_top1(run_dir / "best.keras", ds)}
        summary["best.keras"] = best
    with reported_write(run_dir / "summary.json"):
        write_json(run_dir / "summary.json", summary)
    return TrainResult(run_dir, read_metrics(run_dir / "metrics.csv"), held_out,
                       summary["model.keras"]["test_acc"], test_data, ds.name, best)


def _test_top1(path: Path, ds: Dataset) -> float:
    """Top-1 on the test split of the model file at ``path``, as it was saved."""
    logits = load_model(path).predict(ds.x_test, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == ds.y_test))


def _held_out_name(ds: Dataset, split: str, config: TrainConfig) -> str:
    """What held-out figures are on, in words: a validation split or a test subset is not
    'the test split'.

    Examples:
        >>> x = np.zeros((4, 2, 2, 3), np.uint8)
        >>> ds = Dataset(x, np.arange(4), x, np.arange(4), list("abcd"), name="CIFAR-10-JPEG")
        >>> _held_out_name(ds, "test", TrainConfig(test_subset=4))
        'a class-balanced subset of 4 images of the CIFAR-10-JPEG test split'
    """
    if split == "val":
        return (f"validation: {len(ds.y_val if ds.y_val is not None else ()):,} of the "
                f"{ds.name} training images, held out "
                "(class-balanced)")
    if config.test_subset:
        return (f"a class-balanced subset of {len(ds.y_test):,} images of the {ds.name} "
                "test split")
    return f"the {ds.name} test split ({len(ds.y_test):,} images)"


def _started_from(weights: str, arch: str, class_names: Sequence[str]) -> str:
    """The line that says what a fine-tune loaded from its ``weights``."""
    from edgel2.pretrained import PRETRAINED, keeps_classifier

    source = "the shipped " + arch if weights == PRETRAINED else Path(weights).name
    if keeps_classifier(weights, class_names, arch):
        return f"weights: every layer from {source}, the classifier too (the same classes)"
    return (f"weights: every layer but the classifier from {source}; the classifier is new "
            f"for {len(class_names)} classes")


def _describe_run(config: TrainConfig, ds: Dataset, model, device: str | None,
                  compute_dtype: str, placement: Placement, name: str) -> dict:
    hyper = dataclasses.asdict(config)
    return {
        "name": name,
        "config": hyper,
        "config_hash": config_hash({"config": hyper, "data": ds.fingerprint}),
        "model": {"name": model.name, "parameters": count_params(model),
                  "input_shape": list(ds.image_shape), "class_names": ds.class_names},
        "data": {"name": ds.name, "source": ds.source, "fingerprint": ds.fingerprint,
                 "train_images": int(len(ds.y_train)), "test_images": int(len(ds.y_test)),
                 "val_images": 0 if ds.y_val is None else int(len(ds.y_val)), **ds.extra},
        "backend": keras.backend.backend(),
        "device": device or "cpu",
        "distribution": placement.describe(),
        "compute_dtype": compute_dtype,
        "versions": library_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
