"""Training: fit the L2-regularized ResNet-18, with a run directory, checkpoints and resume.

A run directory holds::

    config.json   every hyper-parameter, the data source and its hash, versions, device
    metrics.csv   per epoch: train/test loss and accuracy, lr, seconds, images/s
    curves.png    loss and accuracy curves
    model.keras   the final model (uint8 images in, logits out; no optimizer)
    best.keras    the model of the epoch with the best test accuracy
    last.keras    the training checkpoint (optimizer state included) that --resume reads
    state.json    the last finished epoch and the best accuracy so far

Keras 3 only (no tf.data, no ``import tensorflow`` unless it is the backend), so the same
code trains on TensorFlow and on JAX.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from edgel2.augment import with_augmentation
from edgel2.backend import accelerator, library_versions
from edgel2.config import TrainConfig
from edgel2.data import Dataset, balanced_subset, load_dataset
from edgel2.errors import TrainingError
from edgel2.model import count_params, resnet18
from edgel2.plots import plot_curves
from edgel2.utils import atomic_path, config_hash, next_run_dir, write_json

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                 "seconds", "images_per_s"]


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best_acc: float
    final_acc: float
    data_name: str          # what the test accuracy is on (Dataset.name)


def prepare_data(config: TrainConfig, dataset: Dataset | None = None) -> Dataset:
    """Load the configured source and cut the configured subsets (seeded, class-balanced)."""
    ds = dataset or load_dataset(config.data, val_split=config.val_split,
                                 image_size=config.image_size, seed=config.seed)
    if config.subset:
        ds.x_train, ds.y_train = balanced_subset(ds.x_train, ds.y_train, config.subset, config.seed)
    if config.test_subset:
        ds.x_test, ds.y_test = balanced_subset(ds.x_test, ds.y_test, config.test_subset, config.seed)
    return ds


def train(config: TrainConfig, out: str | os.PathLike | None = None, *,
          dataset: Dataset | None = None, resume: str | os.PathLike | None = None,
          checkpoint_every: int = 1, verbose: int = 1) -> TrainResult:
    """Train a ResNet-18 as ``config`` says and fill a run directory.

    ``out`` defaults to ``runs/train/exp`` (``exp2``, ``exp3``... if taken). ``resume`` names
    an earlier run directory: its config and checkpoint are used and training continues after
    the last finished epoch. ``dataset`` skips loading (tests, notebooks).
    ``checkpoint_every`` writes best.keras, last.keras and curves.png every N epochs (and
    after the last) instead of every epoch: on a GPU an epoch can take less time than the
    writes.

    Example:
        >>> result = train(TrainConfig(width=8, epochs=2, subset=1000), "runs/train/tiny")  # doctest: +SKIP
        >>> result.best_acc                                                                   # doctest: +SKIP
        0.31
    """
    if resume is not None:
        run_dir = Path(resume)
        config, start_epoch, best_acc = _read_resume_state(run_dir)
    else:
        config.validate()
        run_dir = Path(out) if out else next_run_dir("runs/train", "exp")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise TrainingError(f"run directory {run_dir} is not empty; "
                                "pick another --out or continue it with --resume")
        start_epoch, best_acc = 0, -1.0

    keras.utils.set_random_seed(config.seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # same seed, same run on the CPU
    device = accelerator()
    precision = config.precision if config.precision != "auto" else ("bf16" if device else "fp32")
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")

    ds = prepare_data(config, dataset)
    steps_per_epoch = max(1, len(ds.y_train) // config.batch_size)
    batch_size = min(config.batch_size, len(ds.y_train))

    if resume is not None:
        trainer = _load_checkpoint(run_dir / "last.keras")
        model = trainer.get_layer(trainer.layers[-1].name)
    else:
        trainer, model = build_trainer(config, ds.num_classes, ds.image_shape, steps_per_epoch)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", _describe_run(config, ds, model, device, precision))

    train_batches = ShuffledBatches(ds.x_train, _one_hot(ds.y_train, ds.num_classes),
                                    batch_size, seed=config.seed, epoch=start_epoch)
    logger = RunLogger(run_dir, model, len(train_batches) * batch_size, best_acc,
                       checkpoint_every=checkpoint_every, last_epoch=config.epochs,
                       data_name=ds.name)
    trainer.fit(train_batches, epochs=config.epochs, initial_epoch=start_epoch,
                validation_data=(ds.x_test, _one_hot(ds.y_test, ds.num_classes)),
                validation_batch_size=even_batch_size(len(ds.y_test), max(batch_size, 256)),
                callbacks=[logger], verbose=verbose)
    if logger.nan_at is not None:
        raise TrainingError(f"loss became NaN in epoch {logger.nan_at + 1}; "
                            f"lower --lr (now {config.lr}) or the L2 weights. The last good "
                            f"checkpoint is in {run_dir}")
    _save_model(model, run_dir / "model.keras")
    history = read_metrics(run_dir / "metrics.csv")
    return TrainResult(run_dir, history, max(r["test_acc"] for r in history),
                       history[-1]["test_acc"], ds.name)


def build_trainer(config: TrainConfig, num_classes: int, input_shape: tuple[int, int, int],
                  steps_per_epoch: int) -> tuple[keras.Model, keras.Model]:
    """The compiled training model (augmentation + network) and the bare network inside it.

    Example:
        >>> trainer, model = build_trainer(TrainConfig(width=4), 10, (32, 32, 3), 100)
        >>> trainer.optimizer.nesterov, model.name
        (True, 'resnet18_w4')
    """
    model = resnet18(num_classes, config.width, weight_l2=config.weight_l2,
                     feature_l2=config.feature_l2, l1=config.l1, dropout=config.dropout,
                     input_shape=input_shape)
    trainer = (with_augmentation(model, seed=config.seed, cutout=config.cutout)
               if config.augment else model)
    total = steps_per_epoch * config.epochs
    schedule = OneCycle(config.lr, total, int(config.warmup * total), config.schedule)
    # With an EMA, fit() ends by writing the averaged weights into the model (Keras'
    # finalize_variable_values), so model.keras holds them.
    trainer.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=config.momentum,
                                       nesterov=config.nesterov, use_ema=config.ema > 0,
                                       ema_momentum=config.ema or 0.99),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="acc")])
    return trainer, model


# --- pieces -------------------------------------------------------------------------------

def even_batch_size(count: int, target: int) -> int:
    """A batch size near ``target`` that divides ``count``, so evaluation has no partial last
    batch (on JAX each new batch shape is another compile); ``target`` if none is near.

    Example:
        >>> even_batch_size(10_000, 512), even_batch_size(10_007, 512)
        (500, 512)
    """
    near = [b for b in range(target // 2, 2 * target + 1) if count % b == 0]
    return min(near, key=lambda b: abs(b - target)) if near else target


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def _describe_run(config: TrainConfig, ds: Dataset, model, device: str | None,
                  precision: str) -> dict:
    hyper = dataclasses.asdict(config)
    return {
        "config": hyper,
        "config_hash": config_hash({"config": hyper, "data": ds.fingerprint}),
        "model": {"name": model.name, "parameters": count_params(model),
                  "input_shape": list(ds.image_shape), "class_names": ds.class_names},
        "data": {"name": ds.name, "source": ds.source, "fingerprint": ds.fingerprint,
                 "train_images": int(len(ds.y_train)), "test_images": int(len(ds.y_test)),
                 **ds.extra},
        "backend": keras.backend.backend(),
        "device": device or "cpu",
        "precision": precision,
        "versions": library_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _read_resume_state(run_dir: Path) -> tuple[TrainConfig, int, float]:
    try:
        described = json.loads((run_dir / "config.json").read_text())
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot resume {run_dir}: no readable config.json and "
                            f"state.json there ({e})") from None
    if not (run_dir / "last.keras").is_file():
        raise TrainingError(f"cannot resume {run_dir}: last.keras is missing")
    config = TrainConfig(**described["config"])
    if state["epoch"] >= config.epochs:
        raise TrainingError(f"{run_dir} already finished all {config.epochs} epochs")
    return config, int(state["epoch"]), float(state["best_acc"])


def _load_checkpoint(path: Path):
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # a corrupt zip, a missing layer...: say which file
        raise TrainingError(f"cannot load checkpoint {path}: {e}") from None


def _save_model(model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``metrics.csv`` as dicts of numbers."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]




@keras.saving.register_keras_serializable(package="edgel2")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then a linear ("onecycle") or
    cosine decay to 0 at ``total_steps``."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, kind: str = "onecycle"):
        self.peak, self.total_steps, self.warmup_steps, self.kind = (
            float(peak), int(total_steps), int(warmup_steps), kind)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = keras.ops.maximum(float(self.warmup_steps), 1.0)
        progress = keras.ops.clip((step - self.warmup_steps)
                                  / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        decay = (1.0 - progress if self.kind == "onecycle"
                 else 0.5 * (1.0 + keras.ops.cos(math.pi * progress)))
        return self.peak * keras.ops.where(step < self.warmup_steps, step / warm, decay)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind}


class ShuffledBatches(keras.utils.PyDataset):
    """Full batches of (uint8 images, one-hot labels) in a fresh seeded order each epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
    batches as an uninterrupted one; the last partial batch is dropped so that a compiled
    train step never sees a second shape (a recompile on JAX).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int = 0):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch = epoch
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return max(1, len(self.y) // self.batch_size)

    def __getitem__(self, index: int):
        picked = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])
        return self.x[picked], self.y[picked]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffle()


