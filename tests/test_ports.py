"""Every app in examples/ gives edgel2.runtime's answer: each examples/<port>/run classifies the
test-vector images and a few odd ones (PNG with alpha, greyscale, a photo larger than the
model's input, an EXIF-rotated JPEG) with a shipped file, and must name the runtime's label
with probabilities within PNG_TOLERANCE on lossless inputs and its pinned tolerance on JPEGs
(decoders may differ, so each port pins its own). A port that cannot be built here (its run
exits CANNOT_BUILD) skips with its reason."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Each port: the shipped file it runs, the engine of edgel2.runtime it is compared with, and
# the largest |Δp| allowed on JPEG inputs (another JPEG decoder may differ by a few levels on
# some pixels; each figure is pinned from measurement: the Node port's sharp decodes with
# mozjpeg, Chromium and the C port with libjpeg-turbo, which give the same pixels as Pillow's
# libjpeg-turbo, and the MediaPipe port decodes with Pillow itself).
PORTS = {
    "node": ("resnet18-int8.onnx", "onnxruntime", 1e-3),
    "browser": ("resnet18-int8.onnx", "onnxruntime", 1e-3),
    "c": ("resnet18-int8.onnx", "openvino", 1e-3),
    "mediapipe": ("resnet18-int8.tflite", "litert", 1e-3),
}
CANNOT_BUILD = 3  # the exit status of a run that cannot build its port on this machine
PNG_TOLERANCE = 1e-3  # the same pixels: only the engines' float arithmetic differs


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """The test vectors' JPEGs, each also as PNG, and the odd images, in one folder."""
    from sklearn.datasets import load_sample_image

    from edgel2.runtime import shipped_model

    folder = tmp_path_factory.mktemp("port-images")
    vectors = json.loads(shipped_model("test-vectors.json").read_text())
    paths = []
    for i, image in enumerate(vectors["images"]):
        jpeg = folder / f"vector{i:02d}.jpg"
        jpeg.write_bytes(base64.b64decode(image["jpeg_base64"]))
        png = folder / f"vector{i:02d}.png"
        Image.open(jpeg).save(png)
        paths += [jpeg, png]
    photo = load_sample_image("china.jpg")  # 640 x 427, shrunk 20x by the bilinear filter
    Image.fromarray(photo).save(folder / "large.jpg", quality=90)
    Image.fromarray(photo).convert("L").resize((96, 64)).save(folder / "grey.png")
    rgba = np.dstack([np.asarray(Image.fromarray(photo).resize((48, 40))),
                      np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: turn a quarter clockwise to stand upright
    Image.fromarray(load_sample_image("flower.jpg")).resize((60, 40)).save(
        folder / "rotated.jpg", quality=90, exif=exif)
    return paths + [folder / n for n in ("large.jpg", "grey.png", "alpha.png", "rotated.jpg")]


def test_every_example_app_is_checked_here():
    assert sorted(p.parent.name for p in EXAMPLES.glob("*/run")) == sorted(PORTS)


@pytest.mark.parametrize("port", sorted(PORTS))
def test_port_gives_the_runtimes_label_and_probabilities(port, images):
    from edgel2.runtime import Classifier, shipped_model

    model = shipped_model(PORTS[port][0])
    ran = subprocess.run([str(EXAMPLES / port / "run"), "--model", str(model),
                          *map(str, images)], capture_output=True, text=True, timeout=600)
    if ran.returncode == CANNOT_BUILD:
        pytest.skip(f"{port} cannot be built here: {ran.stderr.strip()}")
    assert ran.returncode == 0, ran.stderr[-2000:]
    answers = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [a["path"] for a in answers] == [str(p) for p in images]

    _, engine, jpeg_tolerance = PORTS[port]
    reference = Classifier(model, engine=engine)
    for path, answer in zip(images, answers):
        pixels = reference.preprocess(path)[None]
        expected = reference.probabilities(pixels)[0]
        score = float(reference.unknown_scores(pixels)[0])
        tolerance = jpeg_tolerance if path.suffix == ".jpg" else PNG_TOLERANCE
        assert answer["label"] == reference.class_names[int(expected.argmax())], path.name
        assert np.abs(np.array(answer["probabilities"]) - expected).max() <= tolerance, path.name
        assert answer["unknown"] == (score > reference.unknown_threshold), path.name
        if "unknown_score" in answer:  # MediaPipe reports only the verdict
            assert answer["unknown_score"] == pytest.approx(score, abs=0.05), path.name


@pytest.mark.parametrize("port", sorted(PORTS))
def test_port_says_a_missing_or_truncated_image_in_one_line_each_and_exits_1(port, images, tmp_path):
    from edgel2.runtime import shipped_model

    missing = tmp_path / "missing.png"
    truncated = tmp_path / "truncated.jpg"  # a JPEG cut after 600 bytes
    truncated.write_bytes(next(p for p in images if p.suffix == ".jpg").read_bytes()[:600])
    ran = subprocess.run([str(EXAMPLES / port / "run"), "--model",
                          str(shipped_model(PORTS[port][0])), str(images[1]), str(missing),
                          str(truncated)], capture_output=True, text=True, timeout=600)
    if ran.returncode == CANNOT_BUILD:
        pytest.skip(f"{port} cannot be built here: {ran.stderr.strip()}")
    assert ran.returncode == 1
    assert len(ran.stdout.splitlines()) == 1  # the good image is still answered
    errors = ran.stderr.splitlines()
    assert len(errors) == 2 and str(missing) in errors[0] and str(truncated) in errors[1]


@pytest.mark.parametrize("port, environment, reason", [
    ("browser", {"CHROMIUM": "/nonexistent/chromium"}, "no Chromium at /nonexistent/chromium"),
    ("c", {"PYTHON": "/bin/false"}, "no openvino wheel in /bin/false"),
])
def test_a_port_that_cannot_be_built_says_why_and_exits_3(port, environment, reason, tmp_path):
    import os

    ran = subprocess.run([str(EXAMPLES / port / "run"), str(tmp_path / "any.png")],
                         env={**os.environ, **environment}, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == CANNOT_BUILD
    assert ran.stderr.count("\n") == 1 and reason in ran.stderr
