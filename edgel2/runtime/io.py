"""Inputs and outputs of ``edgel2 infer``: expanding paths, and writing results as a table,
JSON or CSV. Part of the runtime: numpy/pillow-free even.

The walk is safe on hostile trees: symbolic links to folders are followed but a loop is not,
each real file is listed once however many links reach it, a folder that cannot be read is
reported instead of skipped silently, and entries that are not regular files (a FIFO, a
broken link) are listed so that classifying them reports why they failed.
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any

from edgel2.runtime.classifier import Classifier, FileResult
from edgel2.runtime.preprocess import IMAGE_SUFFIXES

Entry = str | FileResult  # a path to classify, or a folder the walk could not read


def expand_paths(patterns: Iterable[str]) -> list[Entry]:
    """Files as given; folders searched recursively for image files; globs expanded (``**``
    included). Hidden names (a leading dot) are left out of folder walks and of globs, as
    shells do. A pattern that matches nothing is kept as is, to be reported as missing; a
    folder that cannot be read becomes a :class:`FileResult` carrying the reason.

    Examples:
        >>> expand_paths(["no/such/*.png"])
        ['no/such/*.png']
    """
    out: list[Entry] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            out += _walk(pattern, ["**", "*"], images_only=True)
        elif not os.path.lexists(pattern) and glob.has_magic(pattern):
            root, segments = _split_glob(pattern)
            out += _walk(root, segments, images_only=False) or [pattern]
        else:
            out.append(pattern)
    return out


def classify_paths(classifier: Classifier, paths: Iterable[str], top_k: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> list[FileResult]:
    """Classify every image under ``paths``: what ``edgel2 infer`` does without Ray.

    Args:
        classifier: The model to run (:class:`~edgel2.runtime.Classifier`; for a folder of
            files, opened with ``workload="throughput"`` is usually fastest).
        paths: Files, folders (searched recursively for image files) and globs
            (:func:`expand_paths`).
        top_k: Labels per image, at most the model's class count.
        progress: Called with (images done, images in all) as results come.

    Returns:
        One result per file, in the order found; a file that could not be classified, or a
        folder that could not be read, is a result with its ``error`` in its place.

    Examples:
        >>> results = classify_paths(Classifier(), ["photos/"], top_k=2)   # doctest: +SKIP
        >>> print(render(results, "table", 2))                              # doctest: +SKIP
    """
    entries = expand_paths(paths)
    files = [e for e in entries if not isinstance(e, FileResult)]
    classified: list[FileResult] = []
    for result in classifier.predict_files(files, top_k=min(top_k, len(classifier.class_names))):
        classified.append(result)
        if progress is not None:
            progress(len(classified), len(files))
    in_order = iter(classified)  # walk failures keep their place among the classified files
    return [e if isinstance(e, FileResult) else next(in_order) for e in entries]


def _split_glob(pattern: str) -> tuple[str, list[str]]:
    """``a/b/**/*.png`` -> (``a/b``, [``**``, ``*.png``]): the literal folder to start from."""
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else "")
    return root, [p for p in parts[first:] if p]


def _walk(root: str, segments: list[str], images_only: bool) -> list[Entry]:
    files: dict[tuple[Any, ...], str] = {}  # (device, inode) of the real file -> the first path to it
    unreadable: list[FileResult] = []
    visited: set[tuple[Any, ...]] = set()

    def join(folder: str, name: str) -> str:
        return os.path.join(folder, name) if folder else name

    def walk(folder: str, segments: list[str]) -> None:
        try:
            info = os.stat(folder or ".")
            key = (info.st_dev, info.st_ino, len(segments))
            if key in visited:  # a symbolic-link loop, or a folder reached twice
                return
            visited.add(key)
            with os.scandir(folder or ".") as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):  # nothing there to match
            return
        except OSError as e:
            unreadable.append(FileResult(folder, error=f"cannot read folder: {e.strerror or e}"))
            return
        head, rest = segments[0], segments[1:]
        if head == "**":
            walk(folder, rest)
            for entry in entries:
                if not entry.name.startswith(".") and _is_dir(entry):
                    walk(join(folder, entry.name), segments)
            return
        for entry in entries:
            if entry.name.startswith(".") and not head.startswith("."):
                continue
            if not fnmatch.fnmatchcase(entry.name, head):
                continue
            path = join(folder, entry.name)
            if rest:
                if _is_dir(entry):
                    walk(path, rest)
            elif not images_only or os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                add_file(path)

    def add_file(path: str) -> None:
        try:
            info = os.stat(path)
        except OSError:  # a broken link: listed, so that it is reported
            files.setdefault(("missing", path), path)
            return
        if not stat.S_ISDIR(info.st_mode):
            files.setdefault((info.st_dev, info.st_ino), path)

    if segments:
        walk(root, segments)
    return sorted(files.values()) + unreadable


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links; loops are cut by the visited set
    except OSError:
        return False


def printable(name: str) -> str:
    r"""A file name as text that any UTF-8 writer accepts: bytes that are not UTF-8 (which
    Python carries as lone surrogates) become ``\xNN`` escapes.

    Examples:
        >>> import os
        >>> printable(os.fsdecode(b"caf\xe9.png")), printable("café.png")
        ('caf\\xe9.png', 'café.png')
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _one_line(text: str) -> str:
    r"""``text`` with control characters escaped (``\n``, ``\t``, ``\x1b``): a file name
    with a newline cannot forge a row of the table, nor an escape sequence recolour a
    terminal. JSON and CSV quote such names themselves.

    Examples:
        >>> _one_line("a\nb.png")
        'a\\nb.png'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def record(result: FileResult) -> dict[str, Any]:
    """One result as ``edgel2 infer --format json`` writes it (and ``--ray`` rows hold it):
    path, top-k predictions with probabilities rounded to 6 digits, whether the image is
    unknown (none of the classes, by the file's unknown score and threshold) and the score,
    error. ``unknown`` and ``unknown_score`` are None for a file without the score.

    Examples:
        >>> from edgel2.runtime.classifier import Prediction
        >>> row = record(FileResult("a.png", Prediction([("cat", 0.9123456)], 7.25, True)))
        >>> row["predictions"], row["unknown"], row["unknown_score"], row["error"]
        ([{'label': 'cat', 'probability': 0.912346}], True, 7.25, None)
    """
    prediction = result.prediction
    score = getattr(prediction, "unknown_score", None)
    return {"path": printable(result.source),
            "predictions": None if prediction is None else
            [{"label": label, "probability": round(p, 6)} for label, p in prediction],
            "unknown": getattr(prediction, "unknown", None),
            "unknown_score": None if score is None else round(float(score), 6),
            "error": result.error}


# What `edgel2 infer` writes without Ray: a table for people, JSON and CSV for programs.
OUTPUT_FORMATS = ("table", "json", "csv")


def render(results: list[FileResult], fmt: str, top_k: int) -> str:
    """Results as ``table`` (for people), ``json`` (a list of records; always strict JSON) or
    ``csv``. File names that are not valid UTF-8 are written with ``\\xNN`` escapes."""
    if fmt == "json":
        return json.dumps([record(r) for r in results], indent=1, allow_nan=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path"] + [f"{c}{i}" for i in range(1, top_k + 1)
                                    for c in ("label", "probability")]
                        + ["unknown", "unknown_score", "error"])
        for r in results:
            cells = [v for label, p in (r.prediction or []) for v in (label, f"{p:.6f}")]
            row = record(r)
            writer.writerow([printable(r.source)] + cells + [""] * (2 * top_k - len(cells))
                            + ["" if row["unknown"] is None else str(row["unknown"]).lower(),
                               "" if row["unknown_score"] is None else f"{row['unknown_score']:.6g}",
                               r.error or ""])
        return buffer.getvalue()
    names = [_one_line(printable(r.source)) for r in results]
    width = max([len(n) for n in names] + [4])
    lines = [f"{'path':<{width}}  prediction"]
    for name, r in zip(names, results):
        shown = _one_line(r.error and f"ERROR: {r.error}"
                          or ("unknown: " if getattr(r.prediction, "unknown", None) else "")
                          + ", ".join(f"{label} {100 * p:.1f}%" for label, p in r.prediction or []))
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines) + "\n"
