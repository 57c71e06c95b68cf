"""TFLite files describe themselves the standard way: TFLite Support metadata (what Android
Studio's ML binding, the Task Library, MediaPipe and ``MetadataDisplayer`` read) with the class
names as the output's labels file, a signature that takes ``images`` and returns ``logits``
and ``unknown_score`` (described with the file's threshold as its ScoreThresholdingOptions),
and edgel2's own ``edgel2.json`` beside ``labels.txt``; writing it changes no weight.

The reader of record is tflite-support 0.4.4 itself, in a virtual environment of its own (it
pins protobuf < 4, which cannot share one with TensorFlow 2.21)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np
import pytest

from edgel2.export.tflite import MIN_PARSER_VERSION, SUPPORT_METADATA, pack_metadata
from edgel2.export.vendor import tflite_metadata_schema as fb
from edgel2.runtime.modelfile import tflite_metadata
from edgel2.runtime.shipped import shipped_model

litert = pytest.importorskip("ai_edge_litert.interpreter")
from ai_edge_litert import schema_py_generated as schema  # noqa: E402

# What tflite-support's own reader prints of a file: its metadata JSON, the packed files, the
# labels file, the parser version its C++ computes for the metadata, and its populator's
# validation of that metadata against the model (tensor counts) as "ok" or the error.
READER = r"""
import json, sys
import flatbuffers
from tflite_support import metadata
from tensorflow_lite_support.metadata import metadata_schema_py_generated as fb
from tensorflow_lite_support.metadata.cc.python import _pywrap_metadata_version as version

path = sys.argv[1]
shown = metadata.MetadataDisplayer.with_model_file(path)
buf = metadata.get_metadata_buffer(open(path, "rb").read())
unversioned = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(buf, 0))
unversioned.minParserVersion = None
builder = flatbuffers.Builder(0)
builder.Finish(unversioned.Pack(builder), b"M001")
populator = metadata.MetadataPopulator.with_model_buffer(open(path, "rb").read())
try:
    populator.load_metadata_buffer(buf)
    validation = "ok"
except ValueError as e:
    validation = str(e)
