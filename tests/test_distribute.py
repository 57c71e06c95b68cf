"""Training over several devices and processes (Keras' DataParallel on JAX) is the same run as
on one device: the same loss curve for the same global batch, global batch-norm statistics,
exact held-out figures when the images do not split evenly, the same resume, and two
processes on 127.0.0.1 that train together and agree.

Devices are simulated on the CPU (``XLA_FLAGS=--xla_force_host_platform_device_count=2``),
which must be set before JAX starts: every check runs in a child process on the JAX backend.
The data are 512 training and 100 test CIFAR-10-JPEG images, saved by the test for the child.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from edgel2.config import TrainConfig
from edgel2.train.batches import HeldOutBatches, ShuffledBatches

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CONFIG = TrainConfig(width=4, epochs=3, batch_size=64, lr=0.01, warmup=0.3, label_smoothing=0.1,
                     cutout=8, augment=True)
# One step on 2 devices is one step on 1 device up to the order of float32 sums (measured:
# 3e-7 relative over the first 5 steps, augmentation included; the 6th drifts to 3e-5, see
# CURVE_RTOL).
STEP_RTOL = 1e-5
# Over a whole run those differences grow, as in any small net with batch norm: on ONE
# device, the same 24 steps with each batch's rows in another order (the same maths) drift
# apart by 1e-4 at step 8 and 1e-2 by step 24 (width 4, lr 0.002 to 0.05, measured here).
# So 3 epochs on 2 devices match 1 device to a few percent (measured: train loss 0.6 %,
# held-out loss 2.6 %), and the steps themselves are pinned by STEP_RTOL.
CURVE_RTOL = 0.05

# Imports what a child needs and loads the saved images as a Dataset.
PRELUDE = """
import json, sys
from pathlib import Path
import numpy as np
from edgel2.backend import use_backend
use_backend("jax")
import keras
from edgel2.config import TrainConfig
from edgel2.train.batches import HeldOutBatches, ShuffledBatches
from edgel2.data import Dataset
from edgel2.train import train
from edgel2.train.distribute import place
saved = np.load(sys.argv[1])
ds = Dataset(saved["x_train"], saved["y_train"], saved["x_test"], saved["y_test"],
             [str(c) for c in range(10)], name="CIFAR-10-JPEG (512 images)")
config = TrainConfig(**json.loads(sys.argv[2]))
out = Path(sys.argv[3])

def trainer_on(devices, steps_per_epoch=8):  # the compiled training model on `devices`
    from edgel2.train import build_trainer
    if devices > 1:
        place(str(devices))
    keras.utils.set_random_seed(0)
    return build_trainer(config, 10, (32, 32, 3), steps_per_epoch)[0]
"""


def run_child(code: str, *args: str, devices: int = 1, timeout: float = 600,
              extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-c", PRELUDE + code, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen, timeout: float = 600) -> str:
    stdout, stderr = child.communicate(timeout=timeout)
    assert child.returncode == 0, stderr[-3000:]
    return stdout


@pytest.fixture(scope="module")
def images(cifar, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "images.npz"
    rng = np.random.default_rng(0)
    train_rows, test_rows = rng.permutation(len(cifar.y_train))[:512], np.arange(100)
    np.savez(path, x_train=cifar.x_train[train_rows], y_train=cifar.y_train[train_rows],
             x_test=cifar.x_test[test_rows], y_test=cifar.y_test[test_rows])
    return path


def losses(rows: list[dict]) -> np.ndarray:
    return np.array([[r["train_loss"], r["test_loss"]] for r in rows])


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory) -> dict:
    """The same config trained on 1 device and on 2; and on 2 devices stopped after its first
    epoch's checkpoint, then resumed."""
    out = tmp_path_factory.mktemp("runs")
    code = """
from edgel2.train import callbacks
result = {}
result["one"] = train(config, out / "one", dataset=ds, verbose=0).history
result["two"] = train(config, out / "two", dataset=ds, verbose=0, placement=place("2")).history

plot = callbacks.CurvesPlot.on_epoch_end
def stop_after_first_epoch(self, epoch, logs=None):
    plot(self, epoch, logs)
    raise KeyboardInterrupt
callbacks.CurvesPlot.on_epoch_end = stop_after_first_epoch
try:
    train(config, out / "resumed", dataset=ds, verbose=0, placement=place("2"))
except KeyboardInterrupt:
    pass
callbacks.CurvesPlot.on_epoch_end = plot
result["resumed"] = train(config, resume=out / "resumed", dataset=ds, verbose=0,
                          placement=place("2")).history
print(json.dumps(result))
"""
    result = json.loads(finish(run_child(code, images, json.dumps(asdict(CONFIG)), out,
                                         devices=2)).splitlines()[-1])
    return {**result, "dir": out}


