"""Distillation (``edgel2 train --teacher FILE``): the loss, the batches the teacher sees, the
teachers edgel2 accepts, and a distilled run end to end."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from edgel2.augment import BatchAugmenter
from edgel2.cli import cli
from edgel2.config import TrainConfig
from edgel2.errors import OptionError
from edgel2.model import resnet20
from edgel2.runtime.shipped import shipped_model
from edgel2.train import train
from edgel2.train.batches import ShuffledBatches, one_hot
from edgel2.train.distill import DistillationLoss, Teacher

SHIPPED = shipped_model("resnet18-int8.onnx")


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_the_loss_is_weight_t2_kl_plus_the_rest_cross_entropy():
    rng = np.random.default_rng(0)
    labels = np.eye(4, dtype="float32")[[0, 1, 2, 3, 1]]
    teacher = rng.normal(size=(5, 4)).astype("float32") * 3
    student = rng.normal(size=(5, 4)).astype("float32")
    temperature, weight = 2.0, 0.7
    p = _softmax(teacher / temperature)
    kl = np.sum(p * (np.log(p) - np.log(_softmax(student / temperature))), axis=1)
    cross_entropy = -np.sum(labels * np.log(_softmax(student)), axis=1)
    by_hand = np.mean(weight * temperature ** 2 * kl + (1 - weight) * cross_entropy)
    loss = DistillationLoss(temperature, weight)(np.concatenate([labels, teacher], 1), student)
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)


def test_the_loss_keeps_label_smoothing_and_reloads_from_its_config():
    base = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    loss = DistillationLoss(4.0, 0.0, base)  # weight 0: the labels' loss alone
    labels, logits = np.eye(3, dtype="float32"), np.diag([2.0, 1.0, 3.0]).astype("float32")
    targets = np.concatenate([labels, np.zeros_like(labels)], 1)
    assert float(loss(targets, logits)) == pytest.approx(float(base(labels, logits)), rel=1e-6)
    again = DistillationLoss.from_config(loss.get_config())
    assert (again.temperature, again.weight, again.base.label_smoothing) == (4.0, 0.0, 0.1)


def test_training_on_the_distillation_term_moves_the_student_towards_the_teacher():
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    teacher = np.random.default_rng(1).normal(size=(16, 10)).astype("float32") * 4
    targets = np.concatenate([np.eye(10, dtype="float32")[np.arange(16) % 10], teacher], 1)
    student = resnet20(width=4, weight_l2=0, feature_l2=0)
    student.compile(optimizer=keras.optimizers.Adam(0.01), loss=DistillationLoss(2.0, 1.0))
    first = float(student.evaluate(images, targets, verbose=0))
    for _ in range(30):
        student.train_on_batch(images, targets)
    assert float(student.evaluate(images, targets, verbose=0)) < 0.5 * first


class Recording:
    """A teacher that records what it saw and answers with each image's mean pixel."""

    def __init__(self):
        self.seen = []

    def __call__(self, images):
        self.seen.append(images.copy())
        return np.repeat(images.reshape(len(images), -1).mean(1, keepdims=True), 10, 1)


def test_the_teacher_sees_the_augmented_batch_the_student_trains_on(cifar):
    x, y = cifar.x_train[:64], one_hot(cifar.y_train[:64], 10)
    teacher = Recording()
    batches = ShuffledBatches(x, y, 32, seed=3, epoch=2, teacher=teacher,
                              augment=BatchAugmenter(resnet20(width=4), cutout=8))
    images, targets = batches[1]
    plain_images, plain_targets = ShuffledBatches(x, y, 32, seed=3, epoch=2)[1]
    np.testing.assert_array_equal(teacher.seen[0], images)
    assert not np.array_equal(images, plain_images)  # cropped, flipped, cut out
    np.testing.assert_array_equal(targets[:, :10], plain_targets)
    np.testing.assert_allclose(targets[:, 10:], teacher(images))
    # a function of (seed, epoch, index): a resumed run gets the same batch
    again, _ = ShuffledBatches(x, y, 32, seed=3, epoch=2, teacher=Recording(),
                               augment=BatchAugmenter(resnet20(width=4), cutout=8))[1]
    np.testing.assert_array_equal(again, images)
    other, _ = batches[0]
    assert not np.array_equal(other, images)


