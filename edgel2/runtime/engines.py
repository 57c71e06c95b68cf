"""One interface over ONNX Runtime sessions and LiteRT interpreters: uint8 NHWC batch in,
float32 logits out, plus the metadata that edgel2 packed into the file."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np


class Engine:
    """A loaded model file. ``run(batch)`` maps uint8 ``[N, H, W, C]`` to logits ``[N, classes]``."""

    path: Path
    metadata: dict

    def run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class OnnxEngine(Engine):
    def __init__(self, path: Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = _decode(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class TFLiteEngine(Engine):
    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self._batch = None
        self.metadata = read_metadata(path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._batch != len(batch):
            self.interpreter.resize_tensor_input(self.input_index, list(batch.shape))
            self.interpreter.allocate_tensors()
            self._batch = len(batch)
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(batch))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


def open_engine(path: str | os.PathLike, **kwargs) -> Engine:
    """Open an ``.onnx`` or ``.tflite`` file.

    Example:
        >>> engine = open_engine("models/resnet18-int8.onnx")     # doctest: +SKIP
        >>> engine.run(np.zeros((1, 32, 32, 3), np.uint8)).shape  # doctest: +SKIP
        (1, 10)
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxEngine(path, **kwargs)
    if path.suffix == ".tflite":
        return TFLiteEngine(path, threads=kwargs.get("threads"))
    raise ValueError(f"unknown model format {path.suffix!r} (want .onnx or .tflite)")


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata edgel2 wrote into an exported file ({} if there is none).

    ONNX keeps it in ``metadata_props`` (JSON values); TFLite in a zip appended to the
    flatbuffer (``edgel2.json``).
    """
    path = Path(path)
    if path.suffix == ".tflite":
        if not zipfile.is_zipfile(path):
            return {}
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("edgel2.json"))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _decode(session.get_modelmeta().custom_metadata_map)


def _decode(props: dict[str, str]) -> dict:
    """edgel2 stores JSON values; other tools (the ORT quantizer) add plain strings."""
    def value(text: str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return {key: value(text) for key, text in props.items()}
