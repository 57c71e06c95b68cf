"""What a calibrated model file's probabilities mean, computed from its logits: the one part
of calibration the runtime imports (numpy only)."""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities per row; a row with any NaN or infinite logit becomes all NaN, so that no
    label is ever read off it.

    Examples:
        >>> softmax(np.array([[0.0, 0.0], [np.inf, 0.0]], np.float32)).tolist()
        [[0.5, 0.5], [nan, nan]]
    """
    logits = np.where(np.isfinite(logits).all(axis=-1, keepdims=True), logits, np.nan)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


# Probabilities below this fraction of the softmax's are not cut further by the inverse of
# label smoothing, so that every class keeps a non-zero probability in its original order.
UNSMOOTH_FLOOR = 0.01


def calibrated_probabilities(logits: np.ndarray, temperature: float = 1.0,
                             unsmooth: float = 0.0) -> np.ndarray:
    """The probabilities a calibrated model file means: ``q = softmax(logits / temperature)``,
    then, if ``unsmooth`` (a label-smoothing rate ``a``) is set, the inverse of label
    smoothing: ``p ~ max(q - a / classes, UNSMOOTH_FLOOR * q)``, renormalized. A model
    trained with smoothing ``a`` learns to say ``(1 - a) * onehot + a / classes``; this maps
    that back. Both keep every row's order of classes, so top-k never changes. Rows with a
    non-finite logit are all NaN (see :func:`softmax`).

    Examples:
        >>> calibrated_probabilities(np.array([[2.0, 0.0]]), temperature=2.0).round(4).tolist()
        [[0.7311, 0.2689]]
        >>> calibrated_probabilities(np.log(np.array([[0.9, 0.1]])), unsmooth=0.2).round(4).tolist()
        [[0.9988, 0.0012]]
    """
    q = softmax(np.asarray(logits, np.float64) / temperature)
    if unsmooth:
        q = np.maximum(q - unsmooth / q.shape[-1], UNSMOOTH_FLOOR * q)
        q = q / q.sum(axis=-1, keepdims=True)
    return q
