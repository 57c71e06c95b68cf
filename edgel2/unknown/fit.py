"""Fitting the unknown score on a dataset: its weights from class-balanced training images,
and the held-out known images its threshold is set on and reported on (the validation split,
else the calibration's two class-balanced halves of the test split), so that no reported
figure comes from images the fit or the threshold saw."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgel2.data import Dataset, balanced_subset
from edgel2.runtime.modelfile import UNKNOWN_OUTPUT

if TYPE_CHECKING:
    import keras

# Training images the score is fitted on (class-balanced): its AUROC on the
# out-of-distribution probe moved by under 0.005 between 2,000 and 8,000 (measured).
UNKNOWN_IMAGES = 5000

SCORE = ("Mahalanobis distance to the nearest class mean over the pooled features of every "
         "stage (one covariance shared by the classes), per feature: about 1 for known images, "
         "higher is more unknown")


@dataclass(frozen=True)
class UnknownFit:
    """What every file of one export shares: the score's weights and where its threshold is
    set and reported."""

    head: dict[str, np.ndarray]
    record: dict                 # the metadata's ``unknown`` entry, less the file's own figures
    threshold_images: np.ndarray  # images the threshold keeps ``keep`` of
    report_images: np.ndarray     # images the share flagged is reported on


def fit_unknown(model: keras.Model, ds: Dataset, images: int, keep: float, progress: Callable[[str], None],
                on_batch: Callable[[int, int], None] | None = None) -> UnknownFit:
    """Fit the score on ``images`` class-balanced training images of ``ds``; the threshold is
    set on the validation split when there is one, else on one class-balanced half of the
    test split (the calibration's halves), and reported on the test split or its other half.

    Args:
        model: The Keras classifier (an edgel2 network).
        ds: Its dataset (training images to fit on, held-out images for the threshold).
        images: Class-balanced training images to fit on (at most all of them).
        keep: The share of known images the threshold is to keep.
        progress: Gets a line saying what is fitted on.
        on_batch: Called with (done, total) after every batch of the fit.

    Returns:
        The weights (:func:`edgel2.unknown.head.fit_head`), the metadata record, and the
        images each file's threshold is set on and its share flagged reported on.

    Examples:
        >>> fit = fit_unknown(model, load_dataset(), 5000, 0.95, print)   # doctest: +SKIP
        unknown score: fitting on 5000 CIFAR-10-JPEG training images
        >>> fit.record["threshold_on"]                                    # doctest: +SKIP
        'CIFAR-10-JPEG test split, class-balanced half 1 of 2 (5000 images)'
    """
    from edgel2.calibration.files import fit_and_report_split
    from edgel2.unknown.head import fit_head  # Keras: imported when a score is fitted

    x, y = balanced_subset(ds.x_train, ds.y_train, min(images, len(ds.y_train)), seed=0)
    progress(f"unknown score: fitting on {len(y)} {ds.name} training images")
    head = fit_head(model, x, y, on_batch)
    fit, report = fit_and_report_split(ds)
    if fit is None:
        threshold_images, threshold_on = np.asarray(ds.x_val), f"{ds.name} validation split"
        report_images, reported_on = ds.x_test, f"{ds.name} test split"
    else:
        threshold_images = ds.x_test[fit]
        threshold_on = f"{ds.name} test split, class-balanced half 1 of 2"
        report_images = ds.x_test[report]
        reported_on = f"{ds.name} test split, class-balanced half 2 of 2"
    record = {"output": UNKNOWN_OUTPUT, "score": SCORE, "keep": keep,
              "fitted_on": {"data": f"{ds.name} training images", "images": int(len(y))},
              "threshold_on": f"{threshold_on} ({len(threshold_images)} images)",
              "flagged_on": f"{reported_on} ({len(report_images)} images)"}
    return UnknownFit(head, record, threshold_images, report_images)
