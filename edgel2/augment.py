"""Training-only augmentation: random crop with padding, horizontal flip and (optionally) a
random zoom crop, colour jitter and cutout, per image.

Written as two vectorised gathers over the padded batch so that it compiles into the train
step on every backend. Keras' own ``RandomCrop``/``RandomFlip`` layers run about 70x slower
than the network itself on JAX (measured on one NVIDIA H200), so they are not used.
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops


def random_crop_flip(images, seed, padding: int = 4, flip: bool = True,
                     pad_mode: str = "reflect"):
    """Crop each NHWC image at a random offset from its ``padding``-padded copy and flip it
    left-right with probability 1/2. Shape and dtype are kept.

    ``seed`` is a ``keras.random.SeedGenerator`` (or an int, for one-off use).

    Examples:
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


def random_zoom(images, seed, min_area: float):
    """Crop each NHWC image to a random square-scaled window keeping between ``min_area`` and
    all of its area (the aspect ratio kept), at a random place, and scale it back to the full
    size by nearest-neighbour sampling (two gathers, as :func:`random_crop_flip`): objects
    seen closer, as in a photo folder. Shape and dtype are kept.

    Examples:
        >>> import numpy as np
        >>> x = np.arange(2 * 8 * 8 * 3, dtype="uint8").reshape(2, 8, 8, 3)
        >>> tuple(random_zoom(x, seed=0, min_area=0.5).shape)
        (2, 8, 8, 3)
    """
    batch, height, width, channels = (ops.shape(images)[0], images.shape[1], images.shape[2],
                                      images.shape[3])
    side = ops.sqrt(keras.random.uniform((batch, 1), min_area, 1.0, seed=seed))  # (B, 1)
    top = keras.random.uniform((batch, 1), seed=seed) * (1.0 - side) * height
    left = keras.random.uniform((batch, 1), seed=seed) * (1.0 - side) * width
    steps_y = ops.arange(height, dtype="float32")[None, :]
    steps_x = ops.arange(width, dtype="float32")[None, :]
    rows = ops.cast(ops.floor(top + steps_y * side), "int32")                 # (B, H)
    cols = ops.cast(ops.floor(left + steps_x * side), "int32")                # (B, W)
    rows = ops.broadcast_to(ops.minimum(rows, height - 1)[:, :, None, None],
                            (batch, height, width, channels))
    picked = ops.take_along_axis(images, rows, axis=1)
    cols = ops.broadcast_to(ops.minimum(cols, width - 1)[:, None, :, None],
                            (batch, height, width, channels))
    return ops.take_along_axis(picked, cols, axis=2)


