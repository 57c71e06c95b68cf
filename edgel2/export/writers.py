"""The writer of each file format: the module :data:`~edgel2.runtime.formats.FILE_FORMATS`
names, each offering the same five functions, so that export has no code of its own per
format."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from edgel2.runtime.formats import FILE_FORMATS


class Writer(Protocol):
    """What a format's writer module offers (:mod:`edgel2.export.onnx`,
    :mod:`edgel2.export.tflite`)."""

    def check(self, config: Any) -> None:
        """Raise :class:`~edgel2.errors.OptionError` for an option it cannot honour."""

    def refuses(self, precision: str, config: Any) -> str | None:
        """Why it does not write ``precision`` with ``config`` (None: it does)."""

    def write(self, model: Any, path: Path, precision: str, config: Any,
              representative: np.ndarray | None) -> dict:
        """Write the file; extra fields for its export-report row (``advice``: a note for
        the row when the check left none)."""

    def embed_metadata(self, path: Path, metadata: dict, update: bool = False) -> None:
        """Write edgel2's metadata into the file (``update``: keep the keys not given)."""

    def companions(self, path: Path, precision: str, config: Any, metadata: dict,
                   row: dict) -> list[Path]:
        """Write the files that go beside the finished file (a C array); their paths."""


def writer_of(fmt: str) -> Writer:
    """The writer module of format ``fmt``, imported now.

    Examples:
        >>> writer_of("onnx").__name__
        'edgel2.export.onnx'
    """
    return cast(Writer, importlib.import_module(FILE_FORMATS[fmt].writer))
