"""What a model file is and what it says about itself: its format, sniffed from its first
bytes; the metadata edgel2 packed into it, read within fixed bounds; and that metadata checked
against the graph, so a file that lies about itself is refused when it is opened instead of
giving wrong labels later.

Numpy and the standard library only (onnxruntime for the ONNX metadata).
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgel2.errors import ModelError, first_line
from edgel2.runtime.formats import FILE_FORMATS, MODEL_SUFFIXES, load

# Bounds on the zip appended to a .tflite: edgel2.json is a few KB, labels.txt smaller still.
MAX_METADATA_BYTES = 1 << 20
MAX_ZIP_UNCOMPRESSED = 16 << 20
METADATA_NAME = "edgel2.json"
# The second output of a file with an unknown score: [N, 1] float32, higher is less like the classes
UNKNOWN_OUTPUT = "unknown_score"
# Its ops in an exported ONNX graph, by tf2onnx's names ("<model>_1/unknown_score_1/MatMul"):
# the layer's own, not the pooling that feeds it
UNKNOWN_OPS = re.compile(r"/unknown_score(_\d+)?/")
# The largest input side a model may declare: a classifier's input is a few hundred pixels;
# 20000x20000 in the metadata would make every image a 1.2 GB tensor.
MAX_INPUT_SIDE = 4096


def sniff_format(path: str | os.PathLike[str]) -> str:
    """The format of a model file, from its first bytes (any suffix, any case).

    Args:
        path: The file.

    Returns:
        The format's name (``"onnx"``, ``"tflite"``: :data:`~edgel2.runtime.formats.FILE_FORMATS`).

    Raises:
        ModelError: For a missing, special or unrecognised file.

    Examples:
        >>> sniff_format("models/resnet18-int8.tflite")   # doctest: +SKIP
        'tflite'
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ModelError(f"model path is a folder, not a file: {path}")
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"model path is not a regular file: {path}")
        if info.st_size == 0:
            raise ModelError(f"model file is empty: {path}")
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelError(f"model file does not exist: {path}") from None
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror or e}") from None
    suffix = path.suffix.lower()
    for fmt in FILE_FORMATS.values():
        if fmt.identifies(head, suffix):
            return fmt.name
    titles = ", ".join(f.title for f in FILE_FORMATS.values())
    raise ModelError(f"{path} is not a model file of a format edgel2 reads ({titles}): its "
                     f"first bytes are {head[:8]!r}")


# A folder holding several precisions of one model runs the first of these it holds.
FOLDER_PRECISIONS = ("int8", "fp32", "fp16", "dynamic")


