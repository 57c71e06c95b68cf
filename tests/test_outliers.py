"""Training against unknown images: synthetic outliers in each batch (outlier exposure) and
the logit-norm loss. Exact resume with both is pinned in test_resume.py."""
from __future__ import annotations

import numpy as np
import pytest

from edgel2.config import TrainConfig
from edgel2.errors import OptionError
from edgel2.train.batches import ShuffledBatches, one_hot
from edgel2.train.outliers import (
    JIGSAW_GRID,
    KnownAccuracy,
    LogitNormCrossentropy,
    outlier_count,
    synthetic_outliers,
)

CLASSES = 4


@pytest.fixture
def images():
    """48 seeded 32x32 images of 4 classes, each pixel distinct enough to trace a tile."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    return x, one_hot(np.arange(48) % CLASSES, CLASSES)


def test_each_batch_gains_the_outliers_after_its_known_images_with_uniform_targets(images):
    x, y = images
    plain = ShuffledBatches(x, y, 16, seed=1, epoch=2)
    exposed = ShuffledBatches(x, y, 16, seed=1, epoch=2, outliers=4)
    for i in range(len(plain)):
        bx, by = exposed[i]
        assert bx.shape == (20, 32, 32, 3) and bx.dtype == np.uint8
        np.testing.assert_array_equal(bx[:16], plain[i][0])  # the same known images
        np.testing.assert_array_equal(by[:16], plain[i][1])
        np.testing.assert_array_equal(by[16:], np.full((4, CLASSES), 1 / CLASSES, np.float32))


def test_outliers_depend_only_on_seed_epoch_and_batch(images):
    x, y = images
    again = ShuffledBatches(x, y, 16, seed=1, epoch=2, outliers=4)
    first = ShuffledBatches(x, y, 16, seed=1, epoch=2, outliers=4)
    np.testing.assert_array_equal(first[1][0], again[1][0])
    first.on_epoch_end()   # epoch 3, as a run resumed at epoch 3 starts
    np.testing.assert_array_equal(first[0][0],
                                  ShuffledBatches(x, y, 16, seed=1, epoch=3, outliers=4)[0][0])
    assert not np.array_equal(first[0][0][16:], again[0][0][16:])


def test_process_shards_hold_the_one_process_batch_s_rows(images):
    x, y = images
    whole = ShuffledBatches(x, y, 16, seed=0, outliers=4)[0]
    shards = [ShuffledBatches(x, y, 16, seed=0, outliers=4, shard=(p, 2))[0] for p in (0, 1)]
    assert [len(s[0]) for s in shards] == [10, 10]  # 8 known images and 2 outliers each
    put_together = np.concatenate([s[0] for s in shards])
    assert sorted(map(bytes, put_together)) == sorted(map(bytes, whole[0]))


def test_a_jigsaw_is_one_batch_image_s_tiles_reordered(images):
    x, _ = images
    jigsaw = synthetic_outliers(x[:3], np.arange(3), 1, np.random.default_rng(0))[0]
    side = 32 // JIGSAW_GRID
    tiles = lambda im: sorted(im[r:r + side, c:c + side].tobytes()  # noqa: E731
                              for r in range(0, 32, side) for c in range(0, 32, side))
    sources = [i for i in range(3) if tiles(x[i]) == tiles(jigsaw)]
    assert len(sources) == 1 and not np.array_equal(jigsaw, x[sources[0]])


def test_noise_comes_in_square_cells_and_a_mix_averages_two_classes(images):
    x, _ = images
    labels = np.array([0, 0, 1])
    made = synthetic_outliers(x[:3], labels, 3, np.random.default_rng(3))
    noise, mix = made[1], made[2]
    cell = next(c for c in (8, 4, 2, 1) if np.array_equal(
        noise, np.repeat(np.repeat(noise[::c, ::c], c, 0), c, 1)))
    assert cell in (1, 2, 4, 8)
    averages = {(a, b): (x[a].astype(int) + x[b]) // 2 for a in range(3) for b in range(3)}
    pairs = [pair for pair, average in averages.items() if np.array_equal(average, mix)]
    assert pairs and all(labels[a] != labels[b] for a, b in pairs)


def test_the_outlier_count_splits_over_the_devices():
    assert outlier_count(0.25, 512, devices=8) == 128
    assert outlier_count(0.1, 64, devices=4) % 4 == 0
    assert outlier_count(0.0, 512) == 0


def test_logit_norm_loss_ignores_the_logits_length_but_not_their_direction():
    loss = LogitNormCrossentropy(0.04, label_smoothing=0.1)
    y = np.eye(3, dtype=np.float32)[[0, 2]]
    logits = np.array([[3.0, 1.0, -1.0], [0.5, 0.0, 2.0]], np.float32)
    same = float(loss(y, logits)), float(loss(y, 7 * logits))
    assert same[0] == pytest.approx(same[1], rel=1e-5)
    assert float(loss(y, logits[:, ::-1].copy())) > same[0] + 1
    assert LogitNormCrossentropy.from_config(loss.get_config()).temperature == 0.04


def test_the_training_top1_counts_known_images_only():
    metric = KnownAccuracy()
    y_true = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.5, 0.5]], np.float32)
    y_pred = np.array([[3, 0], [3, 0], [3, 0], [0, 3]], np.float32)
    metric.update_state(y_true, y_pred, sample_weight=np.array([1, 1, 1, 1], np.float32))
    assert float(metric.result()) == 0.5


@pytest.mark.parametrize("field, value, message", [
    ("outliers", 1.5, "outliers must be in [0, 1], got 1.5"),
    ("logit_norm", -1.0, "logit norm must be >= 0, got -1.0"),
])
def test_bad_settings_name_the_option(field, value, message):
    with pytest.raises(OptionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(**{field: value}).validate()