def test_the_shipped_int8_onnx_teaches_through_edgel2s_runtime(cifar):
    teacher = Teacher(SHIPPED, 10, (32, 32, 3))
    logits = teacher(cifar.x_test[:300])
    assert logits.shape == (300, 10) and logits.dtype == np.float32
    assert np.mean(logits.argmax(1) == cifar.y_test[:300]) > 0.85


@pytest.mark.parametrize("classes, shape, message", [
    (3, (32, 32, 3), "the teacher resnet18-int8.onnx has 10 classes and the data 3: a teacher "
                     "must classify the same classes"),
    (10, (64, 64, 3), "the teacher resnet18-int8.onnx takes 32x32x3 images and the data is "
                      "64x64x3: pass `image_size` to match it"),
])
def test_a_teacher_for_other_classes_or_sizes_is_refused(classes, shape, message):
    with pytest.raises(OptionError) as raised:
        Teacher(SHIPPED, classes, shape)
    assert str(raised.value) == message


def test_a_teacher_of_other_classes_is_one_line_from_the_cli(tiny_folder, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--data", str(tiny_folder), "--teacher",
                                      str(SHIPPED), "--epochs", "1", "--width", "4",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.stderr == ("edgel2: error: the teacher resnet18-int8.onnx has 10 classes and "
                             "the data 3: a teacher must classify the same classes\n")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--distill-temperature", "0", "Invalid value for '--distill-temperature': 0.0 is not in "
                                   "the range x>0."),
    ("--distill-weight", "1.5", "Invalid value for '--distill-weight': 1.5 is not in the "
                                "range 0<=x<=1."),
])
def test_bad_distillation_options_are_one_line_and_exit_2(option, value, message):
    result = CliRunner().invoke(cli, ["train", option, value])
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_resnet20_distils_from_the_shipped_int8_onnx_from_the_cli(data_dir, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--data", str(data_dir), "--arch", "resnet20", "--width", "4",
        "--teacher", str(SHIPPED), "--distill-temperature", "2", "--epochs", "1",
        "--batch-size", "128", "--subset", "512", "--test-subset", "100", "--out", str(run),
        "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    hyper = config["config"]
    assert (hyper["arch"], hyper["teacher"], hyper["distill_temperature"],
            hyper["distill_weight"]) == ("resnet20", str(SHIPPED), 2.0, 0.9)
    from edgel2.checkpoint import load_model

    assert load_model(run / "model.keras").name == "resnet20_w4"


def test_a_keras_teacher_serves_as_well_as_a_file(small_model, cifar, tmp_path):
    config = TrainConfig(arch="resnet20", width=4, epochs=1, batch_size=128, subset=256,
                         test_subset=100, teacher=str(small_model))
    result = train(config, tmp_path / "run", dataset=cifar, verbose=0)
    assert np.isfinite(result.history[-1]["train_loss"])


@pytest.mark.slow
def test_the_comparison_script_trains_both_students_and_prints_their_top1(data_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OUT": str(tmp_path / "small"), "EDGEL2_DATA": str(data_dir),
           "STEP": "compare", "SEEDS": "3", "COMPARE_EPOCHS": "1", "COMPARE_SUBSET": "256",
           "DTYPE": "fp32", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           # the shipped ResNet-20 as the teacher: the same flow at a fourteenth of the
           # teacher's cost (the shipped ResNet-18 teacher has a test of its own above)
           "TEACHER": "models/resnet20/resnet20-int8.onnx"}
    ran = subprocess.run(["bash", str(root / "scripts" / "repro" / "small_model.sh")], env=env,
                         cwd=root, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    table = [line for line in ran.stdout.splitlines() if "fp32 top-1" in line]
    assert [line.split()[0] for line in table] == ["compare-alone-seed3", "compare-kd-seed3"]
    configs = {name: json.loads((tmp_path / "small" / name / "config.json").read_text())["config"]
               for name in ("compare-alone-seed3", "compare-kd-seed3")}
    assert configs["compare-kd-seed3"]["teacher"] == "models/resnet20/resnet20-int8.onnx"
    assert configs["compare-alone-seed3"]["teacher"] is None
    assert {c["arch"] for c in configs.values()} == {"resnet20"}
    assert {c["seed"] for c in configs.values()} == {3}
    # a second call finds both finished and trains nothing
    again = subprocess.run(["bash", str(root / "scripts" / "repro" / "small_model.sh")],
                           env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count(": finished") == 2
