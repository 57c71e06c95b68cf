"""Scores that say how unlike the known classes an image is, fitted on known images, and the
measures of how well a score tells known from unknown (AUROC, FPR at 95 % TPR).

Every score is "higher means more unknown". Each ``fit_*`` takes what the network computes on
known (training) images and returns a function of the same quantities on new images, so the
scores are compared on equal terms and the chosen one can be written into the graph
(:mod:`edgel2.unknown.head`). numpy only: the runtime and ``eval`` use the measures too.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The share of known images a threshold keeps by default (the usual FPR95 operating point).
DEFAULT_KEEP = 0.95
# Shrinkage of the shared covariance towards its mean variance: 512 features fitted on a few
# thousand images give a singular covariance otherwise.
SHRINKAGE = 0.01


def logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """Minus the top softmax probability (Hendrycks and Gimpel, 2017)."""
    return -np.exp(logits.max(axis=1) - logsumexp(logits))


def energy(logits: np.ndarray) -> np.ndarray:
    """Minus the log-sum-exp of the logits, the free energy (Liu et al., 2020)."""
    return -logsumexp(logits)


def feature_norm(features: np.ndarray) -> np.ndarray:
    """The norm of the pooled features ``‖u‖``: unknown when large."""
    return np.linalg.norm(features, axis=1)


def precision_factor(features: np.ndarray, labels: np.ndarray, shrinkage: float = SHRINKAGE
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The class means and a matrix ``W`` with ``W @ W.T`` the inverse of the shared
    (class-centred) covariance, shrunk towards its mean variance.

    Returns:
        ``(means [classes, d], W [d, d])``: the Mahalanobis distance of ``u`` to class ``c``
        is ``‖(u - means[c]) @ W‖²``.
    """
    features = features.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / len(features)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    values, vectors = np.linalg.eigh(cov)
    return means, vectors / np.sqrt(values)


def on_int8_grid(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` rounded to symmetric int8 steps per column (scale: the column's largest
    magnitude / 127), so that int8 files store it exactly: the score's 960x960 projection is
    3.5 MB as float32, 0.9 MB as int8, and the class centres are computed from the rounded
    matrix, so every file, float or int8, computes the same score.

    Examples:
        >>> grid = on_int8_grid(np.array([[1.0, 0.5], [-0.3, 0.25]]))
        >>> (grid / (np.abs(grid).max(axis=0) / 127)).round(9).tolist()   # whole int8 steps
        [[127.0, 127.0], [-38.0, 64.0]]
    """
    steps, scale = int8_columns(matrix)
    return steps * scale


def int8_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``matrix`` as symmetric int8 steps per column and each column's scale (its largest
    magnitude / 127; 1 for a column of zeros): ``steps * scale`` is :func:`on_int8_grid`.

    Examples:
        >>> steps, scale = int8_columns(np.array([[1.0, 0.0], [-0.5, 0.0]]))
        >>> steps.tolist(), scale.tolist()
        ([[127, 0], [-64, 0]], [0.007874015748031496, 1.0])
    """
    scale = np.abs(matrix).max(axis=0) / 127
    scale[scale == 0] = 1.0
    return np.clip(np.round(matrix / scale), -127, 127).astype(np.int8), scale


def mahalanobis_distance(features: np.ndarray, means: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The squared Mahalanobis distance to the nearest class mean."""
    z, centres = features.astype(np.float64) @ factor, means @ factor
    squared = (z * z).sum(1)[:, None] - 2 * z @ centres.T + (centres * centres).sum(1)[None]
    return squared.min(axis=1)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The squared Mahalanobis distance to the nearest class mean, with one covariance shared
    by the classes (Lee et al., 2018, without input perturbation)."""
    means, factor = precision_factor(features, labels)
    return lambda u: mahalanobis_distance(u, means, factor)


def fit_multi_mahalanobis(layers: list[np.ndarray], labels: np.ndarray
                          ) -> Callable[[list[np.ndarray]], np.ndarray]:
    """The sum over layers of each layer's Mahalanobis distance, standardized by its mean and
    standard deviation on the fitting images (so no layer dominates by its dimension)."""
    fits = [fit_mahalanobis(f, labels) for f in layers]
    known = [fit(f) for fit, f in zip(fits, layers)]
    centre = [float(np.mean(k)) for k in known]
    scale = [float(np.std(k)) or 1.0 for k in known]
    def score(fs: list[np.ndarray]) -> np.ndarray:
        return np.sum([(fit(f) - c) / s for fit, f, c, s in zip(fits, fs, centre, scale)], axis=0)
    return score


def fit_knn(features: np.ndarray, k: int = 10, bank: int = 10_000, seed: int = 0
            ) -> Callable[[np.ndarray], np.ndarray]:
    """Minus the cosine similarity to the k-th nearest of ``bank`` fitting images (Sun et
    al., 2022)."""
    chosen = np.random.default_rng(seed).permutation(len(features))[:bank]
    normed = _unit(features[chosen])

    def score(u: np.ndarray) -> np.ndarray:
        similarity = _unit(u) @ normed.T
        return -np.sort(similarity, axis=1)[:, -k]
    return score


def fit_vim(features: np.ndarray, logits: np.ndarray, kernel: np.ndarray, bias: np.ndarray,
            dim: int | None = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Virtual-logit matching (Wang et al., 2022): the norm of the features outside their
    principal subspace (about the classifier's origin ``-pinv(kernel.T) @ bias``), scaled to
    the logits' size, minus the energy."""
    origin = -np.linalg.pinv(kernel.T) @ bias
    centred = features - origin
    dim = dim or min(features.shape[1] // 2, 256)
    _, _, vt = np.linalg.svd(centred[:5000], full_matrices=False)
    residual = vt[dim:].T

    def residual_norm(u: np.ndarray) -> np.ndarray:
        return np.linalg.norm((u - origin) @ residual, axis=1)
    alpha = float(logits.max(axis=1).mean() / residual_norm(features).mean())
    return lambda u, z: alpha * residual_norm(u) - logsumexp(z)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The probability that an unknown image scores above a known one (ties count half).

    Examples:
        >>> auroc(np.array([0.1, 0.2]), np.array([0.3, 0.15]))
        0.75
    """
    scores = np.concatenate([known, unknown])
    ranks = _average_ranks(scores)
    n_known, n_unknown = len(known), len(unknown)
    return float((ranks[n_known:].sum() - n_unknown * (n_unknown + 1) / 2) / (n_known * n_unknown))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    return ranks


def threshold_for(known: np.ndarray, keep: float = DEFAULT_KEEP) -> float:
    """The score above which an image is unknown, keeping ``keep`` of ``known``.

    Examples:
        >>> threshold_for(np.arange(100.0), 0.95)
        94.05
    """
    return float(np.quantile(known, keep))


def fpr_at(known: np.ndarray, unknown: np.ndarray, keep: float = DEFAULT_KEEP) -> float:
    """The share of unknown images kept as known at the threshold that keeps ``keep`` of the
    known ones (FPR95 for ``keep`` 0.95).

    Examples:
        >>> fpr_at(np.arange(100.0), np.array([50.0, 99.0, 200.0]))
        0.3333333333333333
    """
    return float(np.mean(unknown <= threshold_for(known, keep)))
