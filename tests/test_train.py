"""edgel2.train and the train/eval commands, on small subsets of CIFAR-10-JPEG at small widths."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from edgel2.config import TrainConfig
from edgel2.errors import TrainingError
from edgel2.train import build_trainer, read_metrics, train

pytestmark = pytest.mark.slow
QUICK = dict(width=8, batch_size=128, lr=0.2, subset=2000, test_subset=500)


@pytest.fixture(scope="module")
def trained_run(cifar, tmp_path_factory):
    """One short run shared by the tests that only read its results."""
    out = tmp_path_factory.mktemp("runs") / "quick"
    return train(TrainConfig(epochs=4, **QUICK), out, dataset=cifar, verbose=0)


def test_short_run_beats_chance_clearly(trained_run):
    assert trained_run.test_acc > 0.25  # chance is 0.10 on 10 balanced classes
    assert [r["epoch"] for r in trained_run.history] == [1, 2, 3, 4]


def test_the_reported_test_figure_is_of_the_saved_model(trained_run, cifar):
    """summary.json and TrainResult give the test top-1 of model.keras as saved, on the same
    test images (the run's 500-image subset), as a fresh evaluation of the file gives it."""
    from edgel2.checkpoint import load_model
    from edgel2.config import TrainConfig
    from edgel2.evaluate import evaluate
    from edgel2.train import prepare_data

    ds = prepare_data(TrainConfig(**QUICK), cifar)
    fresh = evaluate(load_model(trained_run.run_dir / "model.keras"), ds)
    summary = json.loads((trained_run.run_dir / "summary.json").read_text())
    assert summary["model.keras"]["test_acc"] == trained_run.test_acc == fresh["accuracy"]
    assert summary["test_data"] == trained_run.test_data == \
        "a class-balanced subset of 500 images of the CIFAR-10-JPEG test split"


def test_run_directory_holds_models_config_metrics_and_curves(trained_run):
    run = trained_run.run_dir
    for name in ["model.keras", "last.keras", "config.json", "metrics.csv", "curves.png",
                 "summary.json"]:
        assert (run / name).is_file(), name
    assert not (run / "best.keras").exists(), "best.keras chosen without a validation split"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    described = json.loads((run / "config.json").read_text())
    assert described["config"]["width"] == 8 and described["config"]["subset"] == 2000
    assert described["model"]["parameters"] > 0 and described["data"]["fingerprint"]
    assert described["data"]["name"] == trained_run.data_name == "CIFAR-10-JPEG"
    assert described["data"]["val_images"] == 0 and trained_run.held_out == "test"
    assert described["backend"] == "tensorflow" and described["compute_dtype"] == "fp32"
    assert described["config"]["compute_dtype"] == "auto"
    assert {"keras", "numpy"} <= described["versions"].keys()
    assert list(read_metrics(run / "metrics.csv")[0]) == [
        "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_s"]
    assert not list(run.glob(".*tmp*")), "a temporary file was left behind"


def test_same_seed_gives_the_same_run(cifar, tmp_path):
    config = TrainConfig(epochs=1, **{**QUICK, "width": 4, "subset": 512, "test_subset": 100})
    first = train(config, tmp_path / "a", dataset=cifar, verbose=0)
    second = train(config, tmp_path / "b", dataset=cifar, verbose=0)
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert first.history[0]["test_acc"] == second.history[0]["test_acc"]


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bfloat16_instructions_warns_at_the_start(native, cifar, tmp_path,
                                                                         monkeypatch, capsys):
    """Emulated bfloat16 is about 3x slower than fp32: a bf16 run on such a CPU says so before
    its first epoch, and one on a CPU that has the instructions does not."""
    from edgel2.train import fit

    monkeypatch.setattr(fit, "cpu_bfloat16", lambda: native)
    config = TrainConfig(epochs=1, compute_dtype="bf16",
                         **{**QUICK, "width": 4, "subset": 256, "test_subset": 100})
    train(config, tmp_path / "run", dataset=cifar, verbose=2)
    import keras

    assert keras.mixed_precision.dtype_policy().name == "float32", "the bf16 policy leaked out"
    printed = capsys.readouterr().out.splitlines()
    assert printed.count(fit.EMULATED_BF16) == (0 if native else 1)
    if not native:
        assert printed.index(fit.EMULATED_BF16) < next(
            i for i, line in enumerate(printed) if line.startswith("epoch 1"))


@pytest.mark.parametrize("flags, native", [("fpu sse2 avx2 fma", False),
                                           ("fpu avx512f avx512_bf16", True),
                                           ("fpu avx2 amx_bf16 amx_tile", True)])
def test_native_bfloat16_is_read_from_the_cpu_flags(flags, native, tmp_path):
    from edgel2.backend import cpu_bfloat16

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                    f"flags\t\t: {flags}\n")
    assert cpu_bfloat16(info) is native
    assert cpu_bfloat16(tmp_path / "missing") is None  # not Linux: unknown, no warning
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_bfloat16(tmp_path / "noflags") is None


