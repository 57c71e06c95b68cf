"""The order the training images are seen in: a function of (seed, epoch) only, so that a
resumed run sees exactly the batches an uninterrupted one would have."""
from __future__ import annotations

import keras
import numpy as np


class ShuffledBatches(keras.utils.PyDataset):
    """Full batches of (uint8 images, one-hot labels) in a fresh seeded order each epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``. ``fit`` must get
    ``shuffle=False``: with ``shuffle=True`` Keras reorders a PyDataset's batches with
    Python's global random state, which no checkpoint holds. The last partial batch is
    dropped so that a compiled train step never sees a second shape (a recompile on JAX).

    Example:
        >>> x, y = np.zeros((10, 2, 2, 3), np.uint8), np.eye(2, dtype=np.float32)[np.arange(10) % 2]
        >>> batches = ShuffledBatches(x, y, batch_size=4, seed=0, epoch=3)
        >>> len(batches), batches[0][0].shape
        (2, (4, 2, 2, 3))
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int = 0):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch = epoch
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return max(1, len(self.y) // self.batch_size)

    def __getitem__(self, index: int):
        picked = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])
        return self.x[picked], self.y[picked]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffle()


def even_batch_size(count: int, target: int) -> int:
    """A batch size near ``target`` that divides ``count``, so evaluation has no partial last
    batch (on JAX each new batch shape is another compile); ``target`` if none is near.

    Example:
        >>> even_batch_size(10_000, 512), even_batch_size(10_007, 512)
        (500, 512)
    """
    near = [b for b in range(target // 2, 2 * target + 1) if count % b == 0]
    return min(near, key=lambda b: abs(b - target)) if near else target


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels as float32 one-hot rows (what the label-smoothed loss takes)."""
    return np.eye(num_classes, dtype=np.float32)[labels]