def model_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files that are one model: ``path`` itself, or, for a folder (an export folder,
    ``models/``), its ONNX and TFLite files of one name and precision
    (``resnet18-int8.onnx`` and ``resnet18-int8.tflite``), either of which ``auto`` may run.
    A folder of several precisions of one model gives the first of
    :data:`FOLDER_PRECISIONS` it holds; of several models, a :class:`ModelError` naming them.

    Examples:
        >>> [p.name for p in model_files("models")]     # doctest: +SKIP
        ['resnet18-int8.onnx', 'resnet18-int8.tflite']
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    try:
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())
    except OSError as e:
        raise ModelError(f"cannot read the model folder {path}: {e.strerror or e}") from None
    stems = sorted({p.stem for p in files})
    if not stems:
        raise ModelError(f"no {' or '.join(MODEL_SUFFIXES)} model in the folder {path}")
    names = {stem.rsplit("-", 1)[0] for stem in stems}
    stem = stems[0] if len(stems) == 1 else None
    if stem is None and len(names) == 1:
        name = names.pop()
        stem = next((f"{name}-{p}" for p in FOLDER_PRECISIONS if f"{name}-{p}" in stems), None)
    if stem is None:
        raise ModelError(f"the folder {path} holds several models ({', '.join(stems)}): "
                         "pass one of its files")
    return [p for p in files if p.stem == stem]


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata edgel2 wrote into an exported file.

    ONNX keeps it in ``metadata_props`` (JSON values); TFLite in a zip appended to the
    flatbuffer (``edgel2.json``), read within :data:`MAX_METADATA_BYTES` and
    :data:`MAX_ZIP_UNCOMPRESSED`.

    Args:
        path: An exported file of any format edgel2 reads.

    Returns:
        The metadata ({} for a file without edgel2's).

    Examples:
        >>> read_metadata("models/resnet18-int8.onnx")["class_names"][:2]   # doctest: +SKIP
        ['airplane', 'automobile']
    """
    path = Path(path)
    metadata: dict[str, Any] = load(FILE_FORMATS[sniff_format(path)].metadata_reader)(path)
    return metadata


def onnx_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, as ONNX Runtime reads them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # errors reach the user as exceptions, in one line
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                       enable_fallback=0)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
        raise ModelError(f"cannot load {path}: {first_line(e)}") from None
    return decode_onnx_metadata(session.get_modelmeta().custom_metadata_map)


def decode_onnx_metadata(props: dict[str, str]) -> dict[str, Any]:
    """edgel2 stores JSON values; other tools (the ORT quantizer) add plain strings."""
    def value(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return {key: value(text) for key, text in props.items()}


def tflite_metadata(path: Path) -> dict[str, Any]:
    """The ``edgel2.json`` packed into a .tflite file ({} if there is none), within bounds."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            total = sum(i.file_size for i in infos)
            if total > MAX_ZIP_UNCOMPRESSED:
                raise ModelError(f"{path}: the metadata zip would unpack to {total:,} bytes "
                                 f"(limit {MAX_ZIP_UNCOMPRESSED:,}): refused")
            info = next((i for i in infos if i.filename == METADATA_NAME), None)
            if info is None:
                return {}
            if info.file_size > MAX_METADATA_BYTES:
                raise ModelError(f"{path}: {METADATA_NAME} is {info.file_size:,} bytes "
                                 f"(limit {MAX_METADATA_BYTES:,}): refused")
            with z.open(info) as f:
                # zipfile inflates no more than the size the header states, then checks the
                # CRC: a bomb whose header lies fails there, having used the stated size only
                text = f.read(MAX_METADATA_BYTES)
    except zipfile.BadZipFile as e:
        if "File is not a zip file" in str(e):
            return {}  # a plain .tflite without edgel2's zip
        raise ModelError(f"{path}: unreadable metadata zip: {first_line(e)}") from None
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - encrypted entries, bad compression, CRC errors
        raise ModelError(f"{path}: unreadable metadata zip: {first_line(e)}") from None
    try:
        metadata = json.loads(text)
    except ValueError as e:
        raise ModelError(f"{path}: {METADATA_NAME} is not valid JSON: {first_line(e)}") from None
    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: {METADATA_NAME} is not a JSON object")
    return metadata


def file_precision(metadata: dict[str, Any]) -> str | None:
    """The file's precision (``fp32``, ``fp16``, ``dynamic``, ``int8``) as its metadata
    records it: ``precision``, or ``quantization`` in files exported before that name.

    Examples:
        >>> file_precision({"precision": "int8"}), file_precision({"quantization": "fp16"})
        ('int8', 'fp16')
    """
    value = metadata.get("precision", metadata.get("quantization"))
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class ModelInfo:
    """What a classifier needs from a model file, checked against its graph."""

    class_names: list[str]
    input_size: tuple[int, int]  # (width, height), as Pillow counts
    temperature: float = 1.0     # calibration: see classifier.calibrated_probabilities
    unsmooth: float = 0.0
    # the unknown score above which an image is none of the classes (None: no threshold)
    unknown_threshold: float | None = None


def unknown_threshold(metadata: dict[str, Any], name: str) -> float | None:
    """The file's unknown threshold (metadata ``unknown.threshold``), or None when it has
    none; a value that is not a finite number is a :class:`ModelError`.

    Examples:
        >>> unknown_threshold({"unknown": {"threshold": 1.5}}, "m.onnx"), unknown_threshold({}, "m.onnx")
        (1.5, None)
    """
    entry = metadata.get("unknown")
    if entry is None:
        return None
    threshold: Any = entry.get("threshold") if isinstance(entry, dict) else entry
    if not _number(threshold) or not math.isfinite(threshold):
        raise ModelError(f"{name}: metadata unknown.threshold is {threshold!r}, not a number")
    return float(threshold)


def check_metadata(metadata: dict[str, Any], path: str | os.PathLike[str], input_shape: tuple[Any, ...],
                   input_dtype: str, output_shape: tuple[Any, ...]) -> ModelInfo:
    """The class names and input size, after checking that the metadata is well-formed and
    agrees with the graph: one ``[N, H, W, 3]`` uint8 input, ``[N, classes]`` output (the
    graph's shapes hold ints, and None where a dimension is dynamic).

    Examples:
        >>> meta = {"class_names": ["cat", "dog"],
        ...         "input": {"layout": "NHWC", "dtype": "uint8", "shape": [None, 32, 32, 3]}}
        >>> check_metadata(meta, "m.onnx", (None, 32, 32, 3), "uint8", (None, 2))
        ... # doctest: +NORMALIZE_WHITESPACE
        ModelInfo(class_names=['cat', 'dog'], input_size=(32, 32), temperature=1.0, unsmooth=0.0,
                  unknown_threshold=None)
        >>> check_metadata(meta, "m.onnx", (None, 32, 32, 3), "uint8", (None, 10))
        Traceback (most recent call last):
        ...
        edgel2.errors.ModelError: m.onnx: its metadata names 2 classes but the model outputs 10 logits
    """
    name = Path(path).name
    if "class_names" not in metadata or "input" not in metadata:
        raise ModelError(f"{path} is not an edgel2 model (no edgel2 metadata inside); "
                         "export it with `edgel2 export`")

    def bad(what: str) -> ModelError:
        return ModelError(f"{name}: {what}")

    classes = metadata["class_names"]
    if not isinstance(classes, list) or not classes \
            or not all(isinstance(c, str) and c for c in classes):
        raise bad("metadata class_names is not a list of non-empty strings")
    if any(not c.isprintable() for c in classes):
        raise bad("metadata class_names holds a control character (a newline would forge "
                  "rows in tables)")
    if len(set(classes)) != len(classes):
        raise bad("metadata class_names repeats a name")
    if len(output_shape) != 2:
        raise bad(f"the model's output has shape {list(output_shape)}, not [batch, classes]")
    if output_shape[1] is not None and output_shape[1] != len(classes):
        raise bad(f"its metadata names {len(classes)} classes but the model outputs "
                  f"{output_shape[1]} logits")

    spec = metadata["input"]
    shape = spec.get("shape") if isinstance(spec, dict) else None
    if not isinstance(shape, list) or len(shape) != 4:
        raise bad(f"metadata input.shape is {shape!r}, not [batch, height, width, 3]")
    batch, *hwc = shape
    if not all(_positive_int(d) for d in hwc) or not (batch is None or _positive_int(batch)):
        raise bad(f"metadata input.shape {shape!r} needs positive whole numbers")
    if max(hwc[:2]) > MAX_INPUT_SIDE:
        raise bad(f"metadata input.shape {shape!r} is larger than {MAX_INPUT_SIDE} pixels a "
                  "side: refused")
    if hwc[2] != 3 or spec.get("layout", "NHWC") != "NHWC" or spec.get("dtype", "uint8") != "uint8":
        raise bad(f"metadata input is {spec.get('layout')} {spec.get('dtype')} {shape}; "
                  "edgel2 models take NHWC uint8 RGB")
    if len(input_shape) != 4 or input_dtype != "uint8":
        raise bad(f"the model's input is {input_dtype} {list(input_shape)}, not uint8 [N, H, W, 3]")
    disagree = [(m, g) for m, g in zip(shape[1:], input_shape[1:]) if g is not None and m != g]
    if disagree:
        raise bad(f"metadata input.shape {shape} disagrees with the model's input "
                  f"{list(input_shape)}")
    height, width, _ = hwc
    temperature = metadata.get("temperature", 1.0)
    if not _number(temperature) or temperature <= 0:
        raise bad(f"metadata temperature is {temperature!r}, not a positive number")
    unsmooth = metadata.get("unsmooth", 0.0)
    if not _number(unsmooth) or not 0 <= unsmooth < 1:
        raise bad(f"metadata unsmooth is {unsmooth!r}, not a number in [0, 1)")
    return ModelInfo(list(classes), (width, height), float(temperature), float(unsmooth),
                     unknown_threshold(metadata, name))


def check_weights(metadata: dict[str, Any], data: bytes, fmt: str, path: str | os.PathLike[str]) -> None:
    """Compare the file's weights with the checksum its metadata records (``weights_sha256``,
    written by ``edgel2 export``; files without one are not checked): a corrupted download or
    a flipped byte is a :class:`ModelError`, not silently different answers. ONNX: the SHA-256
    of the graph (every node and weight, not the metadata), checked while the file still
    names edgel2 as its producer (a tool that rewrote the graph and kept the metadata made a
    new file, not a corrupted one); TFLite: of the flatbuffer before the appended metadata
    zip.

    Examples:
        >>> check_weights({}, b"anything", "onnx", "m.onnx")    # nothing recorded: not checked
    """
    recorded = metadata.get("weights_sha256")
    if recorded is None:
        return
    actual = weights_sha256(data, fmt)
    if actual is not None and actual != recorded:
        raise ModelError(f"{Path(path).name}: its weights do not match the checksum in its "
                         "metadata (a corrupted or altered file); download or export it again")


def weights_sha256(data: bytes, fmt: str) -> str | None:
    """The checksum :func:`check_weights` compares, of a file's bytes in format ``fmt``
    (None when the file cannot be checked, e.g. an ONNX graph another tool rewrote)."""
    checksum: str | None = load(FILE_FORMATS[fmt].checksum)(data)
    return checksum


def flatbuffer_sha256(data: bytes) -> str:
    """The SHA-256 of a .tflite file's flatbuffer, without the metadata zip edgel2 appends."""
    import hashlib

    return hashlib.sha256(data[:flatbuffer_end(data)]).hexdigest()


def flatbuffer_end(data: bytes) -> int:
    """Where a .tflite file's flatbuffer ends: at the zip edgel2 appends (its central
    directory's end record gives the directory's size and offset), or at the end of the file."""
    eocd = data.rfind(b"PK\x05\x06")
    if eocd < 0 or len(data) - eocd < 22:
        return len(data)
    size_cd = int.from_bytes(data[eocd + 12:eocd + 16], "little")
    offset_cd = int.from_bytes(data[eocd + 16:eocd + 20], "little")
    start = eocd - size_cd - offset_cd
    return start if 0 <= start <= eocd else len(data)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
