"""edgel2.train and the train/eval commands, on small subsets of CIFAR-10-JPEG at small widths."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgel2.config import TrainConfig
from edgel2.errors import TrainingError
from edgel2.train import RunLogger, build_trainer, read_metrics, train

pytestmark = pytest.mark.slow
QUICK = dict(width=8, batch_size=128, lr=0.2, subset=2000, test_subset=500)


@pytest.fixture(scope="module")
def trained_run(cifar, tmp_path_factory):
    """One short run shared by the tests that only read its results."""
    out = tmp_path_factory.mktemp("runs") / "quick"
    return train(TrainConfig(epochs=4, **QUICK), out, dataset=_copy(cifar), verbose=0)


def _copy(ds):
    from dataclasses import replace

    return replace(ds)  # train() cuts subsets on its own copy of the attributes


def test_short_run_beats_chance_clearly(trained_run):
    assert trained_run.best_acc > 0.25  # chance is 0.10 on 10 balanced classes
    assert [r["epoch"] for r in trained_run.history] == [1, 2, 3, 4]


def test_run_directory_holds_models_config_metrics_and_curves(trained_run):
    run = trained_run.run_dir
    for name in ["model.keras", "best.keras", "last.keras", "config.json", "metrics.csv",
                 "curves.png", "state.json"]:
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    described = json.loads((run / "config.json").read_text())
    assert described["config"]["width"] == 8 and described["config"]["subset"] == 2000
    assert described["model"]["parameters"] > 0 and described["data"]["fingerprint"]
    assert described["data"]["name"] == trained_run.data_name == "CIFAR-10-JPEG"
    assert described["backend"] == "tensorflow" and described["precision"] == "fp32"
    assert {"keras", "numpy"} <= described["versions"].keys()
    assert list(read_metrics(run / "metrics.csv")[0]) == [
        "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s"]
    assert not list(run.glob(".*tmp*")), "a temporary file was left behind"


def test_same_seed_gives_the_same_run(cifar, tmp_path):
    config = TrainConfig(epochs=1, **{**QUICK, "width": 4, "subset": 512, "test_subset": 100})
    first = train(config, tmp_path / "a", dataset=_copy(cifar), verbose=0)
    second = train(config, tmp_path / "b", dataset=_copy(cifar), verbose=0)
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert first.history[0]["test_acc"] == second.history[0]["test_acc"]


def test_resume_continues_after_the_last_finished_epoch(cifar, tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, **{**QUICK, "width": 4, "subset": 512, "test_subset": 100})
    finish_epoch = RunLogger.on_epoch_end

    def killed_after_first_epoch(self, epoch, logs=None):
        finish_epoch(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLogger, "on_epoch_end", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", dataset=_copy(cifar), verbose=0)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["epoch"] == 1
    assert not (tmp_path / "run" / "model.keras").exists()

    monkeypatch.setattr(RunLogger, "on_epoch_end", finish_epoch)
    result = train(config, resume=tmp_path / "run", dataset=_copy(cifar), verbose=0)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the schedule ran to its end
    assert (tmp_path / "run" / "model.keras").is_file()
    with pytest.raises(TrainingError, match="already finished all 2 epochs"):
        train(config, resume=tmp_path / "run", dataset=_copy(cifar), verbose=0)


def test_nan_loss_stops_the_run_with_a_clear_message(cifar, tmp_path):
    config = TrainConfig(epochs=1, **{**QUICK, "width": 4, "subset": 512, "test_subset": 100,
                                      "lr": 1e30, "warmup": 0.0})
    with pytest.raises(TrainingError, match=r"loss became NaN in epoch 1; lower --lr"):
        train(config, tmp_path / "nan", dataset=_copy(cifar), verbose=0)


def test_ema_option_saves_the_averaged_weights(cifar, tmp_path):
    import keras

    from edgel2.evaluate import load_model

    config = TrainConfig(epochs=1, ema=0.9, **{**QUICK, "width": 4, "subset": 512})
    trainer, model = build_trainer(config, 10, (32, 32, 3), 4)
    assert trainer.optimizer.use_ema and trainer.optimizer.ema_momentum == pytest.approx(0.9)
    result = train(config, tmp_path / "ema", dataset=_copy(cifar), verbose=0)
    # what fit() ends with: the averaged weights overwrite the raw ones, then model.keras is saved
    saved = load_model(result.run_dir / "model.keras").trainable_weights
    last = keras.saving.load_model(result.run_dir / "last.keras")
    averages = last.optimizer._model_variables_moving_average
    assert len(saved) == len(averages)
    for weight, average in zip(saved, averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weight),
                                   keras.ops.convert_to_numpy(average), rtol=1e-6, atol=1e-6)


def test_jax_backend_trains_where_tensorflow_cannot_be_imported(data_dir, tmp_path):
    blocker = tmp_path / "blocked"
    for module in ("tensorflow", "tf2onnx"):
        (blocker / module).mkdir(parents=True)
        (blocker / module / "__init__.py").write_text(f"raise ImportError('{module} is blocked')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.getcwd()]),
           "KERAS_BACKEND": "jax"}
    out = tmp_path / "jax-run"
    proc = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert "tensorflow is blocked" in proc.stderr  # the blocker works
    proc = subprocess.run(
        [sys.executable, "-m", "edgel2", "train", "--backend", "jax", "--data", str(data_dir),
         "--width", "4", "--epochs", "1", "--subset", "256", "--test-subset", "100",
         "--batch-size", "64", "--out", str(out), "--quiet"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["backend"] == "jax"
    assert (out / "model.keras").is_file()


def test_eval_reports_accuracy_per_class_and_confusion(trained_run, data_dir, tmp_path):
    from click.testing import CliRunner

    from edgel2.cli import cli

    model = trained_run.run_dir / "model.keras"
    result = CliRunner().invoke(cli, ["eval", str(model), "--data", str(data_dir), "--json",
                                      "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    matrix = np.array(report["confusion"])
    assert report["images"] == 10000 and matrix.sum() == 10000
    assert report["data"]["name"] == "CIFAR-10-JPEG"
    assert matrix.sum(axis=1).tolist() == [1000] * 10
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 10000)
    assert set(report["per_class"]) == set(report["class_names"])
    assert report["accuracy"] > 0.25
    assert (tmp_path / "eval" / "confusion.png").is_file()
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == report
