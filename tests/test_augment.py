"""edgel2.augment: per-image random crop (within the padding), flip and cutout, training only."""
from __future__ import annotations

import keras
import numpy as np

from edgel2.augment import RandomCropFlip, cutout, random_crop_flip, with_augmentation

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


def test_cutout_fills_one_square_per_image_clipped_at_the_border():
    images = np.full((256, 32, 32, 3), 200, np.uint8)
    out = keras.ops.convert_to_numpy(cutout(images, keras.random.SeedGenerator(1), 8, [1, 2, 3]))
    for image in out:
        filled = np.all(image == [1, 2, 3], axis=-1)
        assert np.all(image[~filled] == 200)  # nothing else changes
        rows, cols = np.nonzero(filled)
        assert 0 < rows.size <= 64
        # the filled pixels form one axis-aligned rectangle, at most 8 x 8
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert rows.size == height * width and height <= 8 and width <= 8
    # most squares lie wholly inside a 32 x 32 image; some are clipped at the border
    sizes = np.all(out == [1, 2, 3], axis=-1).sum(axis=(1, 2))
    assert np.mean(sizes == 64) > 0.5 and np.any(sizes < 64)


def test_training_wrapper_cuts_out_with_the_mean_pixel_only_when_asked():
    from edgel2.model import resnet18

    plain = with_augmentation(resnet18(width=4), seed=0).get_layer("crop_flip")
    with_cutout = with_augmentation(resnet18(width=4), seed=0, cutout=16).get_layer("crop_flip")
    assert plain.cutout == 0
    assert with_cutout.cutout == 16 and with_cutout.cutout_fill == [125, 123, 114]  # CIFAR mean
    flat = np.full((64, 32, 32, 3), 7, np.uint8)  # crops and flips leave a flat image as it is
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(plain(flat, training=True)), flat)
    out = keras.ops.convert_to_numpy(with_cutout(flat, training=True))
    assert np.all(np.any(np.all(out == [125, 123, 114], axis=-1), axis=(1, 2)))
