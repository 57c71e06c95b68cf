"""An int8 TFLite file on a microcontroller: what TensorFlow Lite Micro needs to run it, measured
with the ``tflite-micro`` package's interpreter (``pip install edgel2[micro]``), and the file as
a C array for firmware.

TensorFlow Lite Micro plans every tensor into one static "tensor arena" when the interpreter
allocates; :func:`micro_footprint` finds the smallest arena the file allocates and runs in by
bisection (the interpreter refuses a smaller one), and counts the flash the model takes: the
file's bytes, which firmware keeps in flash as the array :func:`write_c_array` writes. The
arena is measured on the machine that runs the export (64-bit); a 32-bit microcontroller's
bookkeeping structures are smaller, so its arena is the same or a little smaller.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from edgel2 import __version__
from edgel2.errors import EdgeL2Error, first_line, missing_extra

# Arena sizes are aligned to this many bytes (TensorFlow Lite Micro aligns tensors to 16).
ARENA_ALIGNMENT = 16
# The largest arena tried (1 GiB): a file that does not allocate in it never will.
MAX_ARENA = 1 << 30
# Bytes per line of the C array: 12 "0x00, " fit a 79-column line.
C_BYTES_PER_LINE = 12


def micro_interpreter():
    """The ``tflite_micro`` runtime module, or :class:`MissingExtraError` naming the extra."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as e:
        raise (missing_extra(e, "tflite-micro") or e) from None
    return runtime


def micro_footprint(path: str | os.PathLike) -> dict:
    """The smallest tensor arena TensorFlow Lite Micro runs ``path`` in, and its flash.

    Args:
        path: An int8 ``.tflite`` file.

    Returns:
        ``arena_bytes`` (the smallest arena, a multiple of 16, that allocates and invokes),
        ``flash_bytes`` (the file's size: what firmware stores), and ``logits`` (the outputs
        on a mid-grey image at that arena: a check that it runs).

    Raises:
        EdgeL2Error: The interpreter cannot run the file at any arena size (an operator
            TensorFlow Lite Micro lacks; its message says which).

    Examples:
        >>> micro_footprint("export/model-int8.tflite")["arena_bytes"]   # doctest: +SKIP
        53760
    """
    runtime = micro_interpreter()
    path = Path(path)
    data = path.read_bytes()

    def attempt(arena: int):
        """(the interpreter with every tensor planned into ``arena`` bytes, or None; why not)."""
        with _silenced():  # the interpreter prints its allocation failures to the terminal
            try:
                return runtime.Interpreter.from_bytes(data, arena_size=arena), None
            except Exception as e:  # the package raises what its parser meets (TypeError, ...)
                return None, e

    # grow the arena until it allocates; an operator TensorFlow Lite Micro lacks, or a broken
    # file, fails at every size, and its last error says why
    low, high = 0, max(1 << 16, len(data))  # it fails at low, allocates at high
    interpreter, error = attempt(high)
    while interpreter is None:
        if high >= MAX_ARENA:
            raise EdgeL2Error(f"TensorFlow Lite Micro cannot run {path.name}: "
                              f"{first_line(error)}")
        low, high = high, 2 * high
        interpreter, error = attempt(high)
    while high - low > ARENA_ALIGNMENT:
        middle = (low + high) // 2 // ARENA_ALIGNMENT * ARENA_ALIGNMENT
        smaller, _ = attempt(middle)
        if smaller is None:
            low = middle
        else:
            high, interpreter = middle, smaller
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.full(details["shape"], 128, details["dtype"]), 0)
    interpreter.invoke()  # all memory is planned at allocation: the run needs no more
    return {"arena_bytes": high, "flash_bytes": len(data), "logits": interpreter.get_output(0)}


def micro_row(path: str | os.PathLike) -> dict:
    """The export report's TensorFlow Lite Micro fields for an int8 file: ``micro_arena_bytes``
    (:func:`micro_footprint`), or None and ``micro`` saying why (the package is not installed,
    or the interpreter cannot run the file)."""
    try:
        return {"micro_arena_bytes": micro_footprint(path)["arena_bytes"]}
    except EdgeL2Error as e:
        return {"micro_arena_bytes": None, "micro": str(e)}


