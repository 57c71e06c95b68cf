"""Fitting a one-parameter calibration to held-out logits, and the numbers that judge it
(ECE, NLL, reliability bins, when a fit is refused); numpy only. See the package docstring."""
from __future__ import annotations

import numpy as np

from edgel2.calibration.apply import calibrated_probabilities

ECE_BINS = 15                   # the usual choice (Guo et al.)
CALIBRATION_SEED = 0
# Temperatures searched: beyond these a model is not miscalibrated, it is broken.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
MAX_UNSMOOTH = 0.9  # label smoothing rates searched: [0, 0.9]

# When a fitted calibration is written (calibration_refusal): never when it could make the
# probabilities worse than plain softmax.
# - At least MIN_CALIBRATION_IMAGES fitting images. Fitted on n random CIFAR-10-JPEG test
#   images of the shipped int8 ONNX and judged on 5,000 others (scripts/repro/calibration_sample_size.py,
#   100 draws each), the fit made the held-out NLL worse in 51 % of draws at n = 10, 34 % at
#   20, 10 % at 30, 4 % at 50 (each as bad as +2.19 nats: a temperature driven to its bound by
#   a sample the model got all right) and in none from 100 on (worst -0.066).
MIN_CALIBRATION_IMAGES = 100
# - A temperature may sharpen the logits by at most MAX_SHARPEN (T >= 1/4). Label smoothing a
#   caps a K-class network's logit gap near log((1 - a + a/K) / (a/K)): 3.7 for a = 0.2, K = 10,
#   where a 99.9 %-confident answer needs 9.1, so an honest correction sharpens about 2.5x
#   (the shipped model's temperature fit on 5,000 images is 0.64: 1.6x); past 4x the fit is
#   chasing a few images (0.05, the search's bound, is 20x).
MAX_SHARPEN = 4.0
# - The fitted parameter is not at (within this fraction of) an end of its search range.
AT_BOUND = 1e-3


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p(true class)``.

    Examples:
        >>> round(negative_log_likelihood(np.array([[0.5, 0.5]]), np.array([0])), 4)  # log 2
        0.6931
    """
    probabilities = np.asarray(probabilities, np.float64)
    true = probabilities[np.arange(len(labels)), np.asarray(labels)]
    # + 0.0: a perfect fit is 0.0, not -0.0
    return float(-np.mean(np.log(np.maximum(true, np.finfo(np.float64).tiny)))) + 0.0


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence (top-1 probability) and accuracy, averaged over
    ``bins`` equal-width confidence bins (:func:`reliability_bins`) weighted by how many
    images fall in each.

    Examples:
        >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
        >>> round(expected_calibration_error(p, np.array([0, 1, 0, 0])), 4)  # (2*0.4 + 2*0.4)/4
        0.4
    """
    rows = reliability_bins(probabilities, labels, bins)
    gap = sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])
    return float(gap / max(len(labels), 1))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                     ) -> list[dict]:
    """Per confidence bin: its range, image count, mean confidence and accuracy (None where
    empty), what a reliability diagram draws.

    Examples:
        >>> rows = reliability_bins(np.array([[0.9, 0.1]]), np.array([0]), bins=2)
        >>> [(r["count"], r["accuracy"]) for r in rows]
        [(0, None), (1, 1.0)]
    """
    confidence, correct = _confidence_and_correct(probabilities, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                     "count": int(members.sum()),
                     "confidence": float(confidence[members].mean()) if members.any() else None,
                     "accuracy": float(correct[members].mean()) if members.any() else None})
    return rows


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimizes the NLL of ``labels``, in [MIN_TEMPERATURE,
    MAX_TEMPERATURE]. The NLL is convex in ``1 / T``, so a golden-section search over it
    finds the one minimum.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> true = rng.normal(size=(20000, 10)) * 3          # logits that are calibrated
        >>> cumulative = calibrated_probabilities(true).cumsum(axis=1)
        >>> labels = (rng.random((20000, 1)) < cumulative).argmax(axis=1)
        >>> round(fit_temperature(true * 2.0, labels), 1)   # logits twice too sharp
        2.0
    """
    logits, labels = _checked(logits, labels)
    inverse = _golden_minimum(
        lambda beta: negative_log_likelihood(calibrated_probabilities(logits, 1.0 / beta), labels),
        1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE)
    return float(1.0 / inverse)


def fit_unsmooth(logits: np.ndarray, labels: np.ndarray) -> float:
    """The label-smoothing rate whose inverse minimizes the NLL of ``labels``, in
    [0, MAX_UNSMOOTH].

    Examples:
        >>> labels = np.repeat(np.arange(10), 100)
        >>> smoothed = np.full((1000, 10), 0.02) + 0.8 * np.eye(10)[labels]  # a = 0.2, all right
        >>> round(fit_unsmooth(np.log(smoothed), labels), 2) >= 0.19
        True
    """
    logits, labels = _checked(logits, labels)
    return float(_golden_minimum(
        lambda a: negative_log_likelihood(calibrated_probabilities(logits, 1.0, a), labels),
        0.0, MAX_UNSMOOTH))


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Fit both one-parameter maps and keep the one with the lower NLL on these images:
    ``{"method", "temperature", "unsmooth", "fit_nll", "candidates"}``, where the unused
    parameter is at its identity (1.0 or 0.0).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> truth = rng.dirichlet(np.full(10, 0.1), size=5000)      # what the model should say
        >>> labels = (rng.random((5000, 1)) < truth.cumsum(axis=1)).argmax(axis=1)
        >>> said = 0.8 * truth + 0.02                              # what smoothing 0.2 teaches
        >>> fitted = fit_calibration(np.log(said), labels)
        >>> fitted["method"], round(fitted["unsmooth"], 1)
        ('unsmooth', 0.2)
    """
    logits, labels = _checked(logits, labels)
    temperature, unsmooth = fit_temperature(logits, labels), fit_unsmooth(logits, labels)
    candidates = {
        "temperature": {"temperature": temperature, "unsmooth": 0.0},
        "unsmooth": {"temperature": 1.0, "unsmooth": unsmooth},
    }
    for params in candidates.values():
        params["fit_nll"] = negative_log_likelihood(
            calibrated_probabilities(logits, params["temperature"], params["unsmooth"]), labels)
    method = min(candidates, key=lambda m: candidates[m]["fit_nll"])
    return {"method": method, **candidates[method], "candidates": candidates}