def test_nan_loss_stops_the_run_with_a_clear_message(cifar, tmp_path):
    config = TrainConfig(epochs=1, **{**QUICK, "width": 4, "subset": 512, "test_subset": 100,
                                      "lr": 1e30, "warmup": 0.0})
    with pytest.raises(TrainingError) as raised:
        train(config, tmp_path / "nan", dataset=cifar, verbose=0)
    assert str(raised.value) == ("loss became NaN in epoch 1; lower `lr` (now 1e+30) or the L2 "
                                 "weights; no checkpoint had been written yet")
    assert not (tmp_path / "nan" / "last.keras").exists()
    assert not (tmp_path / "nan" / "metrics.csv").exists()  # nothing of the NaN epoch is kept


def test_ema_option_saves_the_averaged_weights(cifar, tmp_path):
    import keras

    from edgel2.checkpoint import load_model

    config = TrainConfig(epochs=1, ema=0.9, **{**QUICK, "width": 4, "subset": 512})
    trainer, model = build_trainer(config, 10, (32, 32, 3), 4)
    assert trainer.optimizer.use_ema and trainer.optimizer.ema_momentum == pytest.approx(0.9)
    result = train(config, tmp_path / "ema", dataset=cifar, verbose=0)
    # what fit() ends with: the averaged weights overwrite the raw ones, then model.keras is saved
    saved = load_model(result.run_dir / "model.keras").trainable_weights
    last = keras.saving.load_model(result.run_dir / "last.keras")
    averages = last.optimizer._model_variables_moving_average
    assert len(saved) == len(averages)
    for weight, average in zip(saved, averages):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weight),
                                   keras.ops.convert_to_numpy(average), rtol=1e-6, atol=1e-6)


def test_images_per_second_stops_the_clock_when_the_last_step_is_computed_not_dispatched(
        monkeypatch, tmp_path):
    """On JAX the steps are dispatched ahead of the computation: metrics.csv's training time
    must end after the last step's result is ready (the optimizer's step count read back)."""
    import keras

    from edgel2.train import callbacks

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    recorder = callbacks.MetricsCSV(tmp_path / "metrics.csv", "test", 100)
    recorder.set_model(model)
    recorder.on_epoch_begin(0)
    events, read_back = [], keras.ops.convert_to_numpy
    monkeypatch.setattr(keras.ops, "convert_to_numpy", lambda value: events.append(
        "step count read back" if value is model.optimizer.iterations else "other")
        or read_back(value))
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: events.append("clock") or 0.0)
    recorder.on_test_begin()
    assert events == ["step count read back", "clock"]


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


@pytest.mark.parametrize("user_setting", ["none", "own folder", "empty", "no filelock"])
def test_jax_keeps_its_compiled_programs_in_the_edgel2_cache_unless_the_user_chose(
        tmp_path, user_setting):
    """Loading a model on JAX compiles a random-number program per weight shape (about 1 s
    each on a 2-core CPU): kept on disk, the next command skips them. A user's
    JAX_COMPILATION_CACHE_DIR wins; empty turns the cache off. Without filelock (JAX bounds
    the cache's size only with it) there is no cache, and no warning on every compile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(EDGEL2_CACHE=str(tmp_path / "edgel2"), KERAS_BACKEND="jax")
    if user_setting == "no filelock":
        (tmp_path / "blocked" / "filelock").mkdir(parents=True)
        (tmp_path / "blocked" / "filelock" / "__init__.py").write_text("raise ImportError\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "blocked"), os.getcwd()])
    elif user_setting != "none":
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "own") if user_setting == "own folder" else ""
    proc = subprocess.run(
        [sys.executable, "-c", "from edgel2.backend import use_backend; use_backend('jax'); "
         "import jax; print(float(jax.jit(lambda x: 2 * x + 1)(1.0)))"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr[-2000:]
    assert "cache" not in proc.stderr

    def programs(folder):
        return [p for p in (tmp_path / folder).rglob("*") if p.is_file()]

    assert (len(programs("edgel2/jax")) > 0, len(programs("own")) > 0) == {
        "none": (True, False), "own folder": (False, True), "empty": (False, False),
        "no filelock": (False, False)}[user_setting]


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


def test_off_a_terminal_each_epoch_is_one_plain_line_and_tensorflow_starts_quietly(data_dir,
                                                                                   tmp_path):
    """stdout is a pipe here, as in CI or nohup: no progress bar, no escape codes, the test
    split called test; TensorFlow's start-up banner (twice in TF 2.21) does not reach stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgel2", "train", "--data", str(data_dir), "--width", "4",
         "--epochs", "2", "--subset", "256", "--test-subset", "100", "--batch-size", "64",
         "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    # first the data's summary, then a line per epoch
    assert lines[0].startswith("data: CIFAR-10-JPEG, 10 classes, 256 train / 100 test images (")
    lines = lines[lines.index(next(line for line in lines if line.startswith("epoch "))):]
    pattern = (r"epoch {}/2: train loss \d+\.\d{{4}} top-1 \d+\.\d\d %, test loss \d+\.\d{{4}} "
               r"top-1 \d+\.\d\d %, \d+\.\d s")
    assert re.fullmatch(pattern.format(1), lines[0]) and re.fullmatch(pattern.format(2), lines[1])
    assert lines[2].startswith("model.keras: test top-1 ") and lines[2].endswith(
        "% on a class-balanced subset of 100 images of the CIFAR-10-JPEG test split, "
        "after 2 epochs")
    assert "\x1b" not in proc.stdout and "val_" not in proc.stdout
    assert "oneDNN custom operations are on" not in proc.stderr
    assert "absl::InitializeLog" not in proc.stderr


