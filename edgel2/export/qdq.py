"""Rewrite the front of a static-int8 QDQ graph so the stem convolution reads the uint8 pixels.

After ``quantize_static`` the graph starts ``Cast -> Sub(mean) -> Q -> DQ -> Mul(1/std) -> Q ->
DQ -> Transpose -> Q -> DQ -> Conv``: float pre-processing that ONNX Runtime runs on every pixel
before the first integer kernel (about 3 % of the run time at batch 64), and a stem convolution
with 3 input channels, which MLAS's symmetric (indirect, VNNI) kernel refuses because it wants a
multiple of 4, so the stem falls back to im2col and a generic GEMM.

:func:`fold_input_normalization` turns that into ``Pad(channel 4, value z) -> DQ(1/s, z) ->
Transpose -> Q -> DQ -> Conv``: the pixels *are* the stem's quantized input, with one scalar zero
point ``z`` (the rounded mean pixel) and scale ``1/s`` (``s`` the mean std), and the per-channel
``(x - mean_c) / std_c`` is folded into the stem's weights and bias (:func:`fold_stem`). That is
exact wherever the 3x3 window lies inside the image; on the one-pixel border the zero padding of
the original graph stood for ``x = mean_c`` and now stands for ``x = z``, an error of
``|z - mean_c| / std_c`` (at most 0.11 for the CIFAR-10 statistics) on the padded taps only. In
exchange the input is no longer rounded to an activation grid at all. The export check measures
the whole effect against Keras, like every other file.
"""
from __future__ import annotations

import numpy as np

from edgel2.errors import EdgeL2Error
from edgel2.stem import PREFIX, fold_stem

# The op types from the graph input to the stem convolution that quantize_static writes for
# edgel2's Normalize layer followed by tf2onnx's NHWC -> NCHW transpose.
FRONT = ["Cast", "Sub", "QuantizeLinear", "DequantizeLinear", "Mul", "QuantizeLinear",
         "DequantizeLinear", "Transpose", "QuantizeLinear", "DequantizeLinear", "Conv"]


# The largest |int8 weight| of an integer kernel: 7 bits, as onnxruntime's `reduce_range`
# quantizes them. x86 CPUs without VNNI (AVX2 only: AMD Zen 1-3, Intel before Cascade Lake)
# multiply uint8 activations by int8 weights with VPMADDUBSW, which adds each pair of products
# into a saturating int16; at |w| <= 64 a pair stays within 2 * 255 * 64 = 32,640 < 32,767, so
# ONNX Runtime and OpenVINO compute the same exact integer sums on every CPU. At the full 127
# the shipped int8 ResNet-18 and ResNet-20 scored 1.8 and 4.4 points less on an AVX2-only EPYC
# than on AVX-512 VNNI (measured on the 10,000 CIFAR-10-JPEG test images).
WEIGHT_QMAX = 64


class NotFoldable(EdgeL2Error):
    """The graph does not start the way :data:`FRONT` says; it is left as it is."""


