"""The unknown score's record in each exported file: the threshold that keeps the asked
share of held-out known images by that file's own scores (quantization shifts the score, so
each file gets its own), and the share of other held-out images it flags."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgel2.unknown.fit import UnknownFit
from edgel2.unknown.scores import threshold_for


def file_record(path: Path, fit: UnknownFit,
                on_batch: Callable[[int, int], None] | None = None) -> dict:
    """The metadata's ``unknown`` entry for the file at ``path``: the threshold that keeps
    ``keep`` of the threshold images by this file's own scores, and the share of the report
    images it flags."""
    from edgel2.export.check import run_file

    scores = run_file(path, np.concatenate([fit.threshold_images, fit.report_images]),
                      on_batch=on_batch, unknown=True)[:, -1]
    known, reported = scores[:len(fit.threshold_images)], scores[len(fit.threshold_images):]
    threshold = threshold_for(known, fit.record["keep"])
    return {**fit.record, "threshold": threshold,
            "flagged": float(np.mean(reported > threshold))}
