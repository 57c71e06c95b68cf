"""A run killed at any instant resumes to exactly the result it would have reached.

Each test kills a 3-epoch run at one write point (a ``KeyboardInterrupt`` where Ctrl-C or a
dying process would stop it, leaving the half-written temporary file a real kill leaves
where the window is inside a write; one window is a real SIGKILL of a child process), then
resumes it and compares it with the same run left alone: ``metrics.csv`` to the last digit
written, ``summary.json``, and every weight of ``model.keras`` and ``best.keras``.

The run uses cutout, dropout, an EMA of the weights, a validation split, synthetic outliers
and the logit-norm loss, so the checkpoint must carry every random generator, the optimizer's
averages, the best score and the loss, and the outliers must be those of the epoch.
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgel2.checkpoint import checkpoint_state, load_model
from edgel2.config import TrainConfig
from edgel2.errors import TrainingError
from edgel2.train import callbacks, fit, train

pytestmark = pytest.mark.slow
CONFIG = TrainConfig(width=4, epochs=3, batch_size=64, lr=0.2, subset=384, test_subset=100,
                     val_split=0.25, cutout=8, dropout=0.1, ema=0.9, outliers=0.25,
                     logit_norm=0.04)
# What a resumed run must reproduce exactly (seconds and images/s are the clock's).
SAME = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


@pytest.fixture(scope="module")
def uninterrupted(cifar, tmp_path_factory) -> Path:
    return train(CONFIG, tmp_path_factory.mktemp("alone") / "run", dataset=cifar,
                 verbose=0).run_dir


def metrics(run: Path) -> list[dict]:
    """metrics.csv as written (strings: every digit counts)."""
    with open(run / "metrics.csv", newline="") as f:
        return [{k: row[k] for k in SAME} for row in csv.DictReader(f)]


def weights(path: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in load_model(path).get_weights()]


def assert_same_run(run: Path, reference: Path) -> None:
    assert metrics(run) == metrics(reference)
    assert json.loads((run / "summary.json").read_text()) == \
        json.loads((reference / "summary.json").read_text())
    assert checkpoint_state(run / "best.keras") == checkpoint_state(reference / "best.keras")
    for name in ("model.keras", "best.keras"):
        for mine, theirs in zip(weights(run / name), weights(reference / name), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    assert not list(run.glob(".*tmp*")), "a temporary file was left behind"


class Kill(KeyboardInterrupt):
    """What stops the run at the chosen instant (a KeyboardInterrupt, as Ctrl-C)."""


def half_written(path: Path) -> None:
    """Leave what a kill inside atomic_path leaves: the start of a temporary file."""
    (path.parent / f".{path.stem}.tmp4242{path.suffix}").write_bytes(b"PK\x03\x04" + b"\0" * 64)


def kill_inside_first_checkpoint(monkeypatch, reference):
    def save(trainer, path, state):
        half_written(Path(path))
        raise Kill
    monkeypatch.setattr(callbacks, "save_checkpoint", save)


def kill_before(callback: type, epoch: int, name: str):
    """A kill just before ``callback`` handles the end of ``epoch`` (0-based): everything the
    callbacks before it wrote for that epoch is on disk, nothing after."""
    def kill(monkeypatch, reference):
        real = callback.on_epoch_end

        def on_epoch_end(self, at, logs=None):
            if at == epoch:
                raise Kill
            real(self, at, logs)
        monkeypatch.setattr(callback, "on_epoch_end", on_epoch_end)
    kill.__name__ = name
    return kill


kill_between_metrics_and_checkpoint_of_epoch_2 = kill_before(
    callbacks.Checkpoint, 1, "kill_between_metrics_and_checkpoint_of_epoch_2")
kill_between_checkpoint_and_curves_of_epoch_2 = kill_before(
    callbacks.CurvesPlot, 1, "kill_between_checkpoint_and_curves_of_epoch_2")


def kill_between_best_and_checkpoint(monkeypatch, reference):
    """After best.keras of the epoch the final best comes from, before that epoch's
    checkpoint: best.keras is then one epoch ahead of last.keras."""
    real = callbacks.save_checkpoint
    target = checkpoint_state(reference / "best.keras")["epoch"]

    def save_checkpoint(trainer, path, state):
        if state["epoch"] == target:
            run = Path(path).parent
            assert checkpoint_state(run / "best.keras")["epoch"] == target
            assert (checkpoint_state(run / "last.keras") or {"epoch": 0})["epoch"] == target - 1
            raise Kill
        real(trainer, path, state)
    monkeypatch.setattr(callbacks, "save_checkpoint", save_checkpoint)


def kill_after_the_last_epoch_before_model_keras(monkeypatch, reference):
    def finish(*args, **kwargs):
        raise Kill
    monkeypatch.setattr(fit, "_finish", finish)


def kill_inside_the_model_keras_write(monkeypatch, reference):
    def save(model, path, state=None):
        half_written(Path(path))
        raise Kill
    monkeypatch.setattr(fit, "save_model", save)


def kill_between_model_keras_and_summary(monkeypatch, reference):
    real = fit.write_json

    def write_json(path, obj):
        if Path(path).name == "summary.json":
            raise Kill
        return real(path, obj)
    monkeypatch.setattr(fit, "write_json", write_json)


@pytest.mark.parametrize("kill", [
    kill_inside_first_checkpoint,
    kill_between_metrics_and_checkpoint_of_epoch_2,
    kill_between_best_and_checkpoint,
    kill_between_checkpoint_and_curves_of_epoch_2,
    kill_after_the_last_epoch_before_model_keras,
    kill_inside_the_model_keras_write,
    kill_between_model_keras_and_summary,
], ids=lambda f: f.__name__.removeprefix("kill_"))
def test_a_run_killed_at_any_write_resumes_to_the_same_result(kill, uninterrupted, cifar,
                                                              tmp_path, monkeypatch):
    with monkeypatch.context() as patched:
        kill(patched, uninterrupted)
        with pytest.raises(Kill):
            train(CONFIG, tmp_path / "run", dataset=cifar, verbose=0)
    result = train(CONFIG, resume=tmp_path / "run", dataset=cifar, verbose=0)
    assert_same_run(result.run_dir, uninterrupted)


def test_a_sigkill_just_before_the_checkpoint_rename_resumes_to_the_same_result(
        uninterrupted, cifar, data_dir, tmp_path):
    """A real kill (SIGKILL, no clean-up at all) of `edgel2 train` when epoch 2's checkpoint is
    written in full but not yet renamed over last.keras; `edgel2 train --resume` finishes it."""
    run = tmp_path / "run"
    driver = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "real, seen = os.replace, []\n"
        "def replace(src, dst):\n"
        "    if Path(dst).name == 'last.keras':\n"
        "        seen.append(dst)\n"
        "        if len(seen) == 2:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(src, dst)\n"
        "os.replace = replace\n"
        "from edgel2.cli import main\n"
        "sys.argv = ['edgel2'] + sys.argv[1:]\n"
        "main()\n")
    options = ["--data", str(data_dir), "--width", "4", "--epochs", "3", "--batch-size", "64",
               "--lr", "0.2", "--subset", "384", "--test-subset", "100", "--val-split", "0.25",
               "--cutout", "8", "--dropout", "0.1", "--ema", "0.9", "--outliers", "0.25",
               "--logit-norm", "0.04", "--quiet"]
    killed = subprocess.run([sys.executable, "-c", driver, "train", *options, "--out", str(run)],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list(run.glob(".last.tmp*.keras")), "the kill left no temporary checkpoint"
    assert checkpoint_state(run / "last.keras")["epoch"] == 1

    resumed = subprocess.run([sys.executable, "-m", "edgel2", "train", "--resume", str(run),
                              "--quiet"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [line.split(":")[0] for line in resumed.stdout.splitlines()[:2]] == \
        ["epoch 2/3", "epoch 3/3"]
    assert_same_run(run, uninterrupted)


def assert_resumes_after_the_first_checkpoint(config: TrainConfig, cifar, tmp_path,
                                              monkeypatch) -> None:
    """Kill ``config``'s run right after its first checkpoint, resume it, and compare it with
    the same run left alone."""
    alone = train(config, tmp_path / "alone", dataset=cifar, verbose=0).run_dir
    with monkeypatch.context() as patched:
        real = callbacks.Checkpoint.on_epoch_end

        def on_epoch_end(self, epoch, logs=None):
            real(self, epoch, logs)
            raise Kill
        patched.setattr(callbacks.Checkpoint, "on_epoch_end", on_epoch_end)
        with pytest.raises(Kill):
            train(config, tmp_path / "run", dataset=cifar, verbose=0)
    assert_same_run(train(config, resume=tmp_path / "run", dataset=cifar, verbose=0).run_dir,
                    alone)


def test_a_run_without_augmentation_resumes_exactly(cifar, tmp_path, monkeypatch):
    """--no-augment: the training model is the network itself (no wrapper to look inside)."""
    assert_resumes_after_the_first_checkpoint(replace(CONFIG, augment=False, epochs=2), cifar,
                                              tmp_path, monkeypatch)


def test_a_distilled_resnet20_resumes_exactly(cifar, tmp_path, monkeypatch):
    """--teacher: the batches are augmented before the step (the teacher sees them), seeded by
    (seed, epoch, batch); the teacher is the shipped int8 ONNX, run by edgel2's runtime."""
    from edgel2.runtime.shipped import shipped_model

    config = replace(CONFIG, arch="resnet20", epochs=2,
                     teacher=str(shipped_model("resnet18-int8.onnx")))
    assert_resumes_after_the_first_checkpoint(config, cifar, tmp_path, monkeypatch)


