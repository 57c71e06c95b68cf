"""Training that targets unknown images: synthetic outliers with uniform targets (outlier
exposure) and the logit-norm loss.

Outlier exposure (Hendrycks et al., 2019) adds images of none of the classes to training with
the uniform distribution as their target, so the network learns to be unsure on them. Real
outlier sets (80 Million Tiny Images, as the paper used) cannot ship here, so the outliers are
made from the batch itself, with no download and no second dataset:

- **jigsaw**: one of the batch's images cut into a 4x4 grid of tiles, shuffled (every object
  part is there, no object is);
- **noise**: uniform colour noise in square cells of 1, 2, 4 or 8 pixels (from pixel noise to
  coloured blocks);
- **mix**: the pixel average of two of the batch's images of different classes.

They are a function of (seed, epoch, batch index) only, like the batch order, so a resumed run
sees the outliers an uninterrupted one would have. Logit norm (Wei et al., 2022) trains on
``logits / (temperature * ||logits||)``: the loss can no longer fall by growing the logits, the
usual cause of 99 % confidence on anything.
"""
from __future__ import annotations

import keras
import numpy as np

OUTLIER_KINDS = ("jigsaw", "noise", "mix")
JIGSAW_GRID = 4
NOISE_CELLS = (1, 2, 4, 8)


def outlier_count(share: float, batch_size: int, devices: int = 1) -> int:
    """Synthetic outliers added to each global batch of ``batch_size`` known images: ``share``
    of it, rounded to a multiple of ``devices`` (every device gets the same number of rows).

    Examples:
        >>> outlier_count(0.25, 512), outlier_count(0.25, 64, devices=3), outlier_count(0, 512)
        (128, 15, 0)
    """
    return int(round(share * batch_size / devices)) * devices


def synthetic_outliers(images: np.ndarray, labels: np.ndarray, count: int,
                       rng: np.random.Generator) -> np.ndarray:
    """``count`` images of none of the classes made from ``images`` (uint8, N x H x W x 3):
    jigsaws, noise and mixes in turn (see the module's docstring).

    Args:
        images: The batch's known images.
        labels: Their integer labels (a mix takes two images of different labels).
        count: How many outliers to make.
        rng: The generator every random choice comes from.

    Returns:
        uint8 images, ``count`` x H x W x 3.

    Examples:
        >>> x = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
        >>> out = synthetic_outliers(x, np.array([0, 1]), 3, np.random.default_rng(0))
        >>> out.shape, out.dtype
        ((3, 8, 8, 3), dtype('uint8'))
        >>> sorted(out[0].ravel().tolist()) in [sorted(i.ravel().tolist()) for i in x]  # a jigsaw
        True
    """
    makers = {"jigsaw": _jigsaw, "noise": _noise, "mix": _mix}
    return np.stack([makers[OUTLIER_KINDS[i % len(OUTLIER_KINDS)]](images, labels, rng)
                     for i in range(count)]) if count else images[:0].copy()


def _jigsaw(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An image's 4x4 tiles in a shuffled order (a border that does not divide stays)."""
    image = images[rng.integers(len(images))].copy()
    th, tw = image.shape[0] // JIGSAW_GRID, image.shape[1] // JIGSAW_GRID
    if not th or not tw:
        return image[::-1, ::-1].copy()  # too small to cut: rotated half a turn
    tiles = [image[r * th:(r + 1) * th, c * tw:(c + 1) * tw].copy()
             for r in range(JIGSAW_GRID) for c in range(JIGSAW_GRID)]
    order = rng.permutation(len(tiles))
    while np.all(order == np.arange(len(tiles))):
        order = rng.permutation(len(tiles))
    for spot, tile in enumerate(order):
        r, c = divmod(spot, JIGSAW_GRID)
        image[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tiles[tile]
    return image


def _noise(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform colour noise in square cells of a random side from NOISE_CELLS."""
    height, width = images.shape[1:3]
    cell = int(rng.choice(NOISE_CELLS))
    coarse = rng.integers(0, 256, (-(-height // cell), -(-width // cell), 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]


def _mix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The average of two images of different classes (of any two, if the batch has one)."""
    first = int(rng.integers(len(images)))
    others = np.flatnonzero(labels != labels[first])
    second = int(rng.choice(others)) if len(others) else int(rng.integers(len(images)))
    mixed = (images[first].astype(np.uint16) + images[second]) // 2
    return mixed.astype(np.uint8)


@keras.saving.register_keras_serializable(package="edgel2")
class LogitNormCrossentropy(keras.losses.Loss):
    """Cross-entropy on ``logits / (temperature * ||logits||)`` (logit norm; Wei et al., 2022):
    the logits' direction is trained, their length is not. Soft targets (label smoothing, the
    outliers' uniform targets) are taken as they are.

    Examples:
        >>> loss = LogitNormCrossentropy(temperature=0.04)
        >>> y = np.eye(2, dtype="float32")
        >>> a = float(loss(y, np.array([[2.0, 0.0], [0.0, 2.0]], "float32")))
        >>> b = float(loss(y, np.array([[20.0, 0.0], [0.0, 20.0]], "float32")))
        >>> abs(a - b) < 1e-6      # ten times the logits, the same loss
        True
    """

    def __init__(self, temperature: float, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature, self.label_smoothing = float(temperature), float(label_smoothing)

    def call(self, y_true, y_pred):
        logits = keras.ops.cast(y_pred, "float32")
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(logits), axis=-1, keepdims=True))
        logits = logits / ((norm + 1e-7) * self.temperature)
        return keras.losses.categorical_crossentropy(
            y_true, logits, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature,
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="edgel2")
class KnownAccuracy(keras.metrics.CategoricalAccuracy):
    """Top-1 over the rows whose target is one class: the outliers' uniform rows (no class
    above 1/2) are left out, so the training top-1 is that of the known images.

    Examples:
        >>> metric = KnownAccuracy()
        >>> metric.update_state(np.array([[1, 0], [0.5, 0.5]], "float32"),
        ...                     np.array([[2, 0], [0, 2]], "float32"))
        >>> float(metric.result())
        1.0
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        # with a teacher the targets are [labels | teacher logits] (edgel2.train.distill)
        y_true = y_true[..., :keras.ops.shape(y_pred)[-1]]
        known = keras.ops.cast(keras.ops.max(y_true, axis=-1) > 0.5, "float32")
        if sample_weight is not None:
            known = known * keras.ops.reshape(keras.ops.cast(sample_weight, "float32"),
                                              keras.ops.shape(known))
        return super().update_state(y_true, y_pred, sample_weight=known)
