"""Hostile model files: a file is recognised by its bytes, not its name; metadata that lies
about the graph, or is malformed, is refused when the model is opened with one line saying
what is wrong; the metadata zip of a .tflite is read within fixed bounds."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_tiny_onnx, tiny_metadata
from PIL import Image

from edgel2.cli import cli
from edgel2.errors import EdgeL2Error
from edgel2.runtime import (
    Batcher,
    Classifier,
    ImageError,
    ModelError,
    PredictionError,
    read_metadata,
    sniff_format,
)
from edgel2.runtime.modelfile import MAX_METADATA_BYTES
from edgel2.runtime.shipped import shipped_model

GOOD = tiny_metadata()


def _with_input(**changes) -> dict:
    return {**GOOD, "input": {**GOOD["input"], **changes}}


# Each case: metadata written into a valid 3-class, 8x8 ONNX graph -> the one line it gets.
BAD_METADATA = {
    "2 names for 3 logits": ({**GOOD, "class_names": ["ant", "bee"]},
                             "tiny.onnx: its metadata names 2 classes but the model outputs 3 logits"),
    "20 names for 3 logits": ({**GOOD, "class_names": [f"c{i}" for i in range(20)]},
                              "tiny.onnx: its metadata names 20 classes but the model outputs 3 logits"),
    "names not a JSON list": ({**GOOD, "class_names": "abc"},
                              "tiny.onnx: metadata class_names is not a list of non-empty strings"),
    "a name not a string": ({**GOOD, "class_names": ["ant", 2, "cat"]},
                            "tiny.onnx: metadata class_names is not a list of non-empty strings"),
    "a repeated name": ({**GOOD, "class_names": ["ant", "ant", "cat"]},
                        "tiny.onnx: metadata class_names repeats a name"),
    "input not JSON": ({**GOOD, "input": "{oops"},
                       "tiny.onnx: metadata input.shape is None, not [batch, height, width, 3]"),
    "two dimensions": (_with_input(shape=[8, 8]),
                       "tiny.onnx: metadata input.shape is [8, 8], not [batch, height, width, 3]"),
    "a zero size": (_with_input(shape=[None, 0, 8, 3]),
                    "tiny.onnx: metadata input.shape [None, 0, 8, 3] needs positive whole numbers"),
    "a negative size": (_with_input(shape=[None, 8, -8, 3]),
                        "tiny.onnx: metadata input.shape [None, 8, -8, 3] needs positive whole numbers"),
    "string sizes": (_with_input(shape=[None, "8", "8", 3]),
                     "tiny.onnx: metadata input.shape [None, '8', '8', 3] needs positive whole numbers"),
    "a shape the graph disagrees with": (
        _with_input(shape=[None, 16, 16, 3]),
        "tiny.onnx: metadata input.shape [None, 16, 16, 3] disagrees with the model's input "
        "[None, 8, 8, 3]"),
    "float input": (_with_input(dtype="float32"),
                    "tiny.onnx: metadata input is NHWC float32 [None, 8, 8, 3]; edgel2 models "
                    "take NHWC uint8 RGB"),
    "a 20000x20000 input": (_with_input(shape=[None, 20000, 20000, 3]),
                            "tiny.onnx: metadata input.shape [None, 20000, 20000, 3] is larger "
                            "than 4096 pixels a side: refused"),
    "a newline in a name": ({**GOOD, "class_names": ["ant", "bee\nforged,row", "cat"]},
                            "tiny.onnx: metadata class_names holds a control character (a "
                            "newline would forge rows in tables)"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_metadata_that_disagrees_with_the_graph_is_refused_in_one_line(case, tmp_path):
    metadata, message = BAD_METADATA[case]
    model = make_tiny_onnx(tmp_path / "tiny.onnx", metadata)
    with pytest.raises(ModelError) as error:
        Classifier(model)
    assert str(error.value) == message
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (90, 90, 90)).save(image)
    result = CliRunner().invoke(cli, ["infer", str(image), "--model", str(model)])
    assert (result.exit_code, result.stderr) == (1, f"edgel2: error: {message}\n")


def test_a_file_without_edgel2_metadata_is_refused(tmp_path):
    model = make_tiny_onnx(tmp_path / "tiny.onnx", {})
    with pytest.raises(ModelError, match=r"tiny.onnx is not an edgel2 model \(no edgel2 metadata"):
        Classifier(model)


@pytest.mark.parametrize("name", ["model.bin", "MODEL.ONNX", "model"])
def test_the_format_is_sniffed_from_the_bytes_whatever_the_name(name, tiny_onnx, tmp_path):
    renamed = shutil.copy(tiny_onnx, tmp_path / name)
    assert sniff_format(renamed) == "onnx"
    assert Classifier(renamed).class_names == ["ant", "bee", "cat"]
    tflite = shutil.copy(shipped_model("resnet18-int8.tflite"), tmp_path / f"{name}.bin")
    assert sniff_format(tflite) == "tflite"


@pytest.mark.parametrize("make, message, code", [
    (lambda d: d / "README.md",
     "is not a model file of a format edgel2 reads (ONNX, TFLite): its first bytes are b'# readme'", 1),
    (lambda d: d / "junk.onnx", "cannot load", 1),
    (lambda d: d / "fifo.onnx", "model path is not a regular file", 1),
    (lambda d: d / "missing.onnx", "model file does not exist", 1),
    (lambda d: d / "empty.onnx", "model file is empty", 1),
    (lambda d: d, "holds several models (empty, junk): pass one of its files", 1),
])
def test_what_is_not_a_model_file_gets_one_line_and_an_exit_code(make, message, code, tmp_path):
    (tmp_path / "README.md").write_text("# readme\n")
    (tmp_path / "junk.onnx").write_bytes(b"\x08junk")
    (tmp_path / "empty.onnx").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.onnx")
    with pytest.raises(ModelError, match=re.escape(message)):
        Classifier(make(tmp_path))
    result = CliRunner().invoke(cli, ["infer", "x.png", "--model", str(make(tmp_path))])
    assert result.exit_code == code and result.stderr.startswith("edgel2: error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def _tflite_with_zip(tmp_path: Path, zip_bytes: bytes) -> Path:
    """The shipped .tflite followed by another zip: readers take the last one in the file."""
    path = tmp_path / "hostile.tflite"
    path.write_bytes(shipped_model("resnet18-int8.tflite").read_bytes() + zip_bytes)
    return path


def _zip(name: str, content: bytes, claimed_size: int | None = None) -> bytes:
    """A one-entry deflated zip; ``claimed_size`` rewrites the uncompressed size its headers
    state (a zip bomb's lie)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, content)
    data = bytearray(buffer.getvalue())
    if claimed_size is not None:
        real = len(content).to_bytes(4, "little")
        for header, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            at = data.index(header) + offset
            assert data[at:at + 4] == real
            data[at:at + 4] = claimed_size.to_bytes(4, "little")
    return bytes(data)


def test_a_metadata_zip_bomb_with_lying_headers_is_refused_in_bounded_memory(tmp_path):
    bomb = _tflite_with_zip(tmp_path, _zip("edgel2.json", b" " * (64 << 20), claimed_size=100))
    assert bomb.stat().st_size < 12 << 20  # 64 MB of spaces deflate to about 64 KB
    tracemalloc.start()
    try:
        with pytest.raises(ModelError, match="unreadable metadata zip: Bad CRC-32 for file "
                                             "'edgel2.json'"):
            read_metadata(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_METADATA_BYTES


@pytest.mark.parametrize("zip_bytes, message", [
    (_zip("edgel2.json", b"{}", claimed_size=2 << 30), "would unpack to 2,147,483,648 bytes"),
    (_zip("edgel2.json", b" " * (MAX_METADATA_BYTES + 1)), "edgel2.json is 1,048,577 bytes"),
    (_zip("edgel2.json", b"{not json"), "edgel2.json is not valid JSON"),
    (_zip("edgel2.json", b"[1, 2]"), "edgel2.json is not a JSON object"),
])
def test_tflite_metadata_is_read_within_bounds_and_checked(zip_bytes, message, tmp_path):
    with pytest.raises(ModelError, match=message):
        read_metadata(_tflite_with_zip(tmp_path, zip_bytes))


def test_non_finite_logits_never_become_a_label(tiny_onnx):
    clf = Classifier(tiny_onnx)
    black, grey = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 90, np.uint8)
    with pytest.raises(PredictionError, match="the model produced non-finite logits for image 1"):
        clf.predict([grey, black])
    assert [r.error for r in clf.predict_files([grey, black])] == \
        [None, "the model produced non-finite logits"]
    with Batcher(clf) as batcher:
        with pytest.raises(PredictionError, match="non-finite logits"):
            batcher.submit(black).result(timeout=60)
        assert batcher.submit(grey).result(timeout=60) == clf.predict(grey)[0]


def test_a_batch_of_the_wrong_type_or_size_is_an_image_error_not_an_engine_crash(tiny_onnx):
    clf = Classifier(tiny_onnx)
    with pytest.raises(ImageError, match=r"a batch must be uint8 \[N, 8, 8, 3\], got float32 \[2, 8, 8, 3\]"):
        clf.probabilities(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ImageError, match=r"got uint8 \[2, 8, 8, 4\]"):
        clf.probabilities(np.zeros((2, 8, 8, 4), np.uint8))


def test_runtime_errors_are_one_family_with_their_builtin_bases():
    from edgel2.errors import BusyError, EngineError, OptionError
    for error, base in ((ModelError, ValueError), (ImageError, ValueError),
                        (EngineError, RuntimeError), (PredictionError, RuntimeError),
                        (BusyError, RuntimeError), (OptionError, ValueError)):
        assert issubclass(error, EdgeL2Error) and issubclass(error, base)


def _blocked(tmp_path: Path, *modules: str) -> dict:
    """An environment in which ``modules`` are not installed, as on a base install."""
    blocker = tmp_path / "blocked"
    for module in modules:
        (blocker / module).mkdir(parents=True)
        (blocker / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {module!r}'!r}, name={module!r})\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.getcwd()])}


def test_a_tflite_model_without_litert_says_what_to_install(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    proc = subprocess.run([sys.executable, "-m", "edgel2", "infer", str(image), "--model",
                           str(shipped_model("resnet18-int8.tflite"))],
                          env=_blocked(tmp_path, "ai_edge_litert"), capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == ('edgel2: error: LiteRT, which runs .tflite files, is not installed: '
                           'pip install "edgel2[litert]" (the ai-edge-litert package)\n')


# --- hostile graphs: refused before an engine builds them, or at their first run ------------

def _graph_model(path: Path, nodes, initializers, output_shape, classes=3) -> Path:
    """A model of the given nodes from ``images`` (uint8 [N, 8, 8, 3]) to ``logits``, with
    edgel2's metadata."""
    import json

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "hostile",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = tiny_metadata(["ant", "bee", "cat"][:classes] if classes <= 3 else
                         [f"c{i}" for i in range(classes)])
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))
    return path


def test_a_graph_that_would_allocate_gigabytes_is_refused_before_it_loads(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    model = _graph_model(tmp_path / "bomb.onnx", [
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
        helper.make_node("ReduceMean", ["big"], ["one"], keepdims=1),
        helper.make_node("Mul", ["mean", "one"], ["logits"])],
        [numpy_helper.from_array(np.array([2**31], np.int64), "shape"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "axes")], ["batch", 3])
    tracemalloc.start()
    with pytest.raises(ModelError) as error:
        Classifier(model, engine="onnxruntime")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(error.value) == ("bomb.onnx: its graph makes a ConstantOfShape tensor of "
                                "2,147,483,648 elements (limit 268,435,456): refused")
    assert peak < 64 * 2**20


def test_weights_kept_in_a_separate_file_are_refused(tmp_path):
    import onnx

    model = onnx.load(str(make_tiny_onnx(tmp_path / "tiny.onnx")))
    onnx.save(model, str(tmp_path / "external.onnx"), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    for engine in ("onnxruntime", "openvino"):
        with pytest.raises(ModelError, match=r"external\.onnx: its weights are kept in a "
                                             r"separate file \(ONNX external data\)"):
            Classifier(tmp_path / "external.onnx", engine=engine)


def test_a_file_that_loads_but_cannot_run_is_a_model_error_at_open(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    # 8 x 8 x 3 = 192 values per image cannot be reshaped into rows of 7: fails when run
    model = _graph_model(tmp_path / "broken.onnx", [
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["pixels", "rows"], ["logits"])],
        [numpy_helper.from_array(np.array([-1, 7], np.int64), "rows")], ["batch", 7], classes=7)
    with pytest.raises(ModelError, match=r"^broken\.onnx loads but fails on its first run: "):
        Classifier(model, engine="onnxruntime")


def _corrupt(path: Path, offset_from_end_of: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(offset_from_end_of) + len(offset_from_end_of) + 2
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_an_onnx_files_weights_is_refused(tmp_path):
    from edgel2.export.onnx import set_metadata
    from edgel2.runtime.modelfile import read_metadata

    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    set_metadata(model, {}, keep_others=True)  # as edgel2 export leaves it: with the checksum
    assert len(read_metadata(model)["weights_sha256"]) == 64
    assert Classifier(model).class_names == ["ant", "bee", "cat"]
    _corrupt(model, b"B\x01wJ$")  # the raw data of the weights tensor named "w"
    with pytest.raises(ModelError, match="tiny.onnx: its weights do not match the checksum in "
                                         "its metadata"):
        Classifier(model, engine="onnxruntime")



def test_a_file_another_tool_rewrote_is_not_taken_for_a_corrupted_one(tmp_path):
    import onnx

    from edgel2.export.onnx import set_metadata

    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    set_metadata(model, {}, keep_others=True)
    proto = onnx.load(str(model))  # e.g. a quantizer: new weights, edgel2's metadata kept
    proto.producer_name = "onnx.quantize"
    proto.graph.initializer[-1].raw_data = bytes(len(proto.graph.initializer[-1].raw_data))
    onnx.save(proto, str(model))
    assert Classifier(model).class_names == ["ant", "bee", "cat"]


def test_a_flipped_byte_in_a_tflite_files_weights_is_refused(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgel2.export.tflite import pack_metadata
    from edgel2.runtime.modelfile import flatbuffer_end, tflite_metadata

    model = shutil.copy(shipped_model("resnet18-int8.tflite"), tmp_path / "m.tflite")
    pack_metadata(model, tflite_metadata(model))
    assert Classifier(model).class_names[0] == "airplane"
    data = bytearray(model.read_bytes())
    data[flatbuffer_end(bytes(data)) // 2] ^= 0x01  # a weight, in the middle of the flatbuffer
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="m.tflite: its weights do not match the checksum"):
        Classifier(model)


def test_a_graph_with_a_scalar_input_is_a_model_error(tmp_path):
    import json

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["logits"], to=TensorProto.FLOAT)], "scalar",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in tiny_metadata().items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(tmp_path / "scalar.onnx"))
    with pytest.raises(ModelError, match=r"^scalar\.onnx: the model's output has shape \[\]"):
        Classifier(tmp_path / "scalar.onnx", engine="onnxruntime")