def test_resuming_a_finished_run_says_so(uninterrupted, cifar):
    with pytest.raises(TrainingError) as raised:
        train(CONFIG, resume=uninterrupted, dataset=cifar, verbose=0)
    assert str(raised.value) == f"{uninterrupted} already finished all 3 epochs"


def recorded_on(run: Path, backend: str, copy: Path) -> Path:
    """A copy of the finished ``run`` whose config.json says it trained on ``backend``."""
    import shutil

    shutil.copytree(run, copy)
    described = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**described, "backend": backend}))
    return copy


def test_a_run_is_resumed_only_on_the_backend_it_trained_on(uninterrupted, cifar, tmp_path):
    run = recorded_on(uninterrupted, "jax", tmp_path / "run")
    with pytest.raises(TrainingError) as raised:
        train(CONFIG, resume=run, dataset=cifar, verbose=0)
    assert str(raised.value) == (f"cannot resume {run} exactly: it trained on jax and Keras runs "
                                 "on tensorflow here; resume it with KERAS_BACKEND=jax")


def test_the_cli_resumes_a_run_on_the_backend_it_trained_on(uninterrupted, tmp_path):
    import os

    run = recorded_on(uninterrupted, "jax", tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "edgel2", "train", "--resume", str(run)],
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"},
                          capture_output=True, text=True)
    # on jax the run is found finished; on tensorflow it would have been refused
    assert (done.returncode, done.stderr) == (1, f"edgel2: error: {run} already finished all 3 epochs\n")