def color_jitter(images, seed, strength: float):
    """Scale each NHWC RGB image's brightness, contrast and saturation by random factors in
    ``[1 - strength, 1 + strength]`` (in that order, as torchvision's ``ColorJitter`` with
    one strength), then clip to the pixel range; dtype kept (uint8 in, uint8 out).

    Examples:
        >>> import numpy as np
        >>> out = color_jitter(np.full((2, 4, 4, 3), 100, "uint8"), seed=0, strength=0.5)
        >>> np.asarray(out).dtype, tuple(out.shape)
        (dtype('uint8'), (2, 4, 4, 3))
    """
    dtype = images.dtype
    batch = ops.shape(images)[0]
    x = ops.cast(images, "float32")

    def factor():
        return keras.random.uniform((batch, 1, 1, 1), 1.0 - strength, 1.0 + strength, seed=seed)

    x = x * factor()                                                           # brightness
    grey = ops.sum(x * ops.convert_to_tensor([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    mean = ops.mean(grey, axis=(1, 2, 3), keepdims=True)
    x = mean + (x - mean) * factor()                                           # contrast
    grey = ops.sum(x * ops.convert_to_tensor([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    x = grey + (x - grey) * factor()                                           # saturation
    return ops.cast(ops.round(ops.clip(x, 0.0, 255.0)), dtype)


def cutout(images, seed, size: int, fill=0):
    """Fill one ``size`` x ``size`` square per NHWC image with ``fill`` (a scalar or one value
    per channel). The square's centre is uniform over the image, so it may be clipped at the
    border (DeVries & Taylor, 2017).

    Examples:
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
                 seed: int | None = None, cutout: int = 0, cutout_fill=0,
                 crop_scale: float = 1.0, color_jitter: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.padding, self.flip, self.pad_mode, self.seed = padding, flip, pad_mode, seed
        self.cutout, self.cutout_fill = cutout, cutout_fill
        self.crop_scale, self.color_jitter = crop_scale, color_jitter
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        if self.crop_scale < 1.0:
            images = random_zoom(images, self.seed_generator, self.crop_scale)
        if self.color_jitter:
            images = color_jitter(images, self.seed_generator, self.color_jitter)
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
                "cutout_fill": self.cutout_fill, "crop_scale": self.crop_scale,
                "color_jitter": self.color_jitter}


def with_augmentation(model: keras.Model, seed: int | None = None, **options: Any) -> keras.Model:
    """Wrap ``model`` so that training batches are cropped and flipped first (after a random
    zoom keeping at least ``crop_scale`` of the area and ``color_jitter``, when set; and get
    a ``cutout`` square filled with the mean pixel of the model's normalization, i.e. zero
    after it, as in the cutout paper).

    Args:
        model: The network, uint8 images in.
        seed: Seeds the augmentation's random generator (its state is in checkpoints).
        **options: ``padding`` (4), ``flip`` (True), ``cutout`` (0), ``crop_scale`` (1.0),
            ``color_jitter`` (0.0).

    Returns:
        The training model: the augmentation, then ``model``.

    Examples:
        >>> from edgel2.model import resnet18
        >>> trainer = with_augmentation(resnet18(width=4), seed=0)   # fit this, save ``model``
    """
    images = keras.Input(shape=model.input.shape[1:], dtype=model.input.dtype, name="images")
    augmented = _augmentation_for(model, seed, **options)(images)
    return keras.Model(images, model(augmented), name=f"{model.name}_train")


class BatchAugmenter:
    """The augmentation :func:`with_augmentation` puts in the graph, run on numpy batches
    before the step instead (when a teacher must see the augmented batch,
    :mod:`edgel2.train.distill`). Each batch's randomness is a function of the key it is
    given, so a resumed run augments exactly as an uninterrupted one.

    Examples:
        >>> from edgel2.model import resnet18
        >>> augment = BatchAugmenter(resnet18(width=4))
        >>> x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        >>> bool((augment(x, (0, 1, 2)) == augment(x, (0, 1, 2))).all())
        True
    """

    def __init__(self, model: keras.Model, **options: Any):
        self.layer = _augmentation_for(model, 0, **options)

    def __call__(self, images: np.ndarray, key: tuple[int, ...]) -> np.ndarray:
        seed = int(np.random.default_rng(key).integers(2**31 - 1))
        state = self.layer.seed_generator.state
        state.assign(ops.convert_to_tensor([seed, 0], dtype=state.dtype))
        return ops.convert_to_numpy(self.layer(images, training=True))


def _augmentation_for(model: keras.Model, seed: int | None, padding: int = 4,
                      flip: bool = True, cutout: int = 0, crop_scale: float = 1.0,
                      color_jitter: float = 0.0) -> RandomCropFlip:
    """The augmentation layer for ``model``: cutout fills with its normalization's mean."""
    from edgel2.model import find_normalize

    norm = find_normalize(model)
    fill = [int(round(m)) for m in norm.mean] if norm is not None else 0
    return RandomCropFlip(padding, flip, seed=seed, cutout=cutout, cutout_fill=fill,
                          crop_scale=crop_scale, color_jitter=color_jitter, name="crop_flip")
