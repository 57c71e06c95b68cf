"""The arithmetic of folding ``(x - mean_c) / std_c`` into the stem convolution
(edgel2.stem.fold_stem): exact inside the image, a known error on the padded border."""
from __future__ import annotations

import numpy as np

from edgel2.model import CIFAR10_MEAN, CIFAR10_STD
from edgel2.stem import fold_stem

MEAN, STD = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)


def conv3x3_zero_padded(image: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Reference 3x3 'same' convolution: image [H, W, C], weights [O, C, 3, 3] -> [H, W, O]."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    h, w, _ = image.shape
    out = np.empty((h, w, len(weights)))
    for i in range(h):
        for j in range(w):
            out[i, j] = np.einsum("hwc,ochw->o", padded[i:i + 3, j:j + 3], weights) + bias
    return out


def setup(seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (6, 6, 3)).astype(np.float64)
    weights, bias = rng.normal(size=(5, 3, 3, 3)), rng.normal(size=5)
    return pixels, weights, bias


def original_and_folded(seed: int):
    """The stem's output on normalized pixels, and the folded stem's on ``(x - z) * scale``
    with the zero 4th channel; plus the weights and zero point."""
    pixels, weights, bias = setup(seed)
    original = conv3x3_zero_padded((pixels - MEAN) / STD, weights, bias)
    w, b, zero_point, scale = fold_stem(weights, bias, MEAN, STD)
    folded_input = np.pad((pixels - zero_point) * scale, ((0, 0), (0, 0), (0, 1)))
    return original, conv3x3_zero_padded(folded_input, w, b), weights, zero_point


def test_folded_stem_matches_the_normalized_convolution_inside_the_image():
    original, folded, _, _ = original_and_folded(0)
    np.testing.assert_allclose(folded[1:-1, 1:-1], original[1:-1, 1:-1], rtol=0, atol=1e-9)


def test_border_error_is_the_padded_taps_times_the_mean_offset():
    original, folded, weights, zero_point = original_and_folded(1)
    # Top-left corner: the padded taps are row 0 and column 0 of the 3x3 window.
    padded_taps = np.ones((3, 3), bool)
    padded_taps[1:, 1:] = False
    expected = np.einsum("ochw,hw,c->o", weights, padded_taps, (zero_point - MEAN) / STD)
    np.testing.assert_allclose(folded[0, 0] - original[0, 0], expected, rtol=0, atol=1e-9)


def test_fold_picks_the_rounded_mean_pixel_and_mean_std_and_pads_to_four_channels():
    _, weights, bias = setup()
    w, _, zero_point, scale = fold_stem(weights, bias, MEAN, STD)
    assert zero_point == 121 and scale == 1 / STD.mean()
    assert w.shape == (5, 4, 3, 3) and not w[:, 3].any()
    assert fold_stem(weights, bias, MEAN, STD, channel_multiple=1)[0].shape == (5, 3, 3, 3)
