"""The stem convolution with the input normalization folded in, and back: the arithmetic the
int8 export uses to let the stem read uint8 pixels (:mod:`edgel2.export.qdq`) and the
pretrained weights use to read such a file back into Keras (:mod:`edgel2.pretrained`).
Numpy only."""
from __future__ import annotations

import numpy as np

# The name prefix of the nodes an int8 export adds where it folds the normalization.
PREFIX = "edgel2_input_fold/"


def fold_stem(weights: np.ndarray, bias: np.ndarray, mean: np.ndarray, std: np.ndarray,
              channel_multiple: int = 4) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Fold ``(x - mean_c) / std_c`` into a convolution's float ``weights`` [O, C, kh, kw] and
    ``bias`` [O]; return ``(weights, bias, zero_point, scale)`` for input ``(x - zero_point) *
    scale``, the weights zero-padded to a multiple of ``channel_multiple`` input channels.

    From ``(x_c - m_c) / s_c = (x_c - z) / s * (s / s_c) + (z - m_c) / s_c``: input channel ``c``
    of the weights scales by ``s / s_c`` and the constant second term moves into the bias.

    Examples:
        >>> w, b, z, scale = fold_stem(np.ones((1, 3, 1, 1)), np.zeros(1),
        ...                            np.array([100.0, 120, 140]), np.array([50.0, 50, 50]))
        >>> w.shape, b.round(6).tolist(), z, scale
        ((1, 4, 1, 1), [0.0], 120, 0.02)
    """
    zero_point = int(np.clip(np.round(mean.mean()), 0, 255))
    bias = bias + np.einsum("ochw,c->o", weights, (zero_point - mean) / std)
    weights = weights * (std.mean() / std).reshape(1, -1, 1, 1)
    channels = weights.shape[1]
    padded = -(-channels // channel_multiple) * channel_multiple
    weights = np.pad(weights, ((0, 0), (0, padded - channels), (0, 0), (0, 0)))
    return weights, bias, zero_point, float(1.0 / std.mean())


def unfold_stem(weights: np.ndarray, bias: np.ndarray, mean: np.ndarray, std: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`fold_stem`: the stem's ``weights`` [O, C, kh, kw] and ``bias``
    [O] for normalized input ``(x - mean_c) / std_c`` again, padding channels dropped.

    Examples:
        >>> w, b = np.random.default_rng(0).normal(size=(2, 3, 3, 3)), np.array([0.5, -1.0])
        >>> mean, std = np.array([125.3, 123.0, 113.9]), np.array([63.0, 62.1, 66.7])
        >>> folded, folded_bias, _, _ = fold_stem(w, b, mean, std)
        >>> back, back_bias = unfold_stem(folded, folded_bias, mean, std)
        >>> bool(np.allclose(back, w) and np.allclose(back_bias, b))
        True
    """
    zero_point = int(np.clip(np.round(mean.mean()), 0, 255))
    weights = weights[:, :len(mean)] / (std.mean() / std).reshape(1, -1, 1, 1)
    bias = bias - np.einsum("ochw,c->o", weights, (zero_point - mean) / std)
    return weights, bias
