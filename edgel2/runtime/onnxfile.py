"""An ONNX file read as the protobuf it is, without the ``onnx`` package (the runtime does not
depend on it): the bytes of its graph, for the weights checksum, and the constant shapes its
graph would allocate, checked before any engine builds it.

Only what these two checks need is decoded: the ModelProto's fields, the GraphProto's nodes and
initializers, and the small int64 tensors that serve as shapes. Field numbers are those of
``onnx.proto`` (ModelProto.graph = 7, GraphProto.node = 1 and .initializer = 5, NodeProto.input
= 1, .output = 2, .op_type = 4, .attribute = 5, AttributeProto.name = 1, .t = 5, TensorProto
.dims = 1, .data_type = 2, .int64_data = 7, .name = 8, .raw_data = 9, .data_location = 14).
"""
from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator
from typing import Any

from edgel2.errors import ModelError

# The most elements one constant-shaped tensor of the graph may have: 2^28 float32 values is
# 1 GiB, hundreds of times what an image classifier needs.
MAX_CONSTANT_ELEMENTS = 1 << 28
# Ops whose output size is set by a shape tensor (input index): ConstantOfShape makes one,
# Expand broadcasts to one.
_SHAPED_OPS = {"ConstantOfShape": 0, "Expand": 1}
_INT64 = 7  # TensorProto.DataType.INT64


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(data: bytes, start: int = 0, end: int | None = None
           ) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protobuf message in ``data[start:end]``: the
    value is an int for varints and fixed-width fields (wire types 0, 1, 5), the ``(start,
    end)`` of the bytes for length-delimited ones (wire type 2). :class:`ValueError` on a
    malformed message."""
    i, end = start, len(data) if end is None else end
    while i < end:
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | tuple[int, int]
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = int.from_bytes(data[i:i + 8], "little"), i + 8
        elif wire == 5:
            value, i = int.from_bytes(data[i:i + 4], "little"), i + 4
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = (i, i + length), i + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > end:
            raise ValueError("a field runs past the end of its message")
        yield number, wire, value


def graph_sha256(data: bytes) -> str:
    """The SHA-256 of the graph's bytes (the ModelProto's ``graph`` field: every node and
    weight, not the metadata), as ``edgel2 export`` records it in ``weights_sha256``.

    Examples:
        >>> graph_sha256(b"\\x08\\x07") == hashlib.sha256(b"").hexdigest()   # no graph at all
        True
    """
    digest = hashlib.sha256()
    for number, wire, value in fields(data):
        if number == 7 and wire == 2:
            digest.update(data[value[0]:value[1]])
    return digest.hexdigest()


def producer_name(data: bytes) -> str:
    """The ModelProto's ``producer_name`` (field 2): ``edgel2`` for the files edgel2 writes,
    ``onnx.quantize``, ``tf2onnx``... for files another tool wrote last."""
    for number, wire, value in fields(data):
        if number == 2 and wire == 2:
            return data[value[0]:value[1]].decode("utf-8", "replace")
    return ""


def edgel2_graph_sha256(data: bytes) -> str | None:
    """:func:`graph_sha256`, for a file edgel2 wrote last; None for one another tool rewrote
    while keeping edgel2's metadata (a quantizer, a simplifier: a new file, not a corrupted
    one), which its recorded checksum no longer describes."""
    return graph_sha256(data) if producer_name(data) == "edgel2" else None


def check_graph(data: bytes, path: str | os.PathLike[str]) -> None:
    """Refuse (:class:`ModelError`) a graph that would allocate a constant-shaped tensor of more
    than :data:`MAX_CONSTANT_ELEMENTS` elements (ConstantOfShape, Expand) when an engine builds
    or first runs it (engines fold such constants while they load, before any memory limit of
    ours could act), or whose weights are in a separate file (external data: engines would
    read whatever path it names)."""
    name = getattr(path, "name", str(path))
    try:
        graphs = [v for n, w, v in fields(data) if n == 7 and w == 2]
        for start, end in graphs:
            _check_shaped_ops(data, start, end, name)
    except ModelError:
        raise
    except ValueError as e:
        raise ModelError(f"cannot load {path}: not a valid ONNX file ({e})") from None


def _check_shaped_ops(data: bytes, start: int, end: int, name: str) -> None:
    shapes: dict[str, list[int]] = {}  # small int64 tensors by name: candidate shapes
    nodes = []
    for number, wire, value in fields(data, start, end):
        if wire != 2:
            continue
        if number == 5:  # an initializer
            if _stored_outside(data, *value):
                raise ModelError(f"{name}: its weights are kept in a separate file (ONNX "
                                 "external data), which edgel2 does not load; save the model as "
                                 "one file (onnx.save(model, path))")
            found = _int64_tensor(data, *value)
            if found is not None:
                shapes[found[0]] = found[1]
        elif number == 1:
            nodes.append(_node(data, *value))
    for op_type, _, outputs, tensors in nodes:
        if op_type == "Constant" and outputs and tensors:
            shapes[outputs[0]] = tensors[0]
    for op_type, inputs, _, _ in nodes:
        index = _SHAPED_OPS.get(op_type)
        if index is None or len(inputs) <= index or inputs[index] not in shapes:
            continue
        elements = math.prod(max(d, 1) for d in shapes[inputs[index]])
        if elements > MAX_CONSTANT_ELEMENTS:
            raise ModelError(f"{name}: its graph makes a {op_type} tensor of {elements:,} "
                             f"elements (limit {MAX_CONSTANT_ELEMENTS:,}): refused")


def _node(data: bytes, start: int, end: int) -> tuple[str, list[str], list[str], list[Any]]:
    op_type, inputs, outputs, tensors = "", [], [], []
    for number, wire, value in fields(data, start, end):
        if wire != 2:
            continue
        text = data[value[0]:value[1]]
        if number == 1:
            inputs.append(text.decode("utf-8", "replace"))
        elif number == 2:
            outputs.append(text.decode("utf-8", "replace"))
        elif number == 4:
            op_type = text.decode("utf-8", "replace")
        elif number == 5:  # an attribute: a Constant's value is its tensor t
            for n, w, v in fields(data, *value):
                if n == 5 and w == 2:
                    found = _int64_tensor(data, *v)
                    if found is not None:
                        tensors.append(found[1])
    return op_type, inputs, outputs, tensors


def _stored_outside(data: bytes, start: int, end: int) -> bool:
    """Whether a TensorProto's data_location (field 14) is EXTERNAL (1)."""
    return any(n == 14 and w == 0 and v == 1 for n, w, v in fields(data, start, end))


