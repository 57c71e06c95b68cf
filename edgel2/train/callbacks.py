"""The callbacks of a training run, one job each, like Keras' own (``CSVLogger``,
``ModelCheckpoint``, ``TerminateOnNaN``). ``train`` passes them in this order, which matters:
a NaN stops the epoch before anything of it is written, and the held-out figures are named
before anyone reads them.

They read the logs only at epoch ends: a per-step hook would make JAX wait for every step to
finish before queueing the next.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

from edgel2.checkpoint import checkpoint_state, save_checkpoint, save_model
from edgel2.errors import TrainingError, reported_write
from edgel2.plots import plot_curves
from edgel2.utils import atomic_path


def metric_fields(split: str) -> list[str]:
    """The columns of ``metrics.csv``; ``split`` is what the per-epoch held-out figures are
    on: ``val`` (held out of the training images) or ``test``."""
    return ["epoch", "train_loss", "train_acc", f"{split}_loss", f"{split}_acc", "lr",
            "seconds", "images_per_s"]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``metrics.csv``.

    Args:
        path: The ``metrics.csv``.

    Returns:
        One dict per epoch: ``epoch`` an int, every other column a float.

    Examples:
        >>> read_metrics("runs/train/exp/metrics.csv")[-1]["test_acc"]    # doctest: +SKIP
        0.9312
    """
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def history_rows(history: dict, split: str, first_epoch: int = 0) -> list[dict]:
    """The figures of a Keras ``History`` as ``metrics.csv`` rows (without timings): what a
    process that writes no ``metrics.csv`` (not process 0 of several) reports.

    Examples:
        >>> history_rows({"loss": [2.5], "acc": [0.25], "test_loss": [2.0], "test_acc": [0.5]}, "test")
        [{'epoch': 1, 'train_loss': 2.5, 'train_acc': 0.25, 'test_loss': 2.0, 'test_acc': 0.5}]
    """
    def column(name: str) -> list[float]:
        return history.get(name) or history.get(name.replace(split, "val", 1)) or []

    names = {"train_loss": "loss", "train_acc": "acc", f"{split}_loss": f"{split}_loss",
             f"{split}_acc": f"{split}_acc"}
    return [{"epoch": first_epoch + i + 1,
             **{field: float(column(name)[i]) for field, name in names.items()}}
            for i in range(len(history.get("loss", [])))]


def _due(epoch: int, every: int, last_epoch: int, stopping: bool = False) -> bool:
    """Whether a write every ``every`` epochs (and after the last, or the one a stop makes
    the last) falls on ``epoch`` (0-based)."""
    return (epoch + 1) % every == 0 or epoch + 1 == last_epoch or stopping


def stalled(rows: list[dict], patience: int) -> bool:
    """Whether the validation top-1 of ``metrics.csv`` rows has gone ``patience`` epochs
    without beating its best (0: never): where :class:`StopWhenStalled` stops a run, and
    where a resumed run knows it had stopped.

    Examples:
        >>> rows = [{"epoch": e, "val_acc": a} for e, a in enumerate([0.5, 0.7, 0.6, 0.7], 1)]
        >>> stalled(rows, 2), stalled(rows, 3), stalled(rows, 0)
        (True, False, False)
    """
    scores = [r["val_acc"] for r in rows if "val_acc" in r]
    if not patience or not scores:
        return False
    best_epoch = int(np.argmax(scores))  # the first epoch with the best score
    return len(scores) - 1 - best_epoch >= patience


class StopWhenStalled(keras.callbacks.Callback):
    """Stop the run after ``patience`` epochs in a row without a better validation top-1
    (the figure ``best.keras`` is chosen on), like Keras' ``EarlyStopping``; its memory is
    ``metrics.csv``'s rows (``earlier``, on resume), so a resumed run stops where the run
    would have. The test split never stops a run: ``train`` refuses patience without a
    validation split."""

    def __init__(self, patience: int, earlier: list[dict] | None = None):
        super().__init__()
        self.patience, self.rows = patience, list(earlier or [])

    def on_epoch_end(self, epoch, logs=None):
        if not self.patience or "val_acc" not in (logs or {}):
            return
        self.rows.append({"epoch": epoch + 1, "val_acc": float(logs["val_acc"])})
        if stalled(self.rows, self.patience):
            self.model.stop_training = True


class StopOnNaN(keras.callbacks.Callback):
    """Stop the run at the end of an epoch whose mean loss is not finite (one NaN step makes
    it so), before anything of that epoch is written, with a line that says what to change
    and where the last good checkpoint is."""

    def __init__(self, lr: float, checkpoint: Path):
        super().__init__()
        self.lr, self.checkpoint = lr, checkpoint

    def on_epoch_end(self, epoch, logs=None):
        if math.isfinite(float((logs or {}).get("loss", 0.0))):
            return
        state = checkpoint_state(self.checkpoint)
        where = (f"the last good checkpoint (epoch {state['epoch']}) is {self.checkpoint}"
                 if state else "no checkpoint had been written yet")
        raise TrainingError(f"loss became NaN in epoch {epoch + 1}; lower `lr` (now {self.lr}) "
                            f"or the L2 weights; {where}")


