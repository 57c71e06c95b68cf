"""Inputs and outputs of ``edgel2 infer``: expanding paths, and writing results as a table,
JSON or CSV. Part of the runtime: numpy/pillow-free even."""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from pathlib import Path
from typing import Iterable

from edgel2.runtime.classifier import FileResult
from edgel2.runtime.preprocess import IMAGE_SUFFIXES



def expand_paths(patterns: Iterable[str]) -> list[str]:
    """Files as given; folders searched recursively for image files; globs expanded (``**``
    included). A pattern that matches nothing is kept as is, to be reported as missing."""
    out: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*")
                          if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif not path.exists() and glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            out += [m for m in matches if not os.path.isdir(m)] or [pattern]
        else:
            out.append(pattern)
    return out


def render(results: list[FileResult], fmt: str, top_k: int) -> str:
    """Results as ``table`` (for people), ``json`` (a list of records) or ``csv``."""
    if fmt == "json":
        return json.dumps([{"path": r.source,
                            "predictions": None if r.prediction is None else
                            [{"label": l, "probability": round(p, 6)} for l, p in r.prediction],
                            "error": r.error} for r in results], indent=1) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path"] + [f"{c}{i}" for i in range(1, top_k + 1)
                                    for c in ("label", "probability")] + ["error"])
        for r in results:
            cells = [v for l, p in (r.prediction or []) for v in (l, f"{p:.6f}")]
            writer.writerow([r.source] + cells + [""] * (2 * top_k - len(cells)) + [r.error or ""])
        return buffer.getvalue()
    width = max([len(r.source) for r in results] + [4])
    lines = [f"{'path':<{width}}  prediction"]
    for r in results:
        shown = r.error and f"ERROR: {r.error}" or ", ".join(f"{l} {100 * p:.1f}%" for l, p in r.prediction)
        lines.append(f"{r.source:<{width}}  {shown}")
    return "\n".join(lines) + "\n"
