"""The order the training images are seen in: a function of (seed, epoch) only, so that a
resumed run sees exactly the batches an uninterrupted one would have."""
from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from edgel2.train.outliers import synthetic_outliers


class ShuffledBatches(keras.utils.PyDataset):
    """Full batches of (uint8 images, one-hot labels) in a fresh seeded order each epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``. ``fit`` must get
    ``shuffle=False``: with ``shuffle=True`` Keras reorders a PyDataset's batches with
    Python's global random state, which no checkpoint holds. The last partial batch is
    dropped so that a compiled train step never sees a second shape (a recompile on JAX).

    ``shard=(p, P)``: process ``p`` of ``P`` training together gives only the ``p``-th of
    ``P`` equal slices of each batch (``batch_size`` is the global batch), so that the slices
    put together in process order are the batch one process would give.

    ``outliers``: synthetic images of none of the classes added to each global batch, with the
    uniform distribution as their target (:mod:`edgel2.train.outliers`), made from the batch's
    own images as a function of ``(seed, epoch, index)``. Each process gives its slice of the
    known images, then its slice of the outliers (``outliers`` must split over the processes):
    the same rows as one process, in another order.

    ``augment``: each batch's images go through it before the step, given
    ``(seed, epoch, index, process)`` to seed it (with a teacher, which must see the augmented
    batch). ``teacher`` (distillation, :mod:`edgel2.train.distill`): its logits on the batch's
    images are appended to the targets: ``[targets | teacher logits]``.

    Examples:
        >>> x, y = np.zeros((10, 2, 2, 3), np.uint8), np.eye(2, dtype=np.float32)[np.arange(10) % 2]
        >>> batches = ShuffledBatches(x, y, batch_size=4, seed=0, epoch=3)
        >>> len(batches), batches[0][0].shape
        (2, (4, 2, 2, 3))
        >>> ShuffledBatches(x, y, batch_size=4, seed=0, shard=(1, 2))[0][0].shape
        (2, 2, 2, 3)
        >>> ShuffledBatches(x, y, batch_size=4, seed=0, outliers=2)[0][1][-2:].tolist()
        [[0.5, 0.5], [0.5, 0.5]]
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int = 0,
                 shard: tuple[int, int] = (0, 1), outliers: int = 0,
                 teacher: Callable[[np.ndarray], np.ndarray] | None = None,
                 augment: Callable[[np.ndarray, tuple[int, ...]], np.ndarray] | None = None):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epoch, self.outliers, self.shard = epoch, outliers, shard
        self.teacher, self.augment = teacher, augment
        self._slice = _shard_slice(batch_size, *shard)
        self._order = self._shuffle()

    def _shuffle(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return max(1, len(self.y) // self.batch_size)

    def __getitem__(self, index: int):
        images, targets = self._batch(index)
        if self.augment is not None:
            images = self.augment(images, (self.seed, self.epoch, index, self.shard[0]))
        if self.teacher is None:
            return images, targets
        return images, np.concatenate([targets, self.teacher(images)], axis=1)

    def _batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of batch ``index``: known images, then outliers."""
        picked = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])
        mine = picked[self._slice]
        if not self.outliers:
            return self.x[mine], self.y[mine]
        # made from the whole global batch, then sliced: every process makes the same ones
        rng = np.random.default_rng([self.seed, self.epoch, index])
        made = synthetic_outliers(self.x[picked], np.argmax(self.y[picked], axis=1),
                                  self.outliers, rng)[_shard_slice(self.outliers, *self.shard)]
        uniform = np.full((len(made), self.y.shape[1]), 1 / self.y.shape[1], self.y.dtype)
        return (np.concatenate([self.x[mine], made]), np.concatenate([self.y[mine], uniform]))

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffle()


class HeldOutBatches(keras.utils.PyDataset):
    """The held-out images in order, as (images, one-hot labels, sample weights), for
    ``fit(validation_data=...)`` on any number of devices.

    Every batch holds a multiple of ``devices`` rows (a sharded batch must split evenly):
    the batch size is chosen to divide the image count when it can (no partial last batch,
    so no second compile on JAX), and a last batch that still does not split is padded with
    ``p`` copies of its first image weighted 0. Keras averages the held-out loss over batches
    weighted by their row counts, padding included (``N + p`` rows in all), so the ``N`` real
    rows weigh ``(N + p) / N`` each: the cross-entropy and top-1 are then exactly those of the
    ``N`` images (top-1 must be a ``weighted_metrics`` entry). Only the feature-L2 term of the
    held-out loss, a mean over a batch's rows, still counts the padding copies. ``shard`` is as
    in :class:`ShuffledBatches`.

    Examples:
        >>> x, y = np.zeros((5, 2, 2, 3), np.uint8), np.eye(2, dtype=np.float32)[np.arange(5) % 2]
        >>> held = HeldOutBatches(x, y, target=4, devices=2)
        >>> len(held), [len(held[i][0]) for i in range(len(held))], held[1][2].astype(float).round(3).tolist()
        (2, [4, 2], [1.2, 0.0])
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, target: int, devices: int = 1,
                 shard: tuple[int, int] = (0, 1)):
        super().__init__()
        self.x, self.y, self.devices, self.shard = x, y, devices, shard
        self.batch_size = even_batch_size(len(y), target, multiple=devices)
        self.padding = -(len(y) % self.batch_size) % devices
        self.weight = (len(y) + self.padding) / len(y) if len(y) else 1.0

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index: int):
        rows = np.arange(index * self.batch_size, min((index + 1) * self.batch_size, len(self.y)))
        weights = np.full(len(rows), self.weight, np.float32)
        padding = -len(rows) % self.devices
        if padding:
            rows = np.concatenate([rows, np.full(padding, rows[0])])
            weights = np.concatenate([weights, np.zeros(padding, np.float32)])
        part = _shard_slice(len(rows), *self.shard)
        rows, weights = rows[part], weights[part]
        return self.x[rows], self.y[rows], weights


def _shard_slice(batch_size: int, index: int, count: int) -> slice:
    """The rows of a batch that process ``index`` of ``count`` feeds: equal slices in order."""
    share = batch_size // count
    return slice(index * share, (index + 1) * share)


def even_batch_size(count: int, target: int, multiple: int = 1) -> int:
    """A batch size near ``target`` that divides ``count`` and is a multiple of ``multiple``
    (the device count), so evaluation has no partial last batch (on JAX each new batch shape
    is another compile); the multiple nearest ``target`` if none is near.

    Examples:
        >>> even_batch_size(10_000, 512), even_batch_size(10_007, 512), even_batch_size(10, 4, 2)
        (500, 512, 2)
    """
    target = max(multiple, target - target % multiple)
    near = [b for b in range(target // 2, 2 * target + 1)
            if b % multiple == 0 and b and count % b == 0]
    return min(near, key=lambda b: abs(b - target)) if near else target


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels as float32 one-hot rows (what the label-smoothed loss takes)."""
    return np.eye(num_classes, dtype=np.float32)[labels]
