"""edgel2.augment: per-image random crop (within the padding) and flip, training only."""
from __future__ import annotations

import keras
import numpy as np

from edgel2.augment import RandomCropFlip, random_crop_flip

PAD = 4
IMAGE = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
BATCH = np.repeat(IMAGE[None], 64, axis=0)


def _candidates(image: np.ndarray) -> dict[tuple[int, int, bool], np.ndarray]:
    """Every crop of the reflect-padded image, flipped or not, keyed by (dy, dx, flipped)."""
    padded = np.pad(image, [(PAD, PAD), (PAD, PAD), (0, 0)], mode="reflect")
    out = {}
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = padded[dy:dy + 32, dx:dx + 32]
            out[(dy, dx, False)], out[(dy, dx, True)] = crop, crop[:, ::-1]
    return out


def _augment(batch, seed=7):
    return keras.ops.convert_to_numpy(random_crop_flip(batch, keras.random.SeedGenerator(seed), PAD))


def test_shape_and_dtype_are_kept():
    out = _augment(BATCH)
    assert out.shape == BATCH.shape and out.dtype == np.uint8


def test_every_output_is_a_crop_within_the_padding_possibly_flipped():
    candidates = _candidates(IMAGE)
    found = []
    for image in _augment(BATCH):
        matches = [key for key, crop in candidates.items() if np.array_equal(crop, image)]
        assert matches, "an output is not any crop/flip of the padded input"
        found.append(matches[0])
    # both flips and several offsets occur: the draws are per image, not per batch
    assert {flipped for _, _, flipped in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 20


def test_same_seed_same_augmentation_and_next_call_differs():
    generator_a, generator_b = keras.random.SeedGenerator(3), keras.random.SeedGenerator(3)
    first_a = keras.ops.convert_to_numpy(random_crop_flip(BATCH, generator_a, PAD))
    first_b = keras.ops.convert_to_numpy(random_crop_flip(BATCH, generator_b, PAD))
    np.testing.assert_array_equal(first_a, first_b)
    second_a = keras.ops.convert_to_numpy(random_crop_flip(BATCH, generator_a, PAD))
    assert not np.array_equal(first_a, second_a)


def test_layer_is_a_no_op_outside_training():
    layer = RandomCropFlip(seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(BATCH, training=False)), BATCH)
    assert not np.array_equal(keras.ops.convert_to_numpy(layer(BATCH, training=True)), BATCH)
