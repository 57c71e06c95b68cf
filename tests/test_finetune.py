"""Fine-tuning: the shipped int8 ONNX rebuilt as the Keras network it came from, loaded into
a network for new classes and image sizes, frozen where asked; bad input is one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgel2.cli import cli
from edgel2.config import PRETRAINED_WIDTH
from edgel2.runtime.shipped import shipped_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rebuilt():
    from edgel2.pretrained import network_from_onnx

    return network_from_onnx(shipped_model("resnet18-int8.onnx"))


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_the_network_rebuilt_from_the_shipped_int8_onnx_computes_what_the_file_does(rebuilt,
                                                                                     cifar):
    import onnxruntime

    images = cifar.x_test[:200]
    session = onnxruntime.InferenceSession(str(shipped_model("resnet18-int8.onnx")))
    expected = session.run(None, {"images": images})[0]
    logits = rebuilt.predict(images, batch_size=100, verbose=0)
    # the file quantizes activations too; the rebuilt network keeps its int8 weights only
    assert np.mean(logits.argmax(1) == expected.argmax(1)) >= 0.98
    assert np.abs(logits - expected).mean() < 0.05
    assert int(rebuilt.get_layer("stem_conv").kernel.shape[-1]) == PRETRAINED_WIDTH


@pytest.mark.parametrize("name", ["model-fp32.onnx", "model-int8.onnx"])
def test_any_onnx_edgel2_exported_rebuilds_into_its_keras_network(name, exported, small_model,
                                                                    cifar):
    from edgel2.checkpoint import load_model
    from edgel2.pretrained import network_from_onnx

    images = cifar.x_test[:100]
    expected = load_model(small_model).predict(images, verbose=0)
    logits = network_from_onnx(exported[name]).predict(images, verbose=0)
    if name == "model-fp32.onnx":  # only float rounding apart
        np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())
    else:
        assert np.mean(logits.argmax(1) == expected.argmax(1)) >= 0.9


def test_recalibrated_batch_norms_keep_inference_and_let_training_mode_agree(rebuilt, cifar):
    import keras

    from edgel2.pretrained import recalibrate_batchnorm

    network = keras.models.clone_model(rebuilt)
    network.set_weights(rebuilt.get_weights())
    images = cifar.x_train[:64]
    before = np.asarray(network(images, training=False))
    folded_training = np.asarray(network(images, training=True))
    network.set_weights(rebuilt.get_weights())  # a training-mode call moves the BN statistics
    recalibrate_batchnorm(network, images, batch_size=32)
    np.testing.assert_allclose(np.asarray(network(images, training=False)), before,
                               atol=1e-3 * np.abs(before).max())
    # on the batch it was measured on, training mode now computes the inference function
    training = np.asarray(network(images, training=True))
    assert np.abs(training - before).max() < 0.02 * np.abs(before).max()
    assert np.abs(folded_training - before).max() > 0.1 * np.abs(before).max()  # it did not


def test_fine_tuning_an_edgel2_model_on_a_folder_of_new_classes_end_to_end(small_model,
                                                                          tiny_folder, tmp_path):
    """--weights FILE at width 4, a 3-class folder of 8x8 images, the stem and 2 stages
    frozen; the result exports with the folder's class names in its metadata."""
    from edgel2.checkpoint import load_model
    from edgel2.data import load_dataset
    from edgel2.export import export_model
    from edgel2.runtime import read_metadata

    run = tmp_path / "run"
    result = _run("train", "--data", tiny_folder, "--weights", small_model, "--width", "4",
                  "--freeze", "2", "--epochs", "2", "--out", run)
    assert result.exit_code == 0, result.output
    source, tuned = load_model(small_model), load_model(run / "model.keras")
    assert tuned.output.shape[-1] == 3 and tuned.input.shape[1:] == (8, 8, 3)
    for layer in tuned.layers:
        same = [np.array_equal(a, b) for a, b in
                zip(layer.get_weights(), source.get_layer(layer.name).get_weights())]
        if layer.name.startswith(("stem_", "stage1_", "stage2_")):
            assert all(same), f"{layer.name} was frozen but changed"
        elif layer.name.startswith("stage4_block2_2_conv"):
            assert not all(same), "an unfrozen layer did not train"
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["weights"], config["freeze"], config["lr"], config["warmup"],
            config["batch_size"], config["color_jitter"], config["crop_scale"]) == (
        str(small_model), 2, 0.04, 0.1, 32, 0.2, 0.6)  # fine-tuning defaults
    report = export_model(run / "model.keras", ["onnx"], ["fp32"],
                          dataset=load_dataset(tiny_folder), check=0, calibrate=False,
                          out=tmp_path / "export")
    assert report["rows"][0]["status"] == "ok"
    assert read_metadata(tmp_path / "export" / "run-fp32.onnx")["class_names"] == \
        ["ant", "bee", "cat"]