def test_a_folder_that_only_holds_a_killed_write_is_fresh_again(cifar, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    half_written(run / "last.keras")
    train(replace(CONFIG, epochs=1, val_split=0.0), run, dataset=cifar, verbose=0)
    assert not list(run.glob(".*tmp*"))


def test_a_folder_with_files_of_its_own_is_refused_and_left_as_it_is(cifar, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / ".draft.tmp1.txt").write_text("not edgel2's")
    with pytest.raises(TrainingError, match="is not empty; pick another `out`"):
        train(replace(CONFIG, epochs=1), run, dataset=cifar, verbose=0)
    assert (run / ".draft.tmp1.txt").read_text() == "not edgel2's"


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(cifar, tmp_path, monkeypatch):
    import errno

    import keras

    real, saves = keras.Model.save, []

    def save(self, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:  # best.keras and last.keras of epoch 1 went through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *args, **kwargs)
    monkeypatch.setattr(keras.Model, "save", save)
    with pytest.raises(TrainingError) as raised:
        train(CONFIG, tmp_path / "run", dataset=cifar, verbose=0)
    # the third save is epoch 2's best.keras if its validation top-1 improved, else last.keras
    refused = "best.keras" if Path(saves[2]).name.startswith(".best.") else "last.keras"
    assert str(raised.value) == \
        f"cannot write {tmp_path / 'run' / refused}: No space left on device"
    assert checkpoint_state(tmp_path / "run" / "last.keras")["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*tmp*"))


def test_resume_of_a_folder_without_a_run_is_one_line(tmp_path):
    with pytest.raises(TrainingError, match=r"^cannot resume .*: no readable config.json there"):
        train(CONFIG, resume=tmp_path)
