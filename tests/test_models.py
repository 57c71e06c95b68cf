"""The models shipped in models/: they load with the light runtime, carry their metadata, and
classify real CIFAR-10-JPEG test images at the accuracy their card states."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgel2.cli import cli
from edgel2.data import balanced_subset
from edgel2.runtime import Classifier
from edgel2.runtime.modelfile import file_precision

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(MODELS.glob("**/*.onnx")) + sorted(MODELS.glob("**/*.tflite"))
CARD = (MODELS / "README.md").read_text()
# what each shipped network is: its Keras name and the cost its metadata states
NETWORKS = {
    "resnet18": ("resnet18_w64", {"architecture": "resnet18", "width": 64,
                                  "parameters": 11_173_962, "multiply_adds": 555_422_720}),
    "resnet20": ("resnet20_w16", {"architecture": "resnet20", "width": 16,
                                  "parameters": 272_474, "multiply_adds": 40_813_184}),
}


def test_models_folder_ships_the_default_resnet18_and_the_small_resnet20_and_stays_small():
    assert sorted(str(p.relative_to(MODELS)) for p in SHIPPED) == [
        "resnet18-int8.onnx", "resnet18-int8.tflite",
        "resnet20/resnet20-int8.onnx", "resnet20/resnet20-int8.tflite"]
    # the int8 files of the 11.17M-parameter net (23.4 MB) and the 0.27M one (0.7 MB), the
    # charts and the test vectors; the repository must stay well under 40 MB
    assert sum(p.stat().st_size for p in MODELS.glob("**/*") if p.is_file()) < 26 * 2**20


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_carries_metadata_and_matches_its_card(path, cifar):
    clf = Classifier(path)
    meta = clf.metadata
    assert clf.class_names == cifar.class_names
    assert file_precision(meta) == "int8" and meta["input"]["dtype"] == "uint8"
    assert (meta["model_name"], meta["network"]) == NETWORKS[path.stem.split("-")[0]]
    stated = meta["accuracy"]["top1"]
    assert meta["accuracy"]["images"] == 10000  # measured on the full test split
    # the card states the same figure, to two decimals
    assert re.search(rf"\| `{re.escape(path.name)}` \|[^\n]*\| {100 * stated:.2f} % \|", CARD), \
        f"models/README.md does not state {100 * stated:.2f} % for {path.name}"
    images, labels = balanced_subset(cifar.x_test, cifar.y_test, 500, seed=1)
    predicted = [clf.class_names.index(p[0][0]) for p in clf.predict(images)]
    accuracy = float(np.mean(np.array(predicted) == labels))
    sampling_error = math.sqrt(stated * (1 - stated) / len(labels))
    assert abs(accuracy - stated) <= 3 * sampling_error + 1e-9


def test_infer_uses_the_shipped_int8_pair_by_default(data_dir):
    from edgel2.runtime import shipped_models
    from edgel2.runtime.modelfile import model_files

    assert [p.name for p in model_files(shipped_models())] == [
        "resnet18-int8.onnx", "resnet18-int8.tflite"]
    image = next((data_dir / "test" / "ship").iterdir())
    result = CliRunner().invoke(cli, ["infer", str(image), "--out-format", "csv", "-v"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split(",")[1] in Classifier().class_names
    assert "resnet18-int8.onnx (int8) on openvino" in result.stderr  # the fixed rule in tests


def test_the_small_models_folder_is_one_model_wherever_a_model_is_taken(data_dir):
    from edgel2.runtime import shipped_models
    from edgel2.runtime.modelfile import model_files

    small = shipped_models() / "resnet20"
    assert [p.name for p in model_files(small)] == ["resnet20-int8.onnx", "resnet20-int8.tflite"]
    image = next((data_dir / "test" / "ship").iterdir())
    result = CliRunner().invoke(cli, ["infer", str(image), "--model", str(small), "-v"])
    assert result.exit_code == 0, result.output
    assert "resnet20-int8.onnx (int8) on openvino" in result.stderr


def test_the_shipped_files_still_answer_their_test_vectors():
    """models/test-vectors.json (scripts/tools/make_test_vectors.py) is what ports check against:
    the JPEGs decode to its pixels, and each shipped file gives its logits, top-1 and unknown
    scores and verdicts."""
    import base64
    import json

    from edgel2.runtime import load_image, shipped_model
    from edgel2.runtime.formats import REFERENCE_ENGINE
    from edgel2.runtime.modelfile import sniff_format

    vectors = json.loads(shipped_model("test-vectors.json").read_text())
    pixels = np.array([image["pixels"] for image in vectors["images"]], np.uint8).reshape(-1, 32, 32, 3)
    for image, expected in zip(vectors["images"], pixels):
        assert np.array_equal(load_image(base64.b64decode(image["jpeg_base64"]), (32, 32)), expected)
    assert sorted(vectors["files"]) == sorted(str(p.relative_to(MODELS)) for p in SHIPPED)
    for name, answer in vectors["files"].items():
        path = shipped_model(name)
        classifier = Classifier(path, engine=REFERENCE_ENGINE[sniff_format(path)])
        outputs = classifier.engine.run(pixels)
        probabilities, scores = classifier.split(outputs, len(pixels))
        logits = outputs[:, :len(classifier.class_names)]
        # integer kernels may round differently on another CPU: well inside 0.05, same top-1
        assert np.allclose(logits, answer["logits"], atol=0.05), name
        assert [classifier.class_names[i] for i in logits.argmax(1)] == answer["top1"]
        assert np.allclose(probabilities, answer["probabilities"], atol=0.01)
        assert answer["unknown_threshold"] == classifier.unknown_threshold
        assert np.allclose(scores, answer["unknown_score"], atol=0.05), name
        assert [classifier.verdict(float(s))[1] for s in scores] == answer["unknown"]
        # the classes' images are known, the noise (the last image) is unknown
        assert answer["unknown"] == [False] * (len(pixels) - 1) + [True]