def calibration_refusal(fitted: dict, images: int, nll_before: float, nll_after: float
                        ) -> str | None:
    """Why a calibration fitted on ``images`` images (:func:`fit_calibration`'s result) must
    not be written, in one line; None when it may. ``nll_before``/``nll_after`` are the NLL
    of plain softmax and of the calibration on held-out images the fit did not see.

    Examples:
        >>> fitted = {"method": "temperature", "temperature": 0.05, "unsmooth": 0.0}
        >>> calibration_refusal(fitted, 24, 0.33, 4.94)
        'fitted on 24 images, fewer than the 100 a calibration needs'
        >>> calibration_refusal(fitted, 500, 0.33, 0.30)
        'the fitted temperature 0.0500 is at the end of its search range (0.05 to 20)'
        >>> calibration_refusal({**fitted, "temperature": 0.2}, 500, 0.33, 0.30)
        'temperature 0.2000 would sharpen the logits 5.0x, more than the 4x allowed'
        >>> calibration_refusal({**fitted, "temperature": 0.8}, 500, 0.33, 0.34)
        'it does not lower the held-out NLL (0.3300 -> 0.3400)'
        >>> calibration_refusal({**fitted, "temperature": 0.8}, 500, 0.33, 0.30) is None
        True
    """
    if images < MIN_CALIBRATION_IMAGES:
        return f"fitted on {images} images, fewer than the {MIN_CALIBRATION_IMAGES} a calibration needs"
    if fitted["method"] == "unsmooth":
        value, low, high = fitted["unsmooth"], 0.0, MAX_UNSMOOTH
    else:
        value, low, high = fitted["temperature"], MIN_TEMPERATURE, MAX_TEMPERATURE
    span = (high - low) * AT_BOUND
    if value <= low + span or value >= high - span:
        what = "label smoothing rate" if fitted["method"] == "unsmooth" else "temperature"
        return (f"the fitted {what} {value:.4f} is at the end of its search range "
                f"({low:g} to {high:g})")
    if fitted["method"] == "temperature" and fitted["temperature"] * MAX_SHARPEN < 1.0:
        return (f"temperature {fitted['temperature']:.4f} would sharpen the logits "
                f"{1 / fitted['temperature']:.1f}x, more than the {MAX_SHARPEN:g}x allowed")
    if not nll_after < nll_before:
        return f"it does not lower the held-out NLL ({nll_before:.4f} -> {nll_after:.4f})"
    return None


def calibration_figures(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
                        unsmooth: float = 0.0, bins: int = ECE_BINS) -> dict:
    """Top-1, mean confidence, ECE and NLL of the calibrated probabilities.

    Examples:
        >>> f = calibration_figures(np.array([[3.0, 0.0], [0.0, 3.0]]), np.array([0, 0]))
        >>> f["top1"], round(f["mean_confidence"], 3), f["images"]
        (0.5, 0.953, 2)
    """
    probabilities = calibrated_probabilities(logits, temperature, unsmooth)
    confidence, correct = _confidence_and_correct(probabilities, labels)
    return {"images": int(len(labels)), "temperature": float(temperature),
            "unsmooth": float(unsmooth), "top1": float(correct.mean()),
            "mean_confidence": float(confidence.mean()),
            "ece": expected_calibration_error(probabilities, labels, bins),
            "nll": negative_log_likelihood(probabilities, labels)}


def calibration_split(labels: np.ndarray, seed: int = CALIBRATION_SEED
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint class-balanced halves of a held-out split: the first to fit the
    temperature on, the second to report on (so no reported figure comes from fitted images).

    Examples:
        >>> fit, report = calibration_split(np.repeat(np.arange(3), 4))
        >>> len(fit), len(report), sorted(set(fit) | set(report)) == list(range(12))
        (6, 6, True)
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fit, report = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        half = (len(members) + 1) // 2
        fit.append(members[:half])
        report.append(members[half:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(report))


def _golden_minimum(f, low: float, high: float, steps: int = 60) -> float:
    """Where the unimodal ``f`` is least on [low, high] (the interval shrinks 0.618x a step)."""
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = f(a), f(b)
    for _ in range(steps):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = f(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = f(b)
    return (low + high) / 2.0


def _checked(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    if len(labels) == 0 or logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"need logits [N, classes] and N labels, got {list(logits.shape)} "
                         f"and {len(labels)}")
    if not np.isfinite(logits).all():
        raise ValueError("cannot calibrate on non-finite logits")
    return logits, labels


def _confidence_and_correct(probabilities: np.ndarray, labels: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, np.float64)
    return probabilities.max(axis=1), (probabilities.argmax(axis=1) == np.asarray(labels))
