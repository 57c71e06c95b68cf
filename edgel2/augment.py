"""Training-only augmentation: random crop with padding, horizontal flip and (optionally)
cutout, per image.

Written as two vectorised gathers over the padded batch so that it compiles into the train
step on every backend. Keras' own ``RandomCrop``/``RandomFlip`` layers run about 70x slower
than the network itself on JAX (measured on an H200, see shared/DEVICE.md), so they are not used.
"""
from __future__ import annotations

import keras
from keras import layers, ops


def random_crop_flip(images, seed, padding: int = 4, flip: bool = True,
                     pad_mode: str = "reflect"):
    """Crop each NHWC image at a random offset from its ``padding``-padded copy and flip it
    left-right with probability 1/2. Shape and dtype are kept.

    ``seed`` is a ``keras.random.SeedGenerator`` (or an int, for one-off use).

    Example:
        >>> import numpy as np
        >>> x = np.arange(2 * 8 * 8 * 3, dtype="uint8").reshape(2, 8, 8, 3)
        >>> tuple(random_crop_flip(x, seed=0, padding=2).shape)
        (2, 8, 8, 3)
    """
    batch = ops.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    channels = images.shape[3]
    padded = ops.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]],
                     mode=pad_mode)
    dy = keras.random.randint((batch,), 0, 2 * padding + 1, seed=seed)
    dx = keras.random.randint((batch,), 0, 2 * padding + 1, seed=seed)
    cols = ops.arange(width, dtype="int32")[None, :]
    if flip:
        mirrored = keras.random.randint((batch, 1), 0, 2, seed=seed)
        cols = ops.where(mirrored == 1, width - 1 - cols, cols)
    rows = dy[:, None] + ops.arange(height, dtype="int32")[None, :]          # (B, H)
    cols = dx[:, None] + cols                                                 # (B, W)
    padded_width = width + 2 * padding
    rows = ops.broadcast_to(rows[:, :, None, None], (batch, height, padded_width, channels))
    cropped = ops.take_along_axis(padded, rows, axis=1)                      # (B, H, W+2p, C)
    cols = ops.broadcast_to(cols[:, None, :, None], (batch, height, width, channels))
    return ops.take_along_axis(cropped, cols, axis=2)                         # (B, H, W, C)


def cutout(images, seed, size: int, fill=0):
    """Fill one ``size`` x ``size`` square per NHWC image with ``fill`` (a scalar or one value
    per channel). The square's centre is uniform over the image, so it may be clipped at the
    border (DeVries & Taylor, 2017).

    Example:
        >>> import numpy as np
        >>> out = cutout(np.full((1, 8, 8, 1), 9, "uint8"), seed=0, size=2)
        >>> 1 <= int((np.asarray(out) == 0).sum()) <= 4
        True
    """
    batch, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]
    top = keras.random.randint((batch, 1, 1), 0, height, seed=seed) - size // 2
    left = keras.random.randint((batch, 1, 1), 0, width, seed=seed) - size // 2
    rows = ops.arange(height, dtype="int32")[None, :, None]
    cols = ops.arange(width, dtype="int32")[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    fill = ops.cast(ops.convert_to_tensor(fill), images.dtype)
    return ops.where(inside[..., None], fill, images)


@keras.saving.register_keras_serializable(package="edgel2")
class RandomCropFlip(layers.Layer):
    """:func:`random_crop_flip`, then :func:`cutout` if ``cutout`` > 0, as a layer that is
    active only when ``training`` is true.

    It lives in the training wrapper (:func:`with_augmentation`), never in the saved model.
    """

    def __init__(self, padding: int = 4, flip: bool = True, pad_mode: str = "reflect",
                 seed: int | None = None, cutout: int = 0, cutout_fill=0, **kwargs):
        super().__init__(**kwargs)
        self.padding, self.flip, self.pad_mode, self.seed = padding, flip, pad_mode, seed
        self.cutout, self.cutout_fill = cutout, cutout_fill
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        images = random_crop_flip(images, self.seed_generator, self.padding, self.flip,
                                  self.pad_mode)
        if self.cutout:
            images = cutout(images, self.seed_generator, self.cutout, self.cutout_fill)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "flip": self.flip,
                "pad_mode": self.pad_mode, "seed": self.seed, "cutout": self.cutout,
                "cutout_fill": self.cutout_fill}


def with_augmentation(model: keras.Model, seed: int | None = None, padding: int = 4,
                      flip: bool = True, cutout: int = 0) -> keras.Model:
    """Wrap ``model`` so that training batches are cropped and flipped first (and get a
    ``cutout`` square filled with the mean pixel of the model's normalization, i.e. zero
    after it, as in the cutout paper).

    Example:
        >>> from edgel2.model import resnet18
        >>> trainer = with_augmentation(resnet18(width=4), seed=0)   # fit this, save ``model``
    """
    from edgel2.model import find_normalize

    norm = find_normalize(model)
    fill = [int(round(m)) for m in norm.mean] if norm is not None else 0
    images = keras.Input(shape=model.input.shape[1:], dtype=model.input.dtype, name="images")
    augmented = RandomCropFlip(padding, flip, seed=seed, cutout=cutout, cutout_fill=fill,
                               name="crop_flip")(images)
    return keras.Model(images, model(augmented), name=f"{model.name}_train")