print(json.dumps({
    "metadata": json.loads(shown.get_metadata_json()),
    "packed": shown.get_packed_associated_file_list(),
    "labels": shown.get_associated_file_buffer("labels.txt").decode().split("\n"),
    "edgel2": json.loads(shown.get_associated_file_buffer("edgel2.json")),
    "min_parser_version": version.GetMinimumMetadataParserVersion(bytes(builder.Output())),
    "validation": validation,
}))
"""


@pytest.fixture(scope="module")
def tflite_support(tmp_path_factory) -> Path:
    """The python of a fresh venv holding tflite-support 0.4.4 (wheels up to CPython 3.11)."""
    if sys.version_info >= (3, 12):
        pytest.skip("tflite-support 0.4.4 has wheels for CPython <= 3.11 only")
    env_dir = tmp_path_factory.mktemp("tflite-support") / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "tflite-support==0.4.4"], capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot install tflite-support 0.4.4: {install.stderr[-1500:]}")
        pytest.skip("tflite-support 0.4.4 cannot be installed here")
    return python


def read_with_tflite_support(python: Path, path: Path) -> dict:
    proc = subprocess.run([python, "-c", READER, path], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def signature(path: Path) -> dict:
    return litert.Interpreter(model_path=str(path)).get_signature_list()


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    interpreter = litert.Interpreter(model_path=str(path))
    return interpreter.get_signature_runner()(images=images)["logits"]


def support_metadata_of(path: Path) -> fb.ModelMetadataT:
    """The TFLITE_METADATA buffer of a model, parsed with the schema the readers use."""
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    (index,) = [model.Metadata(i).Buffer() for i in range(model.MetadataLength())
                if model.Metadata(i).Name() == SUPPORT_METADATA.encode()]
    buffer = model.Buffers(index).DataAsNumpy().tobytes()
    assert fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    return fb.ModelMetadataT.InitFromPackedBuf(buffer)


@pytest.fixture(params=["exported", "shipped"])
def tflite_file(request, tmp_path) -> Path:
    """A TFLite file that edgel2 exported in this run, and the shipped int8 one."""
    if request.param == "shipped":
        return shipped_model("resnet18-int8.tflite")
    return request.getfixturevalue("exported")["model-fp32.tflite"]


def test_the_signature_takes_images_and_returns_logits_and_the_unknown_score(tflite_file):
    assert signature(tflite_file) == {"serving_default": {
        "inputs": ["images"], "outputs": ["logits", "unknown_score"]}}


def test_the_standard_metadata_describes_an_image_classifier_with_its_labels(tflite_file):
    described = support_metadata_of(tflite_file)
    ours = tflite_metadata(tflite_file)
    (subgraph,) = described.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    outputs = {o.name: o for o in subgraph.outputTensorMetadata}
    output = outputs[b"logits"]
    assert described.name.decode() == ours["model_name"]
    assert described.minParserVersion.decode() == MIN_PARSER_VERSION
    assert image.name == b"images"
    assert image.content.contentPropertiesType == fb.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == fb.ColorSpaceType.RGB
    (unit,) = image.processUnits
    assert (unit.options.mean, unit.options.std) == ([0.0], [1.0])  # raw pixels: normalized inside
    assert (image.stats.min, image.stats.max) == ([0.0], [255.0])
    assert output.name == b"logits"
    assert [(f.name, f.type) for f in output.associatedFiles] == \
        [(b"labels.txt", fb.AssociatedFileType.TENSOR_AXIS_LABELS)]
    assert [(f.name, f.type) for f in described.associatedFiles] == \
        [(b"edgel2.json", fb.AssociatedFileType.DESCRIPTIONS)]
    # the unknown score: one column labelled "unknown", thresholded where the file's own is
    score = outputs[b"unknown_score"]
    (thresholding,) = score.processUnits
    assert thresholding.optionsType == fb.ProcessUnitOptions.ScoreThresholdingOptions
    assert thresholding.options.globalScoreThreshold == \
        pytest.approx(ours["unknown"]["threshold"], rel=1e-6)  # a float32 field
    assert [(f.name, f.type) for f in score.associatedFiles] == \
        [(b"unknown.txt", fb.AssociatedFileType.TENSOR_AXIS_LABELS)]
    with zipfile.ZipFile(tflite_file) as z:
        assert z.read("labels.txt").decode().splitlines() == ours["class_names"]
        assert z.read("unknown.txt").decode() == "unknown\n"
        # stored, so that the Task Library's C++ extractor can read the files in place
        assert {i.filename: i.compress_type for i in z.infolist()} == \
            {"labels.txt": zipfile.ZIP_STORED, "unknown.txt": zipfile.ZIP_STORED,
             "edgel2.json": zipfile.ZIP_STORED}


def test_tflite_support_reads_the_class_names_and_edgel2_metadata(tflite_file, tflite_support):
    read = read_with_tflite_support(tflite_support, tflite_file)
    ours = tflite_metadata(tflite_file)
    assert read["packed"] == ["labels.txt", "unknown.txt", "edgel2.json"]
    assert read["labels"] == [*ours["class_names"], ""]  # one a line, newline-terminated
    assert read["edgel2"] == ours
    assert read["validation"] == "ok"
    assert read["min_parser_version"] == MIN_PARSER_VERSION
    (subgraph,) = read["metadata"]["subgraph_metadata"]
    outputs = {o["name"]: o for o in subgraph["output_tensor_metadata"]}
    assert outputs["logits"]["associated_files"][0] == {
        "name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
        "description": "Class names, one a line, in the order of the logits"}
    (thresholding,) = outputs["unknown_score"]["process_units"]
    assert thresholding["options_type"] == "ScoreThresholdingOptions"
    assert thresholding["options"]["global_score_threshold"] == \
        pytest.approx(ours["unknown"]["threshold"], rel=1e-6)
    assert subgraph["input_tensor_metadata"][0]["content"]["content_properties"] == \
        {"color_space": "RGB"}


def test_describing_a_file_again_changes_no_logit_and_keeps_one_metadata_entry(tmp_path):
    path = Path(shutil.copy(shipped_model("resnet18-int8.tflite"), tmp_path / "m.tflite"))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    before, size = logits(path, images), path.stat().st_size
    metadata = {**tflite_metadata(path), "class_names": [f"c{i}" for i in range(10)]}
    pack_metadata(path, metadata)
    pack_metadata(path, metadata)
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    names = [model.Metadata(i).Name() for i in range(model.MetadataLength())]
    assert names.count(SUPPORT_METADATA.encode()) == 1
    assert abs(path.stat().st_size - size) < 1024
    np.testing.assert_array_equal(logits(path, images), before)
    assert tflite_metadata(path)["class_names"] == metadata["class_names"]


def test_a_file_converted_with_args_0_output_0_is_renamed_and_keeps_its_weights(tmp_path):
    """Files from before the named endpoint said args_0/output_0: describing one renames its
    signature and keeps every weight buffer byte for byte, at the converter's alignment."""
    path = Path(shutil.copy(shipped_model("resnet18-int8.tflite"), tmp_path / "old.tflite"))
    named = signature(path)
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes()[:_flatbuffer_end(path)])
    model.signatureDefs[0].inputs[0].name = "args_0"
    for i, output in enumerate(model.signatureDefs[0].outputs):
        output.name = f"output_{i}"
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    assert signature(path)["serving_default"]["inputs"] == ["args_0"]
    weights = _weights(path)

    pack_metadata(path, tflite_metadata(shipped_model("resnet18-int8.tflite")))
    assert signature(path) == named
    assert named["serving_default"]["outputs"] == ["logits", "unknown_score"]
    assert _weights(path) == weights
    assert all(start % 16 == 0 for start in _data_starts(path))


def _flatbuffer_end(path: Path) -> int:
    from edgel2.runtime.modelfile import flatbuffer_end

    return flatbuffer_end(path.read_bytes())


def _weights(path: Path) -> list[bytes]:
    """Every buffer's bytes but the metadata entries'."""
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    metadata = {model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    return [model.Buffers(i).DataAsNumpy().tobytes() if model.Buffers(i).DataLength() else b""
            for i in range(model.BuffersLength()) if i not in metadata]


def _data_starts(path: Path) -> list[int]:
    """Where each weight buffer's bytes begin in the file."""
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    starts = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            starts.append(buffer._tab.Vector(buffer._tab.Offset(4)))
    return starts