def micro_version() -> str | None:
    """The installed tflite-micro's version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tflite-micro")
    except PackageNotFoundError:
        return None


def write_c_array(path: str | os.PathLike, metadata: dict,
                  arena_bytes: int | None = None) -> tuple[Path, Path]:
    """Write ``path`` as ``<stem>.cc`` and ``<stem>.h`` beside it, for firmware that links
    TensorFlow Lite Micro: the bytes (16-byte aligned, as the interpreter wants), their
    length, the class names, the input and outputs, and the arena the file needs.

    Args:
        path: The ``.tflite`` file.
        metadata: Its edgel2 metadata (class names, input shape, unknown threshold).
        arena_bytes: The measured arena (:func:`micro_footprint`); None leaves it out.

    Returns:
        The ``.cc`` and ``.h`` paths.

    Examples:
        >>> write_c_array("export/model-int8.tflite", metadata, 53760)   # doctest: +SKIP
        (PosixPath('export/model-int8.cc'), PosixPath('export/model-int8.h'))
    """
    from edgel2.utils import atomic_path

    path = Path(path)
    data = path.read_bytes()
    name = c_identifier(path.stem)
    classes = list(metadata.get("class_names") or [])
    shape = metadata.get("input", {}).get("shape") or []
    shape = [1 if d is None else int(d) for d in shape]
    unknown = metadata.get("unknown")
    outputs = [f"logits float32 [1, {len(classes)}]"]
    if unknown:
        outputs.append(f"unknown_score float32 [1, 1] (unknown above "
                       f"{float(unknown['threshold']):.6g})")
    guard = f"EDGEL2_{name.upper()}_H_"
    arena = ("" if arena_bytes is None else
             f"// The tensor arena it needs, measured with TensorFlow Lite Micro's interpreter\n"
             f"// (64-bit host; a 32-bit device needs the same or a little less).\n"
             f"constexpr unsigned int k_{name}_arena_bytes = {arena_bytes};\n")
    header = (
        f"// {path.name} as a C array, written by edgel2 {__version__}.\n"
        f"// Input: uint8 [{', '.join(map(str, shape))}] NHWC pixels, 0..255 (the model "
        "normalizes them).\n"
        f"// Outputs: {'; '.join(outputs)}.\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"extern const unsigned char g_{name}[];\n"
        f"extern const unsigned int g_{name}_len;\n"
        f"constexpr unsigned int k_{name}_num_classes = {len(classes)};\n"
        f"extern const char* const k_{name}_class_names[{max(1, len(classes))}];\n"
        f"{arena}\n#endif  // {guard}\n")
    rows = (", ".join(f"0x{b:02x}" for b in data[i:i + C_BYTES_PER_LINE])
            for i in range(0, len(data), C_BYTES_PER_LINE))
    names = ", ".join(_c_string(c) for c in classes) or '""'
    source = (
        f'#include "{path.stem}.h"\n\n'
        f"const char* const k_{name}_class_names[{max(1, len(classes))}] = {{{names}}};\n\n"
        f"const unsigned int g_{name}_len = {len(data)};\n"
        f"alignas(16) const unsigned char g_{name}[] = {{\n    "
        + ",\n    ".join(rows) + "\n};\n")
    written = []
    for suffix, text in ((".cc", source), (".h", header)):
        target = path.with_suffix(suffix)
        with atomic_path(target) as tmp:
            tmp.write_text(text)
        written.append(target)
    return written[0], written[1]


def c_identifier(stem: str) -> str:
    """A C identifier from a file stem: other characters become ``_``, and a leading digit
    gets one before it.

    Examples:
        >>> c_identifier("resnet20-int8"), c_identifier("2nd.model")
        ('resnet20_int8', '_2nd_model')
    """
    name = re.sub(r"\W", "_", stem, flags=re.ASCII)
    return f"_{name}" if name[:1].isdigit() else name


def _c_string(text: str) -> str:
    """``text`` as a C string literal (UTF-8; quotes, backslashes and non-ASCII escaped)."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\?' else f"\\{b:03o}"
                         for b in text.encode()) + '"'


@contextlib.contextmanager
def _silenced():
    """Send what C code writes to stdout and stderr nowhere, for a while."""
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