def test_pretrained_starts_from_the_shipped_network_at_any_image_size(rebuilt, tiny_folder,
                                                                      tmp_path):
    """--pretrained on 8x8 images with the whole backbone frozen: every backbone weight is
    the shipped network's (batch norms recalibrated on the training images), the classifier
    is new for 3 classes."""
    from edgel2.checkpoint import load_model

    result = _run("train", "--data", tiny_folder, "--pretrained", "--freeze", "4",
                  "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    tuned = load_model(tmp_path / "run" / "model.keras")
    for name in ("stem_conv", "stage3_block1_proj_conv", "stage4_block2_2_conv"):
        np.testing.assert_array_equal(tuned.get_layer(name).get_weights()[0],
                                      rebuilt.get_layer(name).get_weights()[0])
    bn = tuned.get_layer("stage2_block1_1_bn").get_weights()
    assert not np.allclose(bn[3], 1.0 - 1e-5)  # statistics measured, not the folded identity
    assert tuned.get_layer("logits").get_weights()[0].shape == (8 * PRETRAINED_WIDTH, 3)


def test_pretrained_resnet20_starts_from_the_shipped_small_network(tiny_folder, tmp_path):
    from edgel2.checkpoint import load_model
    from edgel2.pretrained import network_from_onnx, pretrained_file

    assert pretrained_file("resnet20").relative_to(pretrained_file("resnet18").parent) == \
        Path("resnet20/resnet20-int8.onnx")
    result = _run("train", "--data", tiny_folder, "--arch", "resnet20", "--pretrained",
                  "--freeze", "3", "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    tuned = load_model(tmp_path / "run" / "model.keras")
    shipped = network_from_onnx(pretrained_file("resnet20"))
    for name in ("stem_conv", "stage2_block1_proj_conv", "stage3_block3_2_conv"):
        np.testing.assert_array_equal(tuned.get_layer(name).get_weights()[0],
                                      shipped.get_layer(name).get_weights()[0])
    assert tuned.get_layer("logits").get_weights()[0].shape == (64, 3)
    assert ("weights: every layer but the classifier from the shipped resnet20; the classifier "
            "is new for 3 classes") in result.output


@pytest.mark.parametrize("order", ["the weights' own", "another"])
def test_weights_keep_their_classifier_only_for_their_own_classes_in_their_order(order):
    """Going on from a model on the same classes starts from the model as it was, not from a
    new classifier; any other list of classes, even the same names in another order, gets a
    new one."""
    from edgel2.model import build_network
    from edgel2.pretrained import (
        PRETRAINED,
        network_from_onnx,
        pretrained_file,
        start_from,
        weights_class_names,
    )

    names = weights_class_names(PRETRAINED, "resnet20")
    assert names is not None and len(names) == 10
    network = build_network("resnet20", 10, 16)
    fresh = network.get_layer("logits").get_weights()[0]
    kept = start_from(network, PRETRAINED, class_names=names if order == "the weights' own"
                      else names[::-1])
    shipped = network_from_onnx(pretrained_file("resnet20")).get_layer("logits").get_weights()[0]
    head = network.get_layer("logits").get_weights()[0]
    assert kept == (order == "the weights' own")
    np.testing.assert_array_equal(head, shipped if kept else fresh)


@pytest.mark.parametrize("args, message", [
    (["--pretrained", "--width", "16"],
     "the shipped pretrained resnet18 is width 64: pass --width 64 (got 16)"),
    (["--arch", "resnet20", "--pretrained", "--freeze", "4"],
     "--freeze takes 0 to 3 stages, got 4"),
    (["--freeze", "2"], "--freeze keeps pretrained stages: it needs --weights (or --pretrained)"),
    (["--pretrained", "--freeze", "5"],
     "Invalid value for '--freeze': 5 is not in the range 0<=x<=4."),
])
def test_bad_fine_tuning_options_are_one_line_and_exit_2(args, message):
    result = _run("train", *args)
    assert result.exit_code == 2
    assert result.stderr == f"edgel2: error: {message}\n"


def test_pretrained_and_weights_together_are_refused(tmp_path):
    weights = tmp_path / "w.keras"
    weights.write_bytes(b"")
    result = _run("train", "--pretrained", "--weights", weights)
    assert result.exit_code == 2
    assert result.stderr == ("edgel2: error: --pretrained and --weights each name the weights "
                             "to start from: pass one\n")


def test_weights_of_another_architecture_are_one_line_naming_it(small_resnet20, tiny_folder,
                                                               tmp_path):
    result = _run("train", "--data", tiny_folder, "--weights", small_resnet20["r20-int8.onnx"],
                  "--width", "4", "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert result.stderr == (f"edgel2: error: {small_resnet20['r20-int8.onnx']} is a resnet20 "
                             "and this run is a resnet18: pass --arch resnet20\n")


def test_a_resnet20_onnx_rebuilds_into_its_keras_network(small_resnet20, cifar):
    from edgel2.checkpoint import load_model
    from edgel2.pretrained import network_from_onnx

    images = cifar.x_test[:100]
    expected = load_model(small_resnet20["model"]).predict(images, verbose=0)
    rebuilt = network_from_onnx(small_resnet20["r20-int8.onnx"])
    assert rebuilt.name == "resnet20_w4"
    # within the int8 weights' rounding: the mean error a few % of the logits' spread, where a
    # layer loaded into the wrong place would be as large as the spread (top-1 agreement says
    # little here: a network trained for one epoch on 512 images nearly ties its classes)
    logits = rebuilt.predict(images, verbose=0)
    assert np.abs(logits - expected).mean() < 0.05 * expected.std()


def test_weights_that_are_not_an_edgel2_resnet18_are_one_line(tiny_folder, tmp_path):
    import keras

    other = tmp_path / "other.keras"
    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(other)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for weights, message in [
            (other, f"{other} is not an edgel2 network (its layers are those of none of "
                    "resnet18, resnet20)"),
            (notes, f"--weights takes an edgel2 .keras or .onnx file, got {notes}")]:
        result = _run("train", "--data", tiny_folder, "--weights", weights, "--width", "4",
                      "--epochs", "1", "--out", tmp_path / weights.stem)
        assert result.exit_code == 1, result.output
        assert result.stderr == f"edgel2: error: {message}\n"


def test_a_folder_with_one_class_is_one_line(tmp_path):
    from conftest import write_images

    write_images(tmp_path / "data" / "train" / "cat", 4)
    write_images(tmp_path / "data" / "test" / "cat", 2)
    result = _run("train", "--data", tmp_path / "data", "--pretrained", "--epochs", "1",
                  "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr == (f"edgel2: error: {tmp_path / 'data'} has 1 class; a classifier "
                             "needs at least 2\n")


def test_the_real_image_sets_are_written_with_a_seeded_class_balanced_split(tmp_path):
    """scripts/tools/make_finetune_data.py on scikit-image's LFW subset (100 faces, 100 not)."""
    import subprocess
    import sys

    for out in ("a", "b"):
        proc = subprocess.run([sys.executable, "scripts/tools/make_finetune_data.py", tmp_path / out,
                               "--sets", "lfw"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == f"{tmp_path / 'b' / 'lfw'}: 160 train, 40 test images\n"
    counts = {(part, label): len(list((tmp_path / "a" / "lfw" / part / label).glob("*.png")))
              for part in ("train", "test") for label in ("face", "not_face")}
    assert counts == {("train", "face"): 80, ("train", "not_face"): 80,
                      ("test", "face"): 20, ("test", "not_face"): 20}
    first, second = (sorted(p.read_bytes() for p in (tmp_path / run / "lfw" / "test").rglob("*.png"))
                     for run in ("a", "b"))
    assert first == second  # the same seed, the same split


def test_a_model_fine_tuned_at_another_image_size_evaluates_and_exports_on_its_folder(
        small_model, tiny_folder, tmp_path):
    """Trained with --image-size 16 on 8x8 images: eval and export load the folder at the
    model's input size by themselves (it used to be a traceback in export)."""
    run = tmp_path / "run"
    trained = _run("train", "--data", tiny_folder, "--weights", small_model, "--width", "4",
                   "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--out", run)
    assert trained.exit_code == 0, trained.output
    evaluated = _run("eval", run / "model.keras", "--data", tiny_folder, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 6
    exported = _run("export", run / "model.keras", "--data", tiny_folder, "--check", "all",
                    "--no-calibrate")
    assert exported.exit_code == 0, exported.output
    evaluated = _run("eval", run / "export" / "run-fp32.onnx", "--data", tiny_folder,
                     "--engine", "onnxruntime", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["images"] == 6
    benchmarked = _run("benchmark", run / "export", "--data", tiny_folder, "--format", "onnx",
                       "--batch-sizes", "1", "--seconds", "0.05", "--repeat", "1",
                       "--check", "all", "--out", tmp_path / "bench.json")
    assert benchmarked.exit_code == 0, benchmarked.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    (fp32,) = [r for r in rows if (r["format"], r["precision"]) == ("onnx", "fp32")]
    assert fp32["status"] == "ok", fp32
