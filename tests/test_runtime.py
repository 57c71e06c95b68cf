"""edgel2.runtime and edgel2 infer: one image policy for every input, bad files reported per
file, the same predictions however they are batched, and no TensorFlow anywhere."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgel2.cli import cli
from edgel2.runtime import (
    Batcher,
    Classifier,
    EngineError,
    ImageError,
    ModelError,
    ProviderFallbackWarning,
    load_image,
    resolve_providers,
)

pytestmark = pytest.mark.slow
RNG = np.random.default_rng(0)
PICTURE = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # H=30, W=40: needs resizing
GREY = RNG.integers(0, 256, (30, 40), dtype=np.uint8)


@pytest.fixture(scope="module")
def classifier(exported):
    return Classifier(exported["model-int8.onnx"])


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _rotated_with_exif() -> bytes:
    """PICTURE stored turned 90 degrees, with EXIF orientation 6 saying how to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    return _encode(Image.fromarray(PICTURE).transpose(Image.Transpose.ROTATE_90), exif=exif)


def _animated() -> bytes:
    frames = [Image.fromarray(PICTURE), Image.fromarray(255 - PICTURE)]
    return _encode(frames[0], save_all=True, append_images=frames[1:], duration=100)


def _with_alpha(mode: str) -> Image.Image:
    base = Image.fromarray(PICTURE if mode == "RGBA" else GREY)
    base.putalpha(255)
    return base


# Each case: (the image in some mode, the same picture as plain RGB).
RGB_EQUIVALENTS = {
    "RGBA opaque": (lambda: _with_alpha("RGBA"), lambda: PICTURE),
    "LA opaque": (lambda: _with_alpha("LA"), lambda: np.stack([GREY] * 3, -1)),
    "L": (lambda: Image.fromarray(GREY), lambda: np.stack([GREY] * 3, -1)),
    "P": (lambda: Image.fromarray(PICTURE).quantize(64),
          lambda: np.asarray(Image.fromarray(PICTURE).quantize(64).convert("RGB"))),
    "16-bit": (lambda: Image.fromarray(GREY.astype(np.uint16) << 8),
               lambda: np.stack([GREY] * 3, -1)),
    "CMYK": (lambda: Image.fromarray(PICTURE).convert("CMYK"), lambda: PICTURE),
    "EXIF-rotated": (_rotated_with_exif, lambda: PICTURE),
    "animated (first frame)": (_animated, lambda: PICTURE),
    "RGBA transparent over white": (
        lambda: Image.fromarray(np.dstack([PICTURE, np.where(GREY > 127, 255, 0).astype(np.uint8)])),
        lambda: np.where((GREY > 127)[..., None], PICTURE, 255).astype(np.uint8)),
}


@pytest.mark.parametrize("case", list(RGB_EQUIVALENTS))
def test_every_image_mode_becomes_the_same_input_as_plain_rgb(case, classifier):
    make, reference = RGB_EQUIVALENTS[case]
    image, expected = make(), reference()
    np.testing.assert_array_equal(load_image(image, (32, 32)),
                                  load_image(Image.fromarray(expected), (32, 32)))
    assert classifier.predict(image, top_k=3) == classifier.predict(expected, top_k=3)


