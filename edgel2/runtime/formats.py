"""Every file format edgel2 writes and every engine that runs one: one row each.

Adding a format is a row in :data:`FILE_FORMATS`, a writer module in :mod:`edgel2.export`
(``write``, ``embed_metadata``, ``refuses``: see :mod:`edgel2.export.onnx`), and, in the
runtime, an engine class with the file's metadata reader and weights checksum (a row in
:data:`ENGINE_SPECS`). Everything else (the CLI's choices, file names, sniffing, the export
and benchmark loops, the serving metadata, the chart) reads these tables.

Code is named by dotted path (``"module:attribute"``), imported only when used: the table
itself imports nothing, so the CLI builds its ``--help`` from it, and the runtime never
imports the export modules it names.

Examples:
    >>> FILE_FORMATS["tflite"].suffix, FILE_FORMATS["onnx"].reference_engine
    ('.tflite', 'onnxruntime')
    >>> [e.name for e in engines_for("onnx")]
    ['openvino', 'onnxruntime']
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A TFLite flatbuffer carries its file identifier at bytes 4-8; an ONNX ModelProto starts with
# field 1 (ir_version, a varint), whose tag byte is 0x08.
TFLITE_IDENTIFIER = b"TFL3"
ONNX_FIRST_BYTE = b"\x08"


@dataclass(frozen=True)
class FileFormat:
    """A model file format: what export writes and the runtime opens."""

    name: str            # the --format value, the suffix without its dot, metadata "format"
    title: str           # as people write it
    reference_engine: str  # the engine export checks the file with against Keras
    kserve_platform: str   # the KServe v2 metadata's "platform" for it
    writer: str          # the edgel2.export module that writes it
    metadata_reader: str   # "module:function": path -> the metadata dict ({} if none)
    checksum: str        # "module:function": file bytes -> weights SHA-256 (None: not checkable)
    identifies: Callable[[bytes, str], bool]  # (first 8 bytes, lower-case suffix) -> is it
    check_before_open: str | None = None  # "module:function"(bytes, path): refuse before opening

    @property
    def suffix(self) -> str:
        return "." + self.name


@dataclass(frozen=True)
class EngineSpec:
    """An engine: the class that opens a file, the format it runs, what it is called."""

    name: str            # the --engine value
    title: str           # in tables and charts
    format: str          # the FileFormat it runs
    package: str         # its PyPI distribution (a new version measures `auto` again)
    opener: str          # "module:Class", an edgel2.runtime.engines.Engine with .open()
    color: str           # the benchmark chart's colour for its rows
    x86_only: bool = False  # `auto` tries it only on x86 CPUs (measured and checked there)
    on_gpu: bool = False    # whether it can run on a GPU (`auto` keeps only these there)
    # the rows `edgel2 benchmark` gives it beyond its format's reference rows ("bf16": the
    # fp32 file computed in bfloat16)
    benchmark_precisions: tuple[str, ...] = ()


# Each row says by itself whether a file is its format, so their order does not matter: ONNX
# has no identifier of its own (its first byte is a field tag that a TFLite file may also
# start with), so its rule yields to TFLite's identifier.
FILE_FORMATS: dict[str, FileFormat] = {f.name: f for f in (
    FileFormat("onnx", "ONNX", "onnxruntime", "onnxruntime_onnx", "edgel2.export.onnx",
               "edgel2.runtime.modelfile:onnx_metadata",
               "edgel2.runtime.onnxfile:edgel2_graph_sha256",
               lambda head, suffix: head[4:8] != TFLITE_IDENTIFIER
               and (head[:1] == ONNX_FIRST_BYTE or suffix == ".onnx"),
               check_before_open="edgel2.runtime.onnxfile:check_graph"),
    FileFormat("tflite", "TFLite", "litert", "tensorflow_lite", "edgel2.export.tflite",
               "edgel2.runtime.modelfile:tflite_metadata",
               "edgel2.runtime.modelfile:flatbuffer_sha256",
               lambda head, suffix: head[4:8] == TFLITE_IDENTIFIER),
)}

# In the order of the fixed rule's preference when `auto` does not race (fastest first on
# the Intel Xeon and AMD EPYC measured), which is also the race's order.
ENGINE_SPECS: dict[str, EngineSpec] = {e.name: e for e in (
    EngineSpec("openvino", "OpenVINO", "onnx", "openvino",
               "edgel2.runtime.engines:OpenVinoEngine", "tab:purple", x86_only=True,
               benchmark_precisions=("fp32", "bf16", "int8")),
    EngineSpec("onnxruntime", "ONNX Runtime", "onnx", "onnxruntime",
               "edgel2.runtime.engines:OnnxEngine", "tab:blue", on_gpu=True),
    EngineSpec("litert", "LiteRT", "tflite", "ai-edge-litert",
               "edgel2.runtime.engines:TFLiteEngine", "tab:orange"),
)}

FORMAT_NAMES = tuple(FILE_FORMATS)
MODEL_SUFFIXES = tuple(f.suffix for f in FILE_FORMATS.values())
ENGINE_FORMATS = {e.name: e.format for e in ENGINE_SPECS.values()}
REFERENCE_ENGINE = {f.name: f.reference_engine for f in FILE_FORMATS.values()}


def engines_for(fmt: str) -> list[EngineSpec]:
    """The engines that run files of format ``fmt``, in the fixed rule's order."""
    return [e for e in ENGINE_SPECS.values() if e.format == fmt]


def load(dotted: str) -> Any:
    """The object a table names as ``"module:attribute"``, imported now.

    Examples:
        >>> load("edgel2.runtime.formats:engines_for") is engines_for
        True
    """
    module, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module), attribute)
