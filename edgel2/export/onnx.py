"""Keras -> ONNX through tf2onnx, and ONNX Runtime's fp16 / dynamic / static int8 variants.

tf2onnx's ``from_keras`` breaks on Keras 3 models (onnx/tensorflow-onnx#2329), so the model
is traced as a ``tf.function`` with an explicit uint8 input signature and converted with
``from_function``; ``training=False`` keeps training-only ops (FeatureL2, dropout) out.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from edgel2.errors import EdgeL2Error, OptionError
from edgel2.runtime.modelfile import UNKNOWN_OPS
from edgel2.runtime.onnxfile import graph_sha256
from edgel2.unknown.scores import int8_columns

MIN_OPSET = 17
MAX_OPSET = 18  # the newest opset tf2onnx 1.17 writes (pyproject pins tf2onnx < 1.18)
# How int8 quantization picks its ranges, and on how many class-balanced training images (the
# representative images, TFLite's word): the first method is the default.
INT8_METHODS = ("minmax", "entropy", "percentile")
INT8_IMAGES = 512


def check_opset(opset: int) -> None:
    """Refuse opsets below 17 or above the newest that the installed tf2onnx knows."""
    import tf2onnx

    newest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    if not MIN_OPSET <= opset <= newest:
        raise OptionError(f"opset {opset} is not supported: edgel2 exports opset {MIN_OPSET} to "
                          f"{newest} (the newest tf2onnx {tf2onnx.__version__} can write)")


def to_onnx(model, opset: int = MIN_OPSET, batch: int | None = None):
    """The float32 model as an ``onnx.ModelProto``: input ``images`` (uint8 NHWC, dynamic
    batch), output ``logits`` (float32), and ``unknown_score`` when the model has it."""
    import tensorflow as tf
    import tf2onnx

    check_opset(opset)
    from edgel2.export.source import named_outputs

    spec = [tf.TensorSpec([batch, *model.input.shape[1:]], tf.uint8, name="images")]
    def outputs(images):
        return named_outputs(model(images, training=False))

    serve = tf.function(outputs, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    return proto


def to_fp16(proto):
    """Weights and compute in float16; the uint8 input and float32 output stay as they are."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True)


def quantize_dynamic(src: Path, dst: Path) -> None:
    """Dynamic-range quantization: int8 weights, activations quantized at run time. ORT's
    advice to pre-process first (logged on the root logger on every call) is for static
    quantization's calibration; it is kept out of the command's output."""
    import logging

    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    def not_the_advice(record: logging.LogRecord) -> bool:
        return "consider to run pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(not_the_advice)
    try:
        ort_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(not_the_advice)