def fold_input_normalization(proto, channel_multiple: int = 4):
    """``proto`` (an int8 QDQ ``onnx.ModelProto`` from ``quantize_static``) with its float input
    normalization folded into the stem convolution, as the module says; changed in place.
    Raises :class:`NotFoldable` when the graph does not start as expected.

    Examples:
        >>> folded = fold_input_normalization(onnx.load("model-int8.onnx"))  # doctest: +SKIP
        >>> [n.op_type for n in folded.graph.node][:2]                         # doctest: +SKIP
        ['Pad', 'DequantizeLinear']
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    image = graph.input[0].name
    const = _Constants(graph)
    chain = _front(graph)
    sub, mul, transpose, conv = chain[1], chain[4], chain[7], chain[10]
    mean = const(_operand_off(sub, chain)).reshape(-1)
    std = 1.0 / const(_operand_off(mul, chain)).reshape(-1)
    if len(conv.input) < 3:
        raise NotFoldable("the stem convolution has no bias")
    w_dq, b_dq = const.producer[conv.input[1]], const.producer[conv.input[2]]
    w_q, w_scale, w_zero = (const.raw(name) for name in w_dq.input)
    if w_q.dtype != np.int8 or np.any(w_zero != 0):
        raise NotFoldable("the stem's weights are not symmetric int8")
    bias = const(conv.input[2])
    weights = w_q.astype(np.float64) * w_scale.reshape(-1, 1, 1, 1)
    weights, bias, zero_point, scale = fold_stem(weights, bias, mean, std, channel_multiple)

    # Requantize as quantize_static does: symmetric 7-bit int8 per output channel, int32 bias.
    w_q, w_scale = symmetric_int8(weights, axis=0)
    b_scale = scale * w_scale
    values: dict[str, np.ndarray] = {
              "scale": np.array(scale, np.float32), "zero_point": np.array(zero_point, np.uint8),
              "w": w_q, "w_scale": w_scale.astype(np.float32), "w_zero": np.zeros(len(w_q), np.int8),
              "b": np.round(bias / b_scale).astype(np.int32), "b_scale": b_scale.astype(np.float32),
              "b_zero": np.zeros(len(w_q), np.int32)}
    extra = w_q.shape[1] - len(mean)
    if extra:
        rank = len(graph.input[0].type.tensor_type.shape.dim)
        values["pads"] = np.zeros(2 * rank, np.int64)
        values["pads"][-1] = extra                  # at the end of the last (channel) axis

    def name(key: str) -> str:
        return PREFIX + key

    graph.initializer.extend(numpy_helper.from_array(v, name(k)) for k, v in values.items())
    q_params = [name("scale"), name("zero_point")]
    front = [helper.make_node("DequantizeLinear", [name("pad") if extra else image, *q_params],
                              [name("pixels")], name=name("DequantizeLinear"))]
    if extra:
        front.insert(0, helper.make_node("Pad", [image, name("pads"), name("zero_point")],
                                         [name("pad")], name=name("Pad"), mode="constant"))
    transpose.input[0] = name("pixels")
    for qdq in chain[8:10]:                         # the Q/DQ pair between Transpose and Conv
        qdq.input[1:3] = q_params
    w_dq.input[:] = [name("w"), name("w_scale"), name("w_zero")]
    b_dq.input[:] = [name("b"), name("b_scale"), name("b_zero")]

    # Shapes recorded for the old tensors no longer hold (3 channels became 4).
    stale = {o for n in chain for o in n.output}
    kept_info = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    nodes = front + [n for n in graph.node if n not in chain[:7]]
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_dead_code(graph)
    onnx.checker.check_model(proto)
    return proto


def symmetric_int8(weights: np.ndarray, axis: int | None,
                   qmax: int = WEIGHT_QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization of float ``weights``, as ``quantize_static`` does it: one
    scale per slice along ``axis`` (None: one for the whole tensor) mapping its largest
    magnitude to ``qmax``. Returns ``(q, scale)`` with ``q`` int8 in ``[-qmax, qmax]``.

    Examples:
        >>> q, scale = symmetric_int8(np.array([[0.5, -1.0], [0.25, 0.0]]), axis=0)
        >>> q.tolist(), scale.tolist()
        ([[32, -64], [64, 0]], [0.015625, 0.00390625])
    """
    others = tuple(i for i in range(weights.ndim) if i != axis) if axis is not None else None
    scale = np.maximum(np.abs(weights).max(axis=others), 1e-12) / qmax
    shape = [-1 if i == axis else 1 for i in range(weights.ndim)] if axis is not None else []
    q = np.clip(np.round(weights / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def narrow_weights(proto, qmax: int = WEIGHT_QMAX) -> int:
    """Requantize the int8 weights of every integer convolution and matrix product of a QDQ
    ``proto`` to ``|q| <= qmax`` (per output channel, as the file stores them), with their
    int32 biases to match; changed in place. This brings an int8 ONNX exported with the full
    int8 range (edgel2 before 7-bit weights) to what :func:`~edgel2.export.onnx.quantize_int8`
    now writes, without the float model. Returns how many weights it requantized.

    Examples:
        >>> narrow_weights(onnx.load("model-int8.onnx"))  # doctest: +SKIP
        22
    """
    from onnx import numpy_helper

    graph = proto.graph
    const = _Constants(graph)

    def store(name: str, array: np.ndarray) -> None:
        const.inits[name].CopyFrom(numpy_helper.from_array(array, name))

    narrowed = 0
    for node in graph.node:
        data = const.producer.get(node.input[0])
        # integer kernels only: their data comes quantized too (the unknown score's projection,
        # int8 in the file but computed in float, keeps its exact grid)
        if node.op_type not in ("Conv", "Gemm", "MatMul") or data is None or \
                data.op_type != "DequantizeLinear":
            continue
        w_dq = const.producer.get(node.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in const.inits:
            continue
        w_q, w_scale = const.raw(w_dq.input[0]), const.raw(w_dq.input[1]).astype(np.float64)
        if w_q.dtype != np.int8 or np.abs(w_q.astype(np.int32)).max() <= qmax:
            continue
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1) % w_q.ndim
        shape = [-1 if i == axis else 1 for i in range(w_q.ndim)] if w_scale.ndim else []
        new_q, new_scale = symmetric_int8(w_q * w_scale.reshape(shape),
                                          axis if w_scale.ndim else None, qmax)
        store(w_dq.input[0], new_q)
        store(w_dq.input[1], new_scale.astype(np.float32))
        b_dq = const.producer.get(node.input[2]) if len(node.input) > 2 else None
        if b_dq is not None and b_dq.op_type == "DequantizeLinear" and \
                b_dq.input[0] in const.inits:
            # an int32 bias is on the grid of input scale x weight scale: move it with the weights
            b_scale = const.raw(b_dq.input[1]).astype(np.float64)
            bias = const.raw(b_dq.input[0]) * b_scale
            new_b_scale = b_scale / w_scale * new_scale
            store(b_dq.input[0], np.round(bias / new_b_scale).astype(np.int32))
            store(b_dq.input[1], new_b_scale.astype(np.float32))
        narrowed += 1
    return narrowed


class _Constants:
    """Constant tensors of a graph: initializers, or DequantizeLinear of initializers."""

    def __init__(self, graph):
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}

    def raw(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        if name not in self.inits:
            raise NotFoldable(f"{name!r} is not an initializer")
        return numpy_helper.to_array(self.inits[name])

    def __call__(self, name: str) -> np.ndarray:
        """The float value of ``name``."""
        if name in self.inits:
            return self.raw(name).astype(np.float64)
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise NotFoldable(f"{name!r} is not a constant")
        q, scale, zero = (self.raw(i) for i in dq.input)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale.ndim:                              # per-axis: broadcast along `axis`
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (q.astype(np.float64) - zero) * scale


def _front(graph) -> list:
    """The nodes from the graph input to the first Conv, checked against :data:`FRONT`."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chain: list = []
    tensor = graph.input[0].name
    while len(chain) < len(FRONT) and (not chain or chain[-1].op_type != "Conv"):
        nodes = consumers.get(tensor, [])
        if len(nodes) != 1:
            raise NotFoldable(f"{tensor!r} feeds {len(nodes)} nodes, expected one")
        chain.append(nodes[0])
        tensor = nodes[0].output[0]
    if [n.op_type for n in chain] != FRONT:
        raise NotFoldable(f"the graph starts {', '.join(n.op_type for n in chain)}, not "
                          f"{', '.join(FRONT)}")
    return chain


def _operand_off(node, chain) -> str:
    """The operand of a binary node (Sub, Mul) that does not come along ``chain``."""
    along = {o for n in chain for o in n.output}
    return next(name for name in node.input if name not in along)


def _drop_dead_code(graph) -> None:
    """Remove nodes whose outputs nothing reads (the old constants' DequantizeLinear), then
    initializers that no node reads."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        alive = [n for n in graph.node if n not in dead]
        del graph.node[:]
        graph.node.extend(alive)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