def test_the_test_split_is_never_called_a_validation_split():
    from edgel2.train.callbacks import NameHeldOut

    logs = {"loss": 1.0, "acc": 0.2, "val_loss": 2.0, "val_acc": 0.5}
    NameHeldOut("test").on_epoch_end(0, logs)
    assert logs == {"loss": 1.0, "acc": 0.2, "test_loss": 2.0, "test_acc": 0.5}
    logs = {"val_loss": 2.0, "val_acc": 0.5}
    NameHeldOut("val").on_epoch_end(0, logs)
    assert logs == {"val_loss": 2.0, "val_acc": 0.5}


def test_curves_have_whole_epoch_ticks_a_learning_rate_panel_and_name_the_held_out_data(
        tmp_path, monkeypatch):
    import edgel2.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, plt, path: figures.append(fig))
    rows = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.1 * e, "val_loss": 1.2 / e,
             "val_acc": 0.09 * e, "lr": 0.1 * (3 - e)} for e in (1, 2, 3)]
    plots.plot_curves(rows, tmp_path / "curves.png", title="run: validation: 96 images")
    (figure,) = figures
    figure.canvas.draw()
    assert [ax.get_title() for ax in figure.axes] == \
        ["loss", "accuracy", "learning rate (at the epoch's end)"]
    assert [t.get_text() for t in figure.axes[1].get_legend().get_texts()] == \
        ["train", "validation"]
    for ax in figure.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    assert list(figure.axes[2].lines[0].get_ydata()) == pytest.approx([0.2, 0.1, 0.0])
    assert figure.get_suptitle() == "run: validation: 96 images"


def test_the_validation_split_is_held_out_of_the_training_images_class_balanced_and_seeded():
    from edgel2.data import Dataset
    from edgel2.train import prepare_data

    ids = np.arange(200).reshape(200, 1, 1, 1)  # each image is its own id
    ds = Dataset(ids, np.arange(200) % 4, ids[:8], np.arange(8) % 4, list("abcd"))
    split = prepare_data(TrainConfig(val_split=0.2), ds)
    train_ids, val_ids = set(split.x_train.ravel()), set(split.x_val.ravel())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(200))
    assert np.bincount(split.y_val).tolist() == [10, 10, 10, 10]
    assert split.x_test is ds.x_test and ds.x_val is None  # the given Dataset is left alone
    again = prepare_data(TrainConfig(val_split=0.2), ds)
    np.testing.assert_array_equal(again.x_val, split.x_val)
    other = prepare_data(TrainConfig(val_split=0.2, seed=1), ds)
    assert set(other.x_val.ravel()) != val_ids


def test_a_validation_run_chooses_best_keras_on_validation_and_measures_it_on_test(cifar,
                                                                                 tmp_path):
    result = train(TrainConfig(epochs=2, val_split=0.2, **{**QUICK, "width": 4, "subset": 500}),
                   tmp_path / "run", dataset=cifar, verbose=0)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                             "seconds", "images_per_s"]
    best_epoch = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))["epoch"]
    assert result.held_out == "val" and result.best["epoch"] == best_epoch
    assert result.best["val_acc"] == pytest.approx(rows[best_epoch - 1]["val_acc"], abs=1e-6)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best.keras"] == result.best and 0 <= result.best["test_acc"] <= 1
    described = json.loads((tmp_path / "run" / "config.json").read_text())
    assert described["data"]["val_images"] == 100 and described["data"]["train_images"] == 400
