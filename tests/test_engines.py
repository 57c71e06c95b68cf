"""Engines: `auto` picks by a stated rule and falls back when OpenVINO is missing or cannot
compile the file; an engine asked for by name never falls back; every engine gives the same
answers on the same images (f32 to float rounding, int8 within the stated agreement)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgel2.cli import cli
from edgel2.data import balanced_subset
from edgel2.errors import EngineError, ModelError, OptionError
from edgel2.runtime import Classifier, shipped_model
from edgel2.runtime.auto import engine_candidates, open_engine

openvino = pytest.importorskip("openvino")


def test_auto_takes_litert_for_tflite_and_openvino_then_onnxruntime_for_onnx_on_x86(monkeypatch):
    import onnxruntime

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert engine_candidates("tflite") == ("litert",)
    assert engine_candidates("onnx") == ("openvino", "onnxruntime")
    assert engine_candidates("onnx", "onnxruntime") == ("onnxruntime",)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert engine_candidates("onnx") == ("onnxruntime",)  # a GPU: ONNX Runtime's providers
    assert engine_candidates("onnx", providers="cpu") == ("openvino", "onnxruntime")
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert engine_candidates("onnx", providers="cpu") == ("onnxruntime",)


def test_an_engine_that_cannot_run_the_format_or_an_unknown_one_is_refused():
    with pytest.raises(EngineError, match="openvino runs ONNX files, not TFLITE"):
        engine_candidates("tflite", "openvino")
    with pytest.raises(OptionError, match="unknown engine 'tensorrt'"):
        engine_candidates("onnx", "tensorrt")


def test_auto_falls_back_when_openvino_cannot_compile_and_a_named_engine_does_not(
        tiny_onnx, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Cannot compile: unsupported operation")

    monkeypatch.setattr(openvino.Core, "compile_model", refuse)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    engine = open_engine(tiny_onnx)
    assert engine.name == "onnxruntime"
    assert engine.fallback == (f"openvino: cannot load {tiny_onnx} with OpenVINO: Cannot compile: "
                               "unsupported operation")
    with pytest.raises(ModelError, match="with OpenVINO: Cannot compile"):
        open_engine(tiny_onnx, engine="openvino")


def _without_openvino(tmp_path) -> dict:
    blocker = tmp_path / "blocked" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'openvino'\", name='openvino')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.getcwd()])}


def test_without_openvino_auto_uses_onnxruntime_and_a_named_openvino_says_what_to_install(
        tiny_onnx, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(image)
    env = _without_openvino(tmp_path)
    infer = [sys.executable, "-m", "edgel2", "infer", str(image), "--model", str(tiny_onnx)]
    auto = subprocess.run(infer + ["-v"], env=env, capture_output=True, text=True)
    assert auto.returncode == 0, auto.stderr
    assert "edgel2: auto skipped openvino: OpenVINO is not installed: pip install " \
           '"edgel2[openvino]"' in auto.stderr
    assert auto.stderr.rstrip().endswith("tiny.onnx on onnxruntime: CPUExecutionProvider")
    named = subprocess.run(infer + ["--engine", "openvino"], env=env, capture_output=True, text=True)
    assert (named.returncode, named.stderr) == (
        1, 'edgel2: error: OpenVINO is not installed: pip install "edgel2[openvino]"\n')


def test_infer_says_which_engine_ran(tiny_onnx, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(image)
    for engine, shown in (("openvino", ": tiny.onnx on openvino: OpenVINO CPU"),
                          ("onnxruntime", ": tiny.onnx on onnxruntime: CPUExecutionProvider")):
        result = CliRunner().invoke(cli, ["infer", str(image), "--model", str(tiny_onnx),
                                          "--engine", engine])
        assert result.exit_code == 0 and result.stderr.rstrip().endswith(shown)


def test_openvino_f32_matches_onnxruntime_to_float_rounding(tiny_onnx):
    images = np.random.default_rng(0).integers(1, 256, (16, 8, 8, 3), dtype=np.uint8)
    reference = open_engine(tiny_onnx, engine="onnxruntime").run(images)
    np.testing.assert_allclose(open_engine(tiny_onnx, engine="openvino").run(images), reference,
                               rtol=1e-5, atol=1e-6)


def test_the_exported_fp32_file_through_openvino_matches_keras(exported, small_model, cifar):
    from edgel2.checkpoint import as_float32, load_model
    from edgel2.export.check import FP32_TOLERANCE

    images = cifar.x_test[:64]
    keras_logits = np.asarray(as_float32(load_model(small_model)).predict_on_batch(images))
    logits = open_engine(exported["model-fp32.onnx"], engine="openvino").run(images)
    scale = np.abs(keras_logits).max()
    assert np.abs(logits - keras_logits).max() <= FP32_TOLERANCE * scale


def test_the_shipped_int8_model_agrees_across_engines_and_streams(cifar):
    images, _ = balanced_subset(cifar.x_test, cifar.y_test, 500, seed=3)
    onnxruntime = Classifier(shipped_model(), engine="onnxruntime").predict(images)
    openvino = Classifier(shipped_model(), engine="openvino")
    batched = openvino.predict(images)
    streamed = [r.prediction for r in openvino.predict_files(list(images))]  # THROUGHPUT queue
    assert streamed == batched
    agreement = np.mean([a[0][0] == b[0][0] for a, b in zip(onnxruntime, batched)])
    assert agreement >= 0.99  # 99.5 % over the full test split (README), 500 images here


def test_a_gpu_provider_with_a_tflite_model_is_said_not_ignored(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(image)
    result = CliRunner().invoke(cli, ["infer", str(image), "--model",
                                      str(shipped_model("resnet18-int8.tflite")), "--provider", "cuda"])
    assert result.exit_code == 0
    assert result.stderr.splitlines()[0] == ("edgel2: warning: resnet18-int8.tflite: LiteRT runs on "
                                             "the CPU here, not cuda (providers are for ONNX Runtime)")