def test_two_devices_train_the_loss_curve_of_one_device_with_the_same_global_batch(runs):
    assert [r["epoch"] for r in runs["two"]] == [1, 2, 3]
    np.testing.assert_allclose(losses(runs["two"]), losses(runs["one"]), rtol=CURVE_RTOL)
    config = json.loads((runs["dir"] / "two" / "config.json").read_text())
    assert config["distribution"] == {"devices": 2, "processes": 1,
                                      "strategy": "keras.distribution.DataParallel"}
    assert json.loads((runs["dir"] / "one" / "config.json").read_text())["distribution"] == \
        {"devices": 1, "processes": 1, "strategy": None}


def test_each_step_on_two_devices_is_the_step_on_one_device(images):
    """The same trainer (augmentation, cutout and L2 terms included) fed the same 64-image
    batches: one device, then the batch split over 2."""
    code = """
from edgel2.train.batches import ShuffledBatches, one_hot

def step_losses(devices):
    trainer = trainer_on(devices)
    batches = ShuffledBatches(ds.x_train, one_hot(ds.y_train, 10), 64, seed=0)
    return [float(trainer.train_on_batch(*batches[i])[0]) for i in range(5)]

print(json.dumps({"one": step_losses(1), "two": step_losses(2)}))
"""
    result = json.loads(finish(run_child(code, images, json.dumps(asdict(CONFIG)), ".",
                                         devices=2)).splitlines()[-1])
    assert len(set(result["one"])) == 5  # the steps did change the model
    np.testing.assert_allclose(result["two"], result["one"], rtol=STEP_RTOL)


def test_process_shards_put_together_in_order_are_the_one_process_batch():
    x = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    y = np.eye(2, dtype=np.float32)[np.arange(40) % 2]
    whole = ShuffledBatches(x, y, 8, seed=3, epoch=2)
    shards = [ShuffledBatches(x, y, 8, seed=3, epoch=2, shard=(p, 2)) for p in (0, 1)]
    for i in range(len(whole)):
        np.testing.assert_array_equal(np.concatenate([s[i][0] for s in shards]), whole[i][0])
        np.testing.assert_array_equal(np.concatenate([s[i][1] for s in shards]), whole[i][1])
    held = [HeldOutBatches(x[:13], y[:13], 8, devices=2, shard=(p, 2)) for p in (0, 1)]
    rows = np.concatenate([h[i][0].ravel() for i in range(len(held[0])) for h in held])
    weights = np.concatenate([h[i][2] for i in range(len(held[0])) for h in held])
    assert sorted(rows[weights > 0].tolist()) == list(range(13))  # each image once
    assert weights.sum() == pytest.approx(len(rows))  # Keras' row-count weighting undone


def test_a_distributed_run_resumes_to_the_same_result(runs):
    run, reference = runs["dir"] / "resumed", runs["dir"] / "two"
    assert (run / "metrics.csv").read_text().splitlines()[0] == \
        (reference / "metrics.csv").read_text().splitlines()[0]
    np.testing.assert_array_equal(losses(runs["resumed"]), losses(runs["two"]))
    assert json.loads((run / "summary.json").read_text()) == \
        json.loads((reference / "summary.json").read_text())


def test_batch_norm_statistics_are_those_of_the_global_batch(images):
    """One training step on a batch whose two halves (one per device) differ: the moving
    variance is the whole batch's, as on one device, and not the mean of the halves'."""
    code = """
from edgel2.model import resnet18
import keras.distribution

def first_bn_variance(batch, distributed):
    keras.distribution.set_distribution(keras.distribution.DataParallel() if distributed else None)
    keras.utils.set_random_seed(0)
    model = resnet18(10, 4, input_shape=(32, 32, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.train_on_batch(batch, np.zeros((len(batch), 10), np.float32))
    bn = next(l for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    return keras.ops.convert_to_numpy(bn.moving_variance).tolist()

dark, bright = ds.x_train[:8] // 4, 192 + ds.x_train[8:16] // 4
batch = np.concatenate([dark, bright])
print(json.dumps({"one": first_bn_variance(batch, False),
                  "two": first_bn_variance(batch, True),
                  "halves": np.mean([first_bn_variance(dark, False),
                                     first_bn_variance(bright, False)], axis=0).tolist()}))
"""
    result = json.loads(finish(run_child(code, images, "{}", ".", devices=2)).splitlines()[-1])
    one, two, halves = (np.array(result[k]) for k in ("one", "two", "halves"))
    np.testing.assert_allclose(two, one, rtol=1e-4)
    # per-device statistics would miss the variance between the halves
    assert np.all(np.abs(halves - one) > 10 * np.abs(two - one) + 1e-3)


