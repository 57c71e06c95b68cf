"""Where ``auto`` remembers what it measured: one small JSON file per (CPU model, core count,
engine versions, model files, workload, batch, threads, compute dtype) in the user's cache
folder, so that only the first open of a model on a machine pays for the race
(:mod:`edgel2.runtime.probe`).

An entry is used only if every field of the key it stores equals the key of this open and
every candidate it names is one this open would race; anything else (a damaged file, another
version of an engine, a file edited in place, a candidate no longer offered) is ignored and
measured again, never trusted. One process measures at a time (a lock file): a second
process opening the same model (a server's workers, Ray actors on one node) waits and reads
the first one's result instead of racing it for the same cores.

Environment:
    ``EDGEL2_ENGINE_PROBE=0``: no race and no cache; ``auto`` follows the fixed rule
    (:func:`edgel2.runtime.auto.engine_candidates`), for apps that need a deterministic
    start. ``EDGEL2_CACHE``: edgel2's cache folder (default ``~/.cache/edgel2``); choices go
    in its ``engine-choices`` folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from edgel2.runtime.formats import ENGINE_SPECS
from edgel2.runtime.probe import Candidate, EngineChoice, Measured

PROBE_ENV = "EDGEL2_ENGINE_PROBE"
OFF = ("0", "off", "false", "no")
ENTRY_VERSION = 2
# Entries kept: each model file exported and opened adds one or two (about 1 KB each); past
# this many, the oldest go.
MAX_ENTRIES = 500
# The packages whose version changes what is fast: any upgrade measures again.
ENGINE_PACKAGES = tuple(e.package for e in ENGINE_SPECS.values())


def probe_enabled(probe: bool | None = None) -> bool:
    """Whether ``auto`` measures: ``probe`` when given, else not when ``EDGEL2_ENGINE_PROBE``
    is ``0``/``off``/``false``/``no``."""
    if probe is not None:
        return probe
    return os.environ.get(PROBE_ENV, "1").strip().lower() not in OFF


def choices_folder() -> Path:
    """The folder engine choices are kept in (see the module docstring)."""
    from edgel2.utils import cache_folder

    return cache_folder() / "engine-choices"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def engine_versions() -> dict[str, str | None]:
    """The installed version of each engine package (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in ENGINE_PACKAGES:
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def choice_key(file_hashes: Sequence[str], workload: str, batch: int, threads: int | None,
               compute_dtype: str) -> dict[str, Any]:
    """Everything a choice depends on. The files are named by the SHA-256 of their bytes:
    a copied or renamed model keeps its choice, a changed one does not.

    Examples:
        >>> choice_key(["ab"], "latency", 1, None, "f32")["files"]
        ['ab']
    """
    return {"entry": ENTRY_VERSION, "cpu": cpu_model(), "machine": platform.machine(),
            "cores": os.cpu_count(), "usable_cores": _usable_cores(),
            "engines": engine_versions(), "files": sorted(file_hashes), "workload": workload,
            "batch": batch, "threads": threads, "compute_dtype": compute_dtype}


def file_hash(data: bytes) -> str:
    """The SHA-256 of a model file's bytes, as choice keys name it."""
    return hashlib.sha256(data).hexdigest()


def candidate_id(candidate: Candidate, hashes: dict[Path, str]) -> dict[str, Any]:
    """A candidate as an entry names it: the file by its hash, not its path."""
    return {"engine": candidate.engine, "file": hashes[candidate.path],
            "threads": candidate.threads, "streams": candidate.streams}


def load(key: dict[str, Any], candidates: Sequence[Candidate], hashes: dict[Path, str]
         ) -> EngineChoice | None:
    """The remembered choice for ``key`` (its first figure is the chosen candidate), if its
    entry is whole, is for exactly this key, and names only candidates of ``candidates``
    (labelled by today's file names); else None."""
    by_id = {json.dumps(candidate_id(c, hashes), sort_keys=True): c for c in candidates}
    try:
        entry = json.loads(_entry_path(key).read_text())
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        measured = []
        for ident, seconds, rounds in entry["measured"]:
            candidate = by_id[json.dumps(ident, sort_keys=True)]
            if not (isinstance(seconds, float) and math.isfinite(seconds) and seconds > 0
                    and isinstance(rounds, int)):
                return None
            measured.append(Measured(candidate, candidate.label, seconds, rounds))
        source, date = entry["source"], entry["date"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not measured or not isinstance(source, str) or not isinstance(date, str):
        return None
    return EngineChoice(key["workload"], key["batch"], measured,
                        "cached" if source == "measured" else source, date)


def save(key: dict[str, Any], choice: EngineChoice, hashes: dict[Path, str]) -> bool:
    """Remember ``choice`` (whose figures' contenders are candidates) for ``key``,
    atomically: a reader sees the old entry or the new one. False when the cache folder
    cannot be written (the choice then lasts this run)."""
    from edgel2.utils import atomic_path

    entry = {"key": key, "source": choice.source, "date": choice.date,
             "measured": [[candidate_id(m.contender, hashes), m.seconds, m.rounds]
                          for m in choice.measured]}
    try:
        path = _entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(entry, indent=1) + "\n")
        _prune(path.parent)
    except OSError:
        return False
    return True


def _prune(folder: Path) -> None:
    """Remove the oldest entries (and their lock files) past :data:`MAX_ENTRIES`."""
    entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for old in entries[:max(0, len(entries) - MAX_ENTRIES)]:
        old.unlink(missing_ok=True)
        old.with_suffix(".lock").unlink(missing_ok=True)


@contextlib.contextmanager
def measuring(key: dict[str, Any]) -> Iterator[None]:
    """Hold the lock for measuring ``key`` on this machine (no lock where the cache folder
    cannot be written or the platform has no ``fcntl``)."""
    try:
        import fcntl

        path = _entry_path(key).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")
    except (ImportError, OSError):
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield  # closing the file releases the lock


def now() -> str:
    """The time a measurement is dated with: UTC, to the minute."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _entry_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return choices_folder() / f"{digest[:32]}.json"


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()