def quantize_int8(src: Path, dst: Path, representative: np.ndarray, method: str = "minmax",
                  batch: int | None = None,
                  fold_input: bool = True) -> None:
    """Static QDQ int8: int8 per-channel weights within +-64 (7 bits,
    :data:`edgel2.export.qdq.WEIGHT_QMAX`), uint8 activations (the variant whose
    convolutions fuse into integer kernels on x86), after ``quant_pre_process``, calibrated
    on the ``representative`` images (uint8 NHWC). ``fold_input`` then lets the stem convolution read
    the uint8 pixels directly (:mod:`edgel2.export.qdq`), where the graph allows it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in INT8_METHODS:
        raise EdgeL2Error(f"unknown int8 method {method!r}; choose {', '.join(INT8_METHODS)}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            # a fixed-batch graph takes exactly `batch` images a call (the rest are left out)
            self.batches = iter(np.array_split(representative, max(1, len(representative) // 64))
                                if batch is None else
                                [representative[i:i + batch]
                                 for i in range(0, len(representative) - batch + 1, batch)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            reduce_range=True,  # weights within +-WEIGHT_QMAX: exact on CPUs without VNNI
            nodes_to_exclude=float_nodes(onnx.load(str(prepared))),
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"CalibTensorRangeSymmetric": False})
    onnx.save(int8_float_weights(onnx.load(str(dst))), str(dst))
    if fold_input:
        from edgel2.export.qdq import NotFoldable, fold_input_normalization

        try:
            onnx.save(fold_input_normalization(onnx.load(str(dst))), str(dst))
        except NotFoldable:
            pass  # a graph edgel2 did not build (no Normalize layer): keep it as quantized


def float_nodes(proto) -> list[str]:
    """The nodes int8 quantization leaves in float: the unknown score's distance, whose
    squares of differences an 8-bit grid would round away (0.9M multiply-adds, about 0.2 %
    of the ResNet-18's)."""
    return [node.name for node in proto.graph.node if UNKNOWN_OPS.search(node.name)]


def int8_float_weights(proto):
    """Store the matrices of the nodes left in float (:func:`float_nodes`) as int8 with a
    per-column scale and a ``DequantizeLinear`` in front: the unknown score's projection
    (960x960) takes 0.9 MB instead of 3.5 MB and, fitted on the int8 grid
    (:func:`edgel2.unknown.scores.on_int8_grid`), is stored exactly; the distance itself is
    still computed in float."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in proto.graph.initializer}
    wanted = set(float_nodes(proto))
    for node in list(proto.graph.node):
        if node.name not in wanted or node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        if weight.ndim != 2:
            continue
        steps, scale = int8_columns(weight)
        name = node.input[1]
        proto.graph.initializer.remove(initializers[name])
        proto.graph.initializer.extend([
            numpy_helper.from_array(steps, f"{name}_int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zero_point")])
        proto.graph.node.insert(list(proto.graph.node).index(node), helper.make_node(
            "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"], [name],
            name=f"{node.name}_weights", axis=1))
    return proto


def integer_conv_share(path: Path) -> tuple[int, int]:
    """(integer convolutions, all convolutions) in the graph ONNX Runtime's CPU provider
    actually runs after all optimizations: the test that int8 QDQ fused as it should."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # no warning about hardware-specific optimized files
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    integer = sum(op in ("QLinearConv", "ConvInteger") for op in ops)
    return integer, integer + sum(op in ("Conv", "FusedConv", "NchwcConv") for op in ops)


# The version of what edgel2 writes into a file's header and metadata (ONNX model_version).
FILE_LAYOUT_VERSION = 1


def set_metadata(path: Path, metadata: dict[str, str], keep_others: bool = False) -> None:
    """Replace the file's ``metadata_props`` with ``metadata`` (string values); with
    ``keep_others``, only the keys in ``metadata`` (other tools' entries stay as they are).
    Every ONNX file edgel2 writes passes through here, so this is also where its header is
    made what generic tools expect (:func:`tidy_header`)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props
            if keep_others and p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        if key != "weights_sha256":  # recomputed below, for the graph as saved
            proto.metadata_props.add(key=key, value=value)
    tidy_header(proto)
    # the checksum the runtime verifies at open: of the graph's bytes, which the metadata
    # does not touch (a separate field of the ModelProto)
    graph = graph_sha256(proto.SerializeToString())
    proto.metadata_props.add(key="weights_sha256", value=json.dumps(graph))
    onnx.save(proto, str(path))
    if graph_sha256(path.read_bytes()) != graph:  # protobuf serializes deterministically
        raise EdgeL2Error(f"{path.name}: the graph changed while it was saved")


# A dynamic-range file slower than fp32 by more than this is flagged in the export report.
SLOW_FACTOR = 1.5


def slowdown(path: Path, reference: Path, batch: int = 32, rounds: int = 3) -> float:
    """Seconds per batch of ``path`` over those of ``reference`` on ONNX Runtime here (the
    best of ``rounds``, interleaved). Dynamic-range files run ``ConvInteger`` with the
    activations quantized at run time, which on many CPUs is several times slower than fp32.
    """
    import onnxruntime as ort

    images = np.random.default_rng(0).integers(0, 256, (batch, *_input_hwc(reference)), np.uint8)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (path, reference)]
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, {session.get_inputs()[0].name: images})
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] / best[1]


def _input_hwc(path: Path) -> list[int]:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims[1:]]


def tidy_header(proto) -> None:
    """What generic ONNX tools read, filled truthfully: producer edgel2 and its version, a
    doc string, the file layout version; the batch dimension named ``batch`` (tf2onnx names
    it ``unk__NNN``) everywhere it appears; no opset imports that no node uses (the ORT
    quantizer declares ``com.microsoft``, ``ai.onnx.training`` and others).

    Examples:
        >>> from onnx import TensorProto, helper
        >>> graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__7", 2])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["unk__7", 2])])
        >>> proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
        ...                                                 helper.make_opsetid("com.microsoft", 1)])
        >>> tidy_header(proto)
        >>> proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, [o.domain for o in proto.opset_import]
        ('batch', [''])
    """
    from edgel2 import __version__

    proto.producer_name, proto.producer_version = "edgel2", __version__
    proto.model_version = FILE_LAYOUT_VERSION
    proto.doc_string = ("edgel2 image classifier: uint8 NHWC images [batch, height, width, 3] in "
                        "(normalization inside), float32 logits [batch, classes] out. Class "
                        "names, input size, calibration and measured accuracy are in "
                        "metadata_props.")
    graph = proto.graph
    batch = {_first_dim(v) for v in [*graph.input, *graph.output]} - {None, "batch"}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in batch:
                dim.dim_param = "batch"
    used = {node.domain or "" for node in graph.node} | {""}
    kept = [o for o in proto.opset_import if (o.domain or "") in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)


def _first_dim(value) -> str | None:
    dims = value.type.tensor_type.shape.dim
    return dims[0].dim_param if dims and dims[0].HasField("dim_param") else None


def write_onnx(model, path: Path, precision: str, opset: int,
               representative: np.ndarray | None, int8_method: str,
               batch: int | None = None) -> float | None:
    """Write ``model`` as ONNX at ``precision`` (fp32, fp16, dynamic, int8) to ``path``. For
    ``dynamic``, return how many times slower than the fp32 file it runs here (see
    :func:`slowdown`)."""
    import onnx

    proto = to_onnx(model, opset, batch)
    if precision == "fp32":
        onnx.save(proto, str(path))
    elif precision == "fp16":
        onnx.save(to_fp16(proto), str(path))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            onnx.save(proto, str(fp32))
            if precision == "dynamic":
                quantize_dynamic(fp32, path)
                return slowdown(path, fp32)
            elif representative is None:
                raise ValueError("int8 export needs representative images")
            else:
                quantize_int8(fp32, path, representative, int8_method, batch)
    os.chmod(path, 0o644)
    return None


# The writer interface every format's module offers (edgel2.export.writers.Writer).

def check(config) -> None:
    """Refuse options this writer cannot honour (an opset tf2onnx does not write)."""
    check_opset(config.opset)


def refuses(precision: str, config) -> str | None:
    """Why this writer does not write ``precision`` with ``config`` (None: it does)."""
    return None


def write(model, path: Path, precision: str, config, representative: np.ndarray | None) -> dict:
    """Write ``model`` at ``precision`` to ``path``; what the export report adds to its row:
    for dynamic, how much slower than fp32 it runs here (and advice when that is a lot); for
    int8, how many convolutions run as integer kernels."""
    slower = write_onnx(model, path, precision, config.opset, representative,
                        config.int8_method, config.batch)
    extra: dict = {}
    if slower is not None:
        extra["slower_than_fp32"] = slower
        if slower > SLOW_FACTOR:
            extra["advice"] = (f"runs {slower:.1f}x slower than fp32 on this machine "
                               "(activations quantized at run time): prefer int8 or fp32")
    if precision == "int8":
        integer, total = integer_conv_share(path)
        extra["integer_convs"] = f"{integer}/{total}"
    return extra


def metadata_value(value) -> str:
    """A metadata value as ONNX stores it: a string as it is, so that generic readers show
    it without quotes, unless it would read as JSON; anything else as JSON. So
    :func:`edgel2.runtime.modelfile.decode_onnx_metadata` gets back exactly what was written.

    Examples:
        >>> [metadata_value(v) for v in ["edgel2 0.1.0", "1e5", 0.5, ["cat"]]]
        ['edgel2 0.1.0', '"1e5"', '0.5', '["cat"]']
    """
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def companions(path: Path, precision: str, config, metadata: dict, row: dict) -> list[Path]:
    """Files written beside ``path`` once it is in place: none for ONNX."""
    return []


def embed_metadata(path: Path, metadata: dict, update: bool = False) -> None:
    """Write ``metadata`` into the file's ``metadata_props`` (JSON values); ``update`` changes
    only the keys in ``metadata`` and keeps the rest."""
    set_metadata(path, {k: metadata_value(v) for k, v in metadata.items()}, keep_others=update)
