"""Probabilities a user can threshold: one-parameter calibration and the numbers that judge it.

A network trained with label smoothing (the shipped one used 0.2) is under-confident: its
top-1 probability sits near 0.8 even where it is right 99 % of the time. Two one-parameter
maps fix that, both keeping every row's order of classes (top-k cannot change), fitted by
minimum negative log-likelihood on held-out images:

* temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017):
  ``softmax(logits / T)``;
* the inverse of label smoothing: a model trained with smoothing ``a`` learns to say
  ``(1 - a) * onehot + a / classes``; ``p ~ max(q - a / classes, 0.01 q)`` maps that back.
  Temperature scaling cannot fix such a model: smoothing caps the logit gap, so one ``T``
  that is right for the many confident images is wrong for the uncertain ones.

:func:`fit_calibration` fits both and keeps the one with the lower NLL on the fitting images.
edgel2 records the result in the model file's metadata (``"temperature"``, ``"unsmooth"``) and
the runtime applies it (:func:`edgel2.calibration.apply.calibrated_probabilities`): the
graph's logits stay exactly those checked against Keras, and a file can be calibrated again
on a user's own images without re-exporting or re-quantizing it.

The package, one module a job: ``apply`` (the probabilities a calibrated file means; numpy
only, the one part the runtime imports), ``fit`` (fitting and judging a calibration; numpy
only), ``files`` (calibrating a model file or, at export, the Keras model, and writing the
result into the file's metadata: :func:`calibrate_file`, ``edgel2 calibrate``).
"""
from __future__ import annotations

from typing import Any

from edgel2.calibration.apply import UNSMOOTH_FLOOR, calibrated_probabilities, softmax
from edgel2.calibration.fit import (
    ECE_BINS,
    MAX_UNSMOOTH,
    MIN_CALIBRATION_IMAGES,
    calibration_figures,
    calibration_refusal,
    calibration_split,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    fit_unsmooth,
    negative_log_likelihood,
    reliability_bins,
)

__all__ = ["ECE_BINS", "MAX_UNSMOOTH", "MIN_CALIBRATION_IMAGES", "UNSMOOTH_FLOOR",
           "calibrate_file", "calibrated_probabilities", "calibration_figures",
           "calibration_refusal", "calibration_split", "expected_calibration_error",
           "fit_calibration", "fit_temperature", "fit_unsmooth", "negative_log_likelihood",
           "reliability_bins", "softmax"]


def __getattr__(name: str) -> Any:
    """``calibrate_file`` is imported on first use: it needs export and data, and the runtime
    imports this package for its apply step alone."""
    if name == "calibrate_file":
        from edgel2.calibration.files import calibrate_file

        return calibrate_file
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