class NameHeldOut(keras.callbacks.Callback):
    """Keras logs the figures of ``fit(validation_data=...)`` as ``val_loss``/``val_acc``;
    when that data is the test split, rename them ``test_loss``/``test_acc`` for every later
    callback and the progress bar, so nothing calls the test split a validation split."""

    def __init__(self, split: str):
        super().__init__()
        self.split = split

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.split == "val":
            return
        for name in ("loss", "acc"):
            if f"val_{name}" in logs:
                logs[f"{self.split}_{name}"] = logs.pop(f"val_{name}")


class MetricsCSV(keras.callbacks.Callback):
    """A ``metrics.csv`` row per epoch: train and held-out loss and top-1, the learning rate,
    seconds and training images per second. Rewritten atomically; the row of an epoch that a
    killed run wrote but did not checkpoint is replaced when the resumed run trains it again."""

    def __init__(self, path: Path, split: str, images_per_epoch: int):
        super().__init__()
        self.path, self.split, self.images_per_epoch = path, split, images_per_epoch
        self.fields = metric_fields(split)

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        # JAX dispatches the steps ahead of the computation (and Keras runs batch callbacks
        # asynchronously): wait for the last step's result, or images/s counts the dispatch
        keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs, end = logs or {}, time.perf_counter()
        train_seconds = (self._train_end or end) - self._start
        loss, acc = f"{self.split}_loss", f"{self.split}_acc"
        row = {"epoch": epoch + 1, "train_loss": logs.get("loss", math.nan),
               "train_acc": logs.get("acc", math.nan), loss: logs.get(loss, math.nan),
               acc: logs.get(acc, math.nan),
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "seconds": end - self._start,
               "images_per_s": self.images_per_epoch / max(train_seconds, 1e-9)}
        rows = read_metrics(self.path) if self.path.exists() else []
        rows = [r for r in rows if r["epoch"] < row["epoch"]] + [row]
        with reported_write(self.path), atomic_path(self.path) as tmp, \
                open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (r[k] if k == "epoch" else f"{r[k]:.6g}")
                                 for k in self.fields})


class Checkpoint(keras.callbacks.Callback):
    """Every ``every`` epochs and after the last: ``best.keras`` when the validation top-1
    beat the best so far (only with a validation split: the test split never chooses), then
    the run's commit point, ``last.keras`` (see :mod:`edgel2.checkpoint`).

    ``best.keras`` carries its own epoch and score, so a kill between the two writes leaves
    a best model that describes itself, and the checkpoint of the epoch before.
    """

    def __init__(self, run_dir: Path, model, *, every: int, last_epoch: int, seed: int,
                 select: bool, best_score: float = -math.inf):
        super().__init__()
        self.run_dir, self.inner, self.every, self.last_epoch = run_dir, model, every, last_epoch
        self.seed, self.select, self.best_score = seed, select, best_score

    def on_epoch_end(self, epoch, logs=None):
        if not _due(epoch, self.every, self.last_epoch, self.model.stop_training):
            return
        score = (logs or {}).get("val_acc")
        if self.select and score is not None and score > self.best_score:
            self.best_score = float(score)
            save_model(self.inner, self.run_dir / "best.keras",
                       state={"epoch": epoch + 1, "val_acc": self.best_score})
        save_checkpoint(self.model, self.run_dir / "last.keras", {
            "epoch": epoch + 1,
            "step": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "data_order": {"seed": self.seed, "next_epoch": epoch + 1}})


class CurvesPlot(keras.callbacks.Callback):
    """``curves.png`` drawn again from ``metrics.csv`` every ``every`` epochs and after the
    last (drawing takes about as long as a small epoch)."""

    def __init__(self, metrics: Path, path: Path, *, every: int, last_epoch: int, title: str):
        super().__init__()
        self.metrics, self.path, self.every, self.last_epoch = metrics, path, every, last_epoch
        self.title = title

    def on_epoch_end(self, epoch, logs=None):
        if _due(epoch, self.every, self.last_epoch, self.model.stop_training):
            with reported_write(self.path):
                plot_curves(read_metrics(self.metrics), self.path, title=self.title)


class EpochLine(keras.callbacks.Callback):
    """One plain line per epoch (no progress bar, no escape codes), for output that is not a
    terminal: CI, ``nohup``, a log file."""

    def __init__(self, epochs: int, split: str, stream=None):
        super().__init__()
        self.epochs, self.split, self.stream = epochs, split, stream or sys.stdout

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        held_out = "validation" if self.split == "val" else "test"
        print(f"epoch {epoch + 1}/{self.epochs}: train loss {logs.get('loss', math.nan):.4f} "
              f"top-1 {100 * logs.get('acc', math.nan):.2f} %, {held_out} loss "
              f"{logs.get(f'{self.split}_loss', math.nan):.4f} top-1 "
              f"{100 * logs.get(f'{self.split}_acc', math.nan):.2f} %, "
              f"{time.perf_counter() - self._start:.1f} s", file=self.stream, flush=True)
