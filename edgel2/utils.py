"""Small helpers shared across edgel2 (no heavy imports here)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success. The
    block may make a file or a folder there (a folder cannot replace an existing one).

    An exception (or Ctrl-C) inside the block removes the temporary file, so readers never
    see a half-written file. The temporary name keeps the suffix, for writers (Keras, Pillow)
    that choose the format from it. ``durable`` also flushes the file to disk before the
    rename and the rename itself after it, so that a power cut cannot leave a renamed but
    empty file (checkpoints).

    Example:
        >>> with atomic_path("out.json") as tmp:        # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():  # a folder of files (edgel2 infer --ray)
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return Path(path)


def config_hash(obj) -> str:
    """A short, stable hash of a JSON-able object (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def run_config(model_path: str | os.PathLike) -> dict:
    """The ``config.json`` of the run the model file at ``model_path`` belongs to (the file
    beside it; {} when there is none or it is not a JSON object).

    Example:
        >>> run_config("runs/train/nowhere/model.keras")
        {}
    """
    try:
        described = json.loads((Path(model_path).parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return described if isinstance(described, dict) else {}


def writable_folder(path: str | os.PathLike, what: str, error=None) -> bool:
    """Create the folder ``path`` (and its parents) if needed and check that it can be written
    in, before any work goes into it: a place that cannot be ``what`` is one line at once
    (``error``, default :class:`~edgel2.errors.EdgeL2Error`). Returns whether it was created.

    Example:
        >>> writable_folder("/proc/version/x", "the output folder")
        Traceback (most recent call last):
        ...
        edgel2.errors.EdgeL2Error: cannot create the output folder /proc/version/x: Not a directory
    """
    from edgel2.errors import EdgeL2Error

    error = error or EdgeL2Error
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create {what} {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise error(f"cannot write in {what} {path}: Permission denied")
    return created


def next_run_dir(parent: str | os.PathLike, name: str) -> Path:
    """``parent/name``, or ``name2``, ``name3``... for the first one that does not exist yet."""
    parent = Path(parent)
    candidate, i = parent / name, 2
    while candidate.exists():
        candidate, i = parent / f"{name}{i}", i + 1
    return candidate