def _int64_tensor(data: bytes, start: int, end: int) -> tuple[str, list[int]] | None:
    """(name, values) of a TensorProto that is a small int64 vector (a shape), else None."""
    dims, data_type, name, values, raw = [], None, "", [], b""
    for number, wire, value in fields(data, start, end):
        if number == 1:
            dims += _ints(data, wire, value)
        elif number == 2 and wire == 0:
            data_type = value
        elif number == 7:
            values += _ints(data, wire, value)
        elif number == 8 and wire == 2:
            name = data[value[0]:value[1]].decode("utf-8", "replace")
        elif number == 9 and wire == 2:
            raw = data[value[0]:value[1]]
    if data_type != _INT64 or len(dims) > 1 or (dims and dims[0] > 16):
        return None
    if raw:
        values = list(struct.unpack(f"<{len(raw) // 8}q", raw[:len(raw) // 8 * 8]))
    return name, values


def _ints(data: bytes, wire: int, value: Any) -> list[int]:
    """A repeated int64 field's values, packed (wire type 2) or not; as signed numbers."""
    if wire == 0:
        out = [value]
    elif wire == 2:
        out, i = [], value[0]
        while i < value[1]:
            number, i = _varint(data, i)
            out.append(number)
    else:
        return []
    return [v - (1 << 64) if v >= 1 << 63 else v for v in out]