def test_held_out_figures_are_exact_when_the_images_do_not_split_over_the_devices(images):
    """101 test images on 2 devices: the last batch is padded, and the padding weighs 0."""
    code = """
from edgel2.train.batches import HeldOutBatches, one_hot

def held_out(devices):
    trainer = trainer_on(devices)
    x, y = ds.x_train[:101], one_hot(ds.y_train[:101], 10)
    return trainer.evaluate(HeldOutBatches(x, y, 64, devices), verbose=0, return_dict=True)

print(json.dumps({"one": held_out(1), "two": held_out(2)}))
"""
    config = json.dumps(asdict(TrainConfig(width=4, feature_l2=0.0)))
    result = json.loads(finish(run_child(code, images, config, ".", devices=2)).splitlines()[-1])
    assert result["two"]["acc"] == pytest.approx(result["one"]["acc"], abs=1e-7)
    assert result["two"]["loss"] == pytest.approx(result["one"]["loss"], rel=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_train_together_and_agree(images, runs, tmp_path):
    """Two processes of one device each (JAX's CPU collectives over Gloo; process 0 joins by
    options, process 1 by Keras' KERAS_DISTRIBUTION_* variables) train the 2-device run: both
    see the same figures, they are those of 2 devices in one process, and only process 0
    writes a run directory."""
    code = """
if len(sys.argv) > 4:  # process 0 is told by options
    placement = place("1", num_processes=2, process_id=int(sys.argv[4]), coordinator=sys.argv[5])
else:  # process 1 by Keras' environment variables
    placement = place("1")
result = train(config, out, dataset=ds, verbose=0, placement=placement)
print(json.dumps({"placement": [placement.devices, placement.process_id, placement.num_processes],
                  "history": result.history}))
"""
    coordinator = f"127.0.0.1:{free_port()}"
    config = json.dumps(asdict(CONFIG))
    keras_environment = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": coordinator,
                         "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                         "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    children = [run_child(code, images, config, tmp_path / "run0", 0, coordinator),
                run_child(code, images, config, tmp_path / "run1", extra_env=keras_environment)]
    results = [json.loads(finish(child).splitlines()[-1]) for child in children]
    assert [r["placement"] for r in results] == [[2, 0, 2], [2, 1, 2]]
    first, second = (losses(r["history"]) for r in results)
    # process 0's figures come back from metrics.csv, which keeps 6 significant digits
    np.testing.assert_allclose(second, first, rtol=1e-5)
    # the same SPMD program as 2 devices in one process (measured: equal to 6 digits)
    np.testing.assert_allclose(first, losses(runs["two"]), rtol=1e-5)
    assert (tmp_path / "run0" / "model.keras").is_file()
    assert not (tmp_path / "run1").exists()


def test_the_cli_trains_in_two_processes_into_one_run_directory(tiny_folder, tmp_path):
    """`edgel2 train` as the README shows it, twice on one machine with a shared --out."""
    coordinator, out = f"127.0.0.1:{free_port()}", tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": ""}
    children = [subprocess.Popen(
        [sys.executable, "-m", "edgel2", "train", "--data", str(tiny_folder), "--width", "2",
         "--epochs", "1", "--batch-size", "4", "--quiet", "--out", str(out), "--devices", "1",
         "--num-processes", "2", "--process-id", str(p), "--coordinator", coordinator],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    outputs = [finish(child, timeout=300) for child in children]
    assert outputs[1].strip() == f"process 1 of 2: done; process 0 wrote the run directory {out}"
    assert "model.keras: test top-1" in outputs[0]
    assert json.loads((out / "config.json").read_text())["distribution"] == \
        {"devices": 2, "processes": 2, "strategy": "keras.distribution.DataParallel"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "metrics.csv", "curves.png", "last.keras", "model.keras", "summary.json"])


def cli(*args: str, devices: int = 1, backend: str = "jax") -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, "-m", "edgel2", "train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, devices, backend, message", [
    (["--devices", "3"], 2, "jax", "edgel2: error: --devices 3: this process sees 2 CPU devices"),
    (["--devices", "2", "--batch-size", "63"], 2, "jax",
     "edgel2: error: --batch-size 63 does not split over 2 devices: pass a multiple of 2 "
     "(e.g. 62 or 64)"),
    (["--devices", "2"], 2, "tensorflow",
     "edgel2: error: training on several devices or processes needs the JAX backend"),
    (["--num-processes", "2"], 1, "jax",
     "edgel2: error: --num-processes needs --process-id and --coordinator HOST:PORT"),
    (["--process-id", "1"], 1, "jax",
     "edgel2: error: --process-id and --coordinator go with --num-processes N (N > 1)"),
    (["--devices", "none"], 1, "jax", "edgel2: error: Invalid value for '--devices': takes "
     "'all' or a count >= 1, got 'none'"),
])
def test_impossible_placements_are_one_line_and_exit_2(args, devices, backend, message, tmp_path):
    result = cli(*args, "--epochs", "1", "--subset", "64", "--out", str(tmp_path / "run"),
                 devices=devices, backend=backend)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "run").exists()
