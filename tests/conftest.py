"""Shared fixtures. Real data comes from $EDGEL2_DATA (scripts/test.sh unpacks the shared
CIFAR-10-JPEG pack there); everything else is made in the test, seeded."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# `auto` follows its fixed rule in tests, so that which engine runs does not depend on this
# machine's speed; the tests of the race turn it on, with a cache folder of their own.
os.environ["EDGEL2_ENGINE_PROBE"] = "0"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The unpacked CIFAR-10-JPEG image folder. CI must provide it; elsewhere tests skip."""
    path = os.environ.get("EDGEL2_DATA")
    if not path or not Path(path).is_dir():
        if os.environ.get("CI"):
            pytest.fail("EDGEL2_DATA is not set to the unpacked CIFAR-10-JPEG folder in CI")
        pytest.skip("EDGEL2_DATA is not set (run the tests through scripts/test.sh)")
    return Path(path)


@pytest.fixture(scope="session")
def cifar(data_dir):
    from edgel2.data import load_dataset

    return load_dataset(data_dir)


def write_images(folder: Path, count: int, size=(8, 8), seed: int = 0, fmt: str = "PNG") -> None:
    """``count`` seeded random RGB images into ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.{fmt.lower()}", fmt)


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """train/ and test/ with 3 classes of random 8x8 PNGs (4 and 2 per class)."""
    for c, name in enumerate(["cat", "ant", "bee"]):
        write_images(tmp_path / "data" / "train" / name, 4, seed=c)
        write_images(tmp_path / "data" / "test" / name, 2, seed=10 + c)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def small_model(cifar, tmp_path_factory):
    """A width-4 ResNet-18 trained for one epoch on 512 CIFAR-10-JPEG images, in its run
    directory (model.keras beside config.json)."""
    from edgel2.config import TrainConfig
    from edgel2.train import train

    run = tmp_path_factory.mktemp("small") / "run"
    config = TrainConfig(width=4, epochs=1, batch_size=128, lr=0.2, subset=512, test_subset=100)
    train(config, run, dataset=cifar, verbose=0, name="model")  # files: model-int8.onnx, ...
    return run / "model.keras"


@pytest.fixture(scope="session")
def exported(small_model, cifar, tmp_path_factory):
    """The small model as int8 and fp32 ONNX and fp32 TFLite: {name: path}."""
    from edgel2.export import export_model

    out = tmp_path_factory.mktemp("exported")
    export_model(small_model, ["onnx"], ["int8", "fp32"], dataset=cifar, int8_images=64, check=0,
                 out=out)
    export_model(small_model, ["tflite"], ["fp32"], dataset=cifar, check=0, out=out)
    return {p.name: p for p in out.glob("model-*")}


@pytest.fixture(scope="session")
def small_resnet20(cifar, tmp_path_factory):
    """A width-4 ResNet-20 trained for one epoch on 512 CIFAR-10-JPEG images, exported to int8
    ONNX and int8 TFLite with its C array: {"model": model.keras, name: path}."""
    from edgel2.config import TrainConfig
    from edgel2.export import export_model
    from edgel2.train import train

    run = tmp_path_factory.mktemp("resnet20") / "run"
    config = TrainConfig(arch="resnet20", width=4, epochs=1, batch_size=128, lr=0.2, subset=512,
                         test_subset=100)
    train(config, run, dataset=cifar, verbose=0, name="r20")
    export_model(run / "model.keras", ["onnx", "tflite"], ["int8"], dataset=cifar,
                 int8_images=64, check=200, c_array=True)
    return {"model": run / "model.keras",
            **{p.name: p for p in (run / "export").glob("r20-*")},
            "report": json.loads((run / "export" / "export_report.json").read_text())}


TINY_CLASSES = ["ant", "bee", "cat"]


def tiny_metadata(classes=TINY_CLASSES, size: int = 8) -> dict:
    """The metadata edgel2 export writes, for a tiny model (only what the runtime reads)."""
    return {"producer": "edgel2 test", "class_names": list(classes),
            "input": {"name": "images", "layout": "NHWC", "dtype": "uint8",
                      "shape": [None, size, size, 3]}}


def make_tiny_onnx(path: Path, metadata: dict | None = None, classes: int = 3,
                   size: int = 8) -> Path:
    """A few-hundred-byte ONNX classifier, made in the test: uint8 ``[N, size, size, 3]`` in,
    logits ``[N, classes]`` out = mean colour x W + log(sum of the mean colour), so that a black
    image gives -inf logits (the non-finite case). ``metadata`` values are stored as JSON, as
    edgel2 export stores them (a str is stored as it is)."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 100
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["pixels", "hw"], ["mean"], keepdims=0),
         helper.make_node("ReduceSum", ["mean", "c"], ["total"], keepdims=1),
         helper.make_node("Log", ["total"], ["log_total"]),
         helper.make_node("MatMul", ["mean", "w"], ["scores"]),
         helper.make_node("Add", ["scores", "log_total"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "hw"),
         numpy_helper.from_array(np.array([1], np.int64), "c"),
         numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = tiny_metadata(TINY_CLASSES[:classes] if classes <= 3 else
                         [f"c{i}" for i in range(classes)], size) if metadata is None else metadata
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    """A valid tiny edgel2 ONNX model (3 classes, 8x8 input)."""
    return make_tiny_onnx(tmp_path / "tiny.onnx")