class RunLogger(keras.callbacks.Callback):
    """Per epoch: a metrics.csv row; every ``checkpoint_every`` epochs and after the last:
    curves.png, best.keras (the best of those epochs) and the resumable checkpoint
    (last.keras + state.json), each written atomically. Stops the run on a NaN loss.

    It reads the logs only at epoch ends: a per-step hook would make JAX wait for every
    step to finish before queueing the next.
    """

    def __init__(self, run_dir: Path, model, images_per_epoch: int, best_acc: float = -1.0,
                 checkpoint_every: int = 1, last_epoch: int | None = None, data_name: str = ""):
        super().__init__()
        self.title = f"{run_dir.name}: {data_name} test split" if data_name else run_dir.name
        self.run_dir, self.inner, self.images_per_epoch = run_dir, model, images_per_epoch
        self.best_acc = best_acc
        self.checkpoint_every, self.last_epoch = max(1, checkpoint_every), last_epoch
        self.nan_at: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        end = time.perf_counter()
        # The epoch's loss is the mean over its steps, so one NaN step makes it NaN.
        if not math.isfinite(float(logs.get("loss", 0.0))):
            self.nan_at = epoch
            self.model.stop_training = True
            return  # keep the last good checkpoint
        train_seconds = (self._train_end or end) - self._start
        row = {"epoch": epoch + 1, "train_loss": logs.get("loss", float("nan")),
               "train_acc": logs.get("acc", float("nan")),
               "test_loss": logs.get("val_loss", float("nan")),
               "test_acc": logs.get("val_acc", float("nan")),
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "seconds": end - self._start,
               "images_per_s": self.images_per_epoch / max(train_seconds, 1e-9)}
        self._append_metrics(row)
        if (epoch + 1) % self.checkpoint_every and epoch + 1 != self.last_epoch:
            return
        if row["test_acc"] > self.best_acc:
            self.best_acc = row["test_acc"]
            _save_model(self.inner, self.run_dir / "best.keras")
        _save_model(self.model, self.run_dir / "last.keras")
        # state.json is written last: it only ever points at a complete checkpoint.
        write_json(self.run_dir / "state.json", {"epoch": epoch + 1, "best_acc": self.best_acc})
        plot_curves(read_metrics(self.run_dir / "metrics.csv"), self.run_dir / "curves.png",
                    title=self.title)

    def _append_metrics(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        rows = read_metrics(path) if path.exists() else []
        rows = [r for r in rows if r["epoch"] < row["epoch"]] + [row]  # a resumed epoch replaces
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (r[k] if k == "epoch" else f"{r[k]:.6g}") for k in METRIC_FIELDS})