@pytest.mark.parametrize("size", [(40, 90), (90, 40), (20, 30), (640, 427)])
def test_resize_is_pillows_bilinear_width_pass_then_height_pass_whatever_the_shape(size):
    """The order is fixed (Pillow 13 itself runs the height first for tall images, and each
    pass rounds), so the pixels do not depend on Pillow's version, and ports can repeat it."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)
    image = Image.fromarray(pixels)
    wide = image.resize((32, size[1]), Image.Resampling.BILINEAR)
    expected = np.asarray(wide.resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(load_image(image, (32, 32)), expected)


def test_paths_bytes_pil_arrays_and_batches_are_all_accepted(classifier, tmp_path):
    path = tmp_path / "picture.png"
    Image.fromarray(PICTURE).save(path)
    expected = classifier.predict(PICTURE)
    for form in (str(path), path, path.read_bytes(), Image.fromarray(PICTURE)):
        assert classifier.predict(form) == expected
    batch = np.stack([load_image(PICTURE, (32, 32))] * 2)
    assert classifier.predict(batch) == expected * 2


def test_class_names_and_input_size_come_from_the_model(classifier, cifar):
    assert classifier.class_names == cifar.class_names
    assert classifier.input_size == (32, 32)
    (prediction,) = classifier.predict(cifar.x_test[0], top_k=10)
    assert sorted(label for label, _ in prediction) == sorted(cifar.class_names)
    assert sum(p for _, p in prediction) == pytest.approx(1.0, abs=1e-5)
    assert [p for _, p in prediction] == sorted((p for _, p in prediction), reverse=True)


@pytest.mark.parametrize("name", ["model-int8.onnx", "model-fp32.onnx", "model-fp32.tflite"])
def test_batched_streamed_micro_batched_and_single_predictions_are_identical(name, exported, cifar):
    clf = Classifier(exported[name], batch_size=16)
    images = list(cifar.x_test[::200])  # 50 images, every class
    batched = clf.predict(np.stack(images), top_k=3)
    single = [clf.predict(image, top_k=3)[0] for image in images]
    streamed = [r.prediction for r in clf.predict_files(images, top_k=3)]
    with Batcher(clf, max_batch=8, max_delay_ms=20, top_k=3) as batcher:
        results = [None] * len(images)

        def caller(i):
            results[i] = batcher.submit(images[i]).result()

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert batcher.batches_run < len(images)  # requests really were gathered
    for other in (single, streamed, results):
        assert [[lab for lab, _ in p] for p in other] == [[lab for lab, _ in p] for p in batched]
        np.testing.assert_allclose([[p for _, p in r] for r in other],
                                   [[p for _, p in r] for r in batched], rtol=0, atol=1e-6)


def test_bad_files_are_reported_and_the_others_classified(classifier, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(PICTURE).save(good)
    bad = {"empty.png": b"", "truncated.png": good.read_bytes()[:60],
           "random.jpg": RNG.integers(0, 256, 500, dtype=np.uint8).tobytes(),
           "text.png": b"hello, not an image"}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, optimize=True)
    sources = [good, *(tmp_path / n for n in bad), bomb, tmp_path / "missing.png", tmp_path]
    results = list(classifier.predict_files(sources))
    assert [r.error is None for r in results] == [True] + [False] * 7
    assert results[0].prediction == classifier.predict(good)[0]
    reasons = {os.path.basename(r.source): r.error for r in results[1:]}
    assert reasons["empty.png"] == "empty file"
    assert reasons["text.png"] == "not an image edgel2 reads (JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM/PBM or ICO)"
    assert reasons["truncated.png"].startswith("cannot decode")
    assert "decompression bomb" in reasons["bomb.png"]
    assert reasons["missing.png"] == "no such file"
    assert reasons[tmp_path.name] == "is a directory"
    with pytest.raises(ImageError, match="empty file"):
        classifier.predict(tmp_path / "empty.png")


def test_auto_prefers_tensorrt_then_cuda_then_cpu():
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", everything) == everything
    assert resolve_providers("auto", everything[1:]) == everything[1:]
    assert resolve_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"], everything) == ["CPUExecutionProvider"]


def test_asking_for_a_missing_gpu_warns_loudly_or_fails_when_strict(exported):
    with pytest.warns(ProviderFallbackWarning, match="asked for CUDAExecutionProvider but ONNX "
                                                     "Runtime runs model-int8.onnx on CPU"):
        clf = Classifier(exported["model-int8.onnx"], providers="cuda")
    assert clf.providers == ["CPUExecutionProvider"]
    with pytest.raises(EngineError, match="asked for CUDAExecutionProvider"):
        Classifier(exported["model-int8.onnx"], providers="cuda", strict=True)


def test_a_model_without_edgel2_metadata_is_refused(exported, tmp_path):
    import onnx

    plain = onnx.load(str(exported["model-fp32.onnx"]))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(ModelError, match="is not an edgel2 model"):
        Classifier(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot load"):
        Classifier(tmp_path / "junk.onnx")


def _infer(*args: str):
    return CliRunner().invoke(cli, ["infer", *args])


def test_infer_json_and_csv_parse_and_failures_set_exit_code_3(exported, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(PICTURE, i, axis=0)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(_encode(Image.fromarray(PICTURE), "JPEG")[:200])
    (folder / "notes.txt").write_text("not an image file: skipped by the folder walk")
    model = str(exported["model-int8.onnx"])

    result = _infer(str(folder), "--model", model, "--out-format", "json", "--top-k", "2")
    assert result.exit_code == 3 and "1 of 4 images failed" in result.stderr
    records = json.loads(result.stdout)
    assert [os.path.basename(r["path"]) for r in records] == ["0.png", "1.png", "2.png", "broken.jpg"]
    assert all(len(r["predictions"]) == 2 for r in records[:3]) and records[3]["predictions"] is None
    assert records[3]["error"].startswith("cannot decode")

    out = tmp_path / "out.csv"
    result = _infer(str(folder / "*.png"), "--model", model, "--out-format", "csv", "--out", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    rows = list(csv.DictReader(out.open()))
    assert [os.path.basename(r["path"]) for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(r["label1"] in Classifier(model).class_names and r["error"] == "" for r in rows)


def test_infer_with_a_missing_model_says_so_in_one_line(tmp_path):
    result = _infer(str(tmp_path), "--model", str(tmp_path / "none.onnx"))
    assert result.exit_code == 1
    assert result.stderr == f"edgel2: error: model file does not exist: {tmp_path / 'none.onnx'}\n"


def test_runtime_and_infer_work_where_tensorflow_and_keras_cannot_be_imported(exported, tmp_path):
    blocker = tmp_path / "blocked"
    for module in ("tensorflow", "keras", "tf2onnx", "jax"):
        (blocker / module).mkdir(parents=True)
        (blocker / module / "__init__.py").write_text(f"raise ImportError('{module} is blocked')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.getcwd()])}
    image = tmp_path / "picture.png"
    Image.fromarray(PICTURE).save(image)
    script = ("import sys; from edgel2.runtime import Classifier, Batcher; "
              f"c = Classifier({str(exported['model-int8.onnx'])!r}); print(c.predict({str(image)!r})); "
              "assert not any(m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx') for m in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    proc = subprocess.run([sys.executable, "-m", "edgel2", "infer", str(image), "--model",
                           str(exported["model-fp32.tflite"]), "--out-format", "json"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert json.loads(proc.stdout)[0]["error"] is None
