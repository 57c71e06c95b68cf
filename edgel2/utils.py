"""Small helpers shared across edgel2 (no heavy imports here)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "EDGEL2_CACHE"


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """edgel2's cache (decoded datasets, engine choices): ``cache_dir``, else
    ``$EDGEL2_CACHE``, else ``~/.cache/edgel2``."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgel2")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False,
                fallback: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success. The
    block may make a file or a folder there (a folder cannot replace an existing one).

    An exception (or Ctrl-C) inside the block removes the temporary file, so readers never
    see a half-written file. The temporary name keeps the suffix, for writers (Keras, Pillow)
    that choose the format from it. ``durable`` also flushes the file to disk before the
    rename and the rename itself after it, so that a power cut cannot leave a renamed but
    empty file (checkpoints).

    Only a regular file (or nothing) is ever replaced. A symbolic link is followed, so the file
    it points to is replaced and the link stays. A device, a FIFO or a socket (``/dev/null``,
    ``/proc/self/fd/1``) is written through: the finished file is copied into it.

    If the final rename fails (another job made a folder there first) and ``fallback`` is
    given, the finished work is renamed to ``fallback`` instead and
    :class:`~edgel2.errors.OutputError` says where it is.

    Examples:
        >>> with atomic_path("out.json") as tmp:        # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    if _is_special(path):
        with tempfile.TemporaryDirectory(prefix=".edgel2-") as scratch:
            tmp = Path(scratch) / f"out{Path(path).suffix}"
            yield tmp
            _write_through(tmp, path)
        return
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        try:
            os.replace(tmp, path)
        except OSError as e:
            if fallback is None:
                raise
            from edgel2.errors import OutputError

            os.replace(tmp, fallback)
            raise OutputError(f"cannot write {path}: {e.strerror or e}; the results are in "
                              f"{fallback} instead") from None
        if durable:
            _fsync(path.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():  # a folder of files (edgel2 infer --ray)
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def _write_through(source: Path, path: str | os.PathLike) -> None:
    """Copy ``source`` into the special file ``path``: through this process's own stdout or
    stderr when ``path`` is that file (``/dev/stdout``, whose own offset would overwrite
    what was printed before), else appended, never truncated."""
    import sys

    target = os.stat(path)
    for stream in (sys.stdout, sys.stderr):
        try:
            mine = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        if (mine.st_dev, mine.st_ino) == (target.st_dev, target.st_ino):
            stream.flush()
            with open(source, "rb") as f:
                shutil.copyfileobj(f, stream.buffer)
            stream.flush()
            return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    with open(source, "rb") as f, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(f, out)


def _is_special(path: str | os.PathLike) -> bool:
    """Whether ``path`` must be written through, never replaced: anything but a regular file or
    a folder, and any file reached through a link in ``/dev`` or ``/proc`` (``/dev/stdout``
    leads to the file the shell opened for the output)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return True
    hop = os.path.abspath(path)
    for _ in range(40):  # the link chain, as the kernel follows it (it gives up at 40)
        if not os.path.islink(hop):
            return False
        if hop.startswith(("/dev/", "/proc/")):  # /dev/stdout, /proc/self/fd/1
            return True
        hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
    return False


def check_output(path: str | os.PathLike, what: str = "`out`", folder: bool = False) -> Path:
    """Refuse, before any work, a destination the results could not be written to: a folder
    where a file goes (or an existing folder where a new one goes), a path under a file, a
    read-only file or file system, a folder that cannot be written in. Raises
    :class:`~edgel2.errors.OutputError` naming ``what``; returns the path.

    Examples:
        >>> check_output("/proc/version")
        Traceback (most recent call last):
        ...
        edgel2.errors.OutputError: `out` /proc/version: cannot write in /proc (No such file or directory)
    """
    from edgel2.errors import OutputError

    path = Path(path)

    def refuse(why: str) -> OutputError:
        return OutputError(f"{what} {path}: {why}")

    if folder and os.path.lexists(path):
        raise refuse("exists already; give a new folder")
    if os.path.isdir(path):
        raise refuse("is a folder; give a file name")
    if _is_special(path):  # written through: open it for writing, as that will
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: a FIFO with no reader yet, which may come
                raise refuse(f"cannot be written ({e.strerror or e})") from None
        return path
    # the file is made beside its real path and renamed over it: try that folder for real
    # (root passes every permission check, but not a read-only file system or /proc)
    parent = Path(os.path.realpath(path)).parent
    existing = next(p for p in (parent, *parent.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise refuse(f"{existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".edgel2-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise refuse(f"cannot write in {existing} ({e.strerror or e})") from None
    return path


def deliver_text(text: str, path: str | os.PathLike | None, what: str = "`out`",
                 echo=None) -> None:
    r"""Write finished results to ``path`` (atomically; stdout when None). If that fails at the
    end (a full disk), the results are not lost: they go to stdout (``echo``), and then
    :class:`~edgel2.errors.OutputError` says why in one line.

    Examples:
        >>> deliver_text("a,b\n", None)
        a,b
    """
    from edgel2.errors import OutputError

    echo = echo or (lambda t: print(t, end=""))
    if path is None:
        echo(text)
        return
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        echo(text)
        raise OutputError(f"cannot write {what} {path}: {e.strerror or e}; the results went "
                          "to stdout instead") from None


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

    Examples:
        >>> run_config("runs/train/nowhere/model.keras")
        {}
    """
    try:
        described = json.loads((Path(model_path).parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return described if isinstance(described, dict) else {}


def writable_folder(path: str | os.PathLike, what: str, error=None) -> Path | None:
    """Create the folder ``path`` (and its parents) if needed and check that it can be written
    in, before any work goes into it: a place that cannot be ``what`` is one line at once
    (``error``, default :class:`~edgel2.errors.EdgeL2Error`). Returns the outermost folder it
    created (``path`` or one of its parents; what :func:`remove_if_empty` may take back), or
    None when ``path`` was there already.

    Examples:
        >>> writable_folder("/proc/version/x", "the output folder")
        Traceback (most recent call last):
        ...
        edgel2.errors.EdgeL2Error: cannot create the output folder /proc/version/x: Not a directory
    """
    from edgel2.errors import EdgeL2Error

    error = error or EdgeL2Error
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    created = missing[-1] if missing else None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create {what} {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK):
        raise error(f"cannot write in {what} {path}: Permission denied")
    return created


def remove_if_empty(path: str | os.PathLike, outermost: str | os.PathLike) -> None:
    """Remove the folder ``path`` and its parents up to ``outermost`` while they are empty:
    a run that failed before writing anything leaves no folder behind."""
    path, outermost = Path(path), Path(outermost)
    for folder in (path, *path.parents):
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            return
        if folder == outermost:
            return


SCRATCH_PREFIX = ".edgel2-scratch-"
# the temporary names atomic_path gives: .STEM.tmpPID.SUFFIX (or no suffix)
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(\.[^.]*)?$")


@contextlib.contextmanager
def scratch_space(folder: str | os.PathLike) -> Iterator[Path]:
    """A hidden scratch folder inside ``folder`` that every temporary file of the block goes
    to (``tempfile``'s default and ``$TMPDIR`` for child processes point there), removed at
    the end. Scratch folders and half-written files that a killed process left in ``folder``
    (their process is gone) are removed first: a SIGKILL costs no more than the next run's
    clean-up, and nothing is left in /tmp.

    Examples:
        >>> with scratch_space("runs/x/export") as scratch:   # doctest: +SKIP
        ...     tempfile.mkdtemp()    # under runs/x/export/.edgel2-scratch-PID/
    """
    folder = Path(folder)
    remove_leftovers(folder)
    scratch = folder / f"{SCRATCH_PREFIX}{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(scratch, ignore_errors=True)


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove from ``folder`` the scratch folders and temporary files of edgel2 processes that
    are no longer running (killed mid-write); returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(SCRATCH_PREFIX):
            pid = entry.name[len(SCRATCH_PREFIX):]
        elif (match := _TEMPORARY.match(entry.name)) is not None:
            pid = match.group(1)
        else:
            continue
        if pid.isdigit() and not _running(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def die_with_parent(parent_pid: int) -> None:
    """In a child process: be killed when ``parent_pid`` dies (Linux ``PR_SET_PDEATHSIG``),
    so that a killed ``edgel2 export`` leaves no converter running to write files later;
    exit at once if the parent is gone already. Elsewhere, nothing."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def next_run_dir(parent: str | os.PathLike, name: str) -> Path:
    """``parent/name``, or ``name2``, ``name3``... for the first one that does not exist yet."""
    parent = Path(parent)
    candidate, i = parent / name, 2
    while candidate.exists():
        candidate, i = parent / f"{name}{i}", i + 1
    return candidate


def run_batches(run: Callable[[Any], Any], images: Any, batch_size: int = 100,
                on_batch: Callable[[int, int], None] | None = None) -> Any:
    """``run`` over ``images`` in batches, concatenated; reports ``(done, total)`` as it goes.

    Examples:
        >>> import numpy as np
        >>> seen = []
        >>> run_batches(lambda b: b * 2, np.arange(5), 2, lambda d, t: seen.append(d)), seen
        (array([0, 2, 4, 6, 8]), [2, 4, 5])
    """
    import numpy as np

    outputs = []
    for start in range(0, len(images), batch_size):
        outputs.append(run(images[start:start + batch_size]))
        if on_batch:
            on_batch(min(start + batch_size, len(images)), len(images))
    return np.concatenate(outputs)
