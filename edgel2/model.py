"""The CIFAR-10 networks (Keras 3, any backend) and the feature-L2 penalty layer.

Each network is a plain function (:func:`resnet18`, :func:`resnet20`, any of
:data:`~edgel2.config.ARCHITECTURES` through :func:`build_network`).

``resnet18()`` follows the common PyTorch CIFAR ResNet-18 (kuangliu/pytorch-cifar): a 3x3
stem, no max-pool, four stages of two basic blocks with ``width``, 2x, 4x and 8x channels
(strides 1, 2, 2, 2; a 1x1 conv + BN projection where the shape changes), global average
pooling and a dense classifier. At ``width=64`` it has 11,173,962 trainable parameters.
``resnet20()`` is He et al.'s CIFAR ResNet-20 built the same way: 272,474 parameters.

The model takes raw uint8 NHWC pixels and normalizes inside the graph, so exported files need
no outside preprocessing.

Regularization, in both senses of "L2":

* ``weight_l2`` adds ``weight_l2 * sum(w**2)`` for every conv and dense kernel to the loss. Its
  gradient is ``2 * weight_l2 * w``, so ``weight_l2 = 2.5e-4`` equals the usual SGD weight
  decay of 5e-4 (PyTorch's ``weight_decay``). BN parameters and biases are not decayed.
* ``feature_l2`` adds ``feature_l2 * mean_batch ||u||**2`` where ``u`` is the pooled feature
  vector before the classifier (:class:`FeatureL2`); the layer is the identity at inference.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from edgel2.config import ARCHITECTURES, DEFAULT_FEATURE_L2, DEFAULT_WEIGHT_L2
from edgel2.errors import OptionError

# Per-channel statistics of the CIFAR-10 training images, on the 0..255 scale.
CIFAR10_MEAN = (125.307, 122.950, 113.865)
CIFAR10_STD = (62.993, 62.089, 66.705)



@keras.saving.register_keras_serializable(package="edgel2")
class FeatureL2(layers.Layer):
    """Identity layer that adds ``rate * mean_batch(||u||^2)`` to the loss while training.

    ``u`` is the layer's input flattened per example. At inference (``training`` false) it adds
    nothing and returns its input untouched, so it disappears from exported graphs.

    Examples:
        >>> import numpy as np
        >>> layer = FeatureL2(0.5)
        >>> _ = layer(np.ones((2, 4), "float32"), training=True)
        >>> float(layer.losses[0])   # 0.5 * mean(4, 4)
        2.0
    """

    def __init__(self, rate: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if rate < 0:
            raise OptionError(f"feature L2 rate must be >= 0, got {rate}")
        self.rate = float(rate)

    def call(self, inputs, training=None):
        if training and self.rate > 0:
            u = ops.cast(ops.reshape(inputs, (ops.shape(inputs)[0], -1)), "float32")
            self.add_loss(self.rate * ops.mean(ops.sum(ops.square(u), axis=-1)))
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package="edgel2")
class Normalize(layers.Layer):
    """``(float(pixels) - mean) / std`` per channel, so that models take raw uint8 pixels.

    The statistics are plain Python numbers turned into constants inside ``call``: Keras'
    own ``Normalization`` holds them as eager tensors, which tf2onnx exports as extra graph
    inputs instead of constants.

    Examples:
        >>> import numpy as np
        >>> keras.ops.convert_to_numpy(Normalize([100.0], [50.0])(np.array([[200]], "uint8"))).tolist()
        [[2.0]]
    """

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        inv_std = ops.convert_to_tensor([1.0 / s for s in self.std], dtype=self.compute_dtype)
        return (x - mean) * inv_std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def find_normalize(model: keras.Model) -> Normalize | None:
    """The model's :class:`Normalize` layer (its pixel statistics), or None.

    Examples:
        >>> find_normalize(resnet18(width=4)).mean == [float(m) for m in CIFAR10_MEAN]
        True
    """
    return next((layer for layer in model.layers if isinstance(layer, Normalize)), None)


def _regularizer(l2: float, l1: float):
    if l1 and l2:
        return keras.regularizers.L1L2(l1=l1, l2=l2)
    if l2:
        return keras.regularizers.L2(l2)
    if l1:
        return keras.regularizers.L1(l1)
    return None


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, reg, relu: bool = True,
             bn_reg=None):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", kernel_regularizer=reg,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, gamma_regularizer=bn_reg,
                                  beta_regularizer=bn_reg, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters: int, stride: int, name: str, reg, bn_reg):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_proj", reg, relu=False,
                            bn_reg=bn_reg)
    y = _conv_bn(x, filters, 3, stride, f"{name}_1", reg, bn_reg=bn_reg)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", reg, relu=False, bn_reg=bn_reg)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def resnet18(num_classes: int = 10, width: int = 64, **options: Any) -> keras.Model:
    """Build the CIFAR ResNet-18 as a functional Keras model: uint8 NHWC in, logits out.

    The input is normalized inside the graph (so exported files take raw pixels); the stem is a
    3x3 convolution without max-pooling, as CIFAR ResNets have. Four stages of two basic blocks
    with ``width``, 2x, 4x and 8x channels.

    Args:
        num_classes: Classes of the classifier.
        width: Channels of the first stage (64: the standard ResNet-18; 8 or 16 train fast on
            a CPU).
        **options: The regularization and input options of :func:`cifar_resnet`.

    Returns:
        The uncompiled Keras model.

    Examples:
        >>> model = resnet18(width=64)
        >>> count_params(model)   # doctest: +SKIP
        11173962
        >>> small = resnet18(width=8, feature_l2=1e-3)   # a fast model for CPU runs
    """
    return cifar_resnet("resnet18", num_classes, width, **options)


def resnet20(num_classes: int = 10, width: int = 16, **options: Any) -> keras.Model:
    """Build the CIFAR ResNet-20 (He et al., 2016): three stages of three basic blocks with
    ``width``, 2x and 4x channels, 1x1 projection shortcuts where the shape changes. At
    ``width=16``: 272,474 parameters and 41M multiply-adds per 32x32 image, a fourteenth of
    the ResNet-18's.

    Args:
        num_classes: Classes of the classifier.
        width: Channels of the first stage (16: the standard ResNet-20).
        **options: The regularization and input options of :func:`cifar_resnet`.

    Returns:
        The uncompiled Keras model.

    Examples:
        >>> model = resnet20()
        >>> count_params(model), count_multiply_adds(model)
        (272474, 40813184)
    """
    return cifar_resnet("resnet20", num_classes, width, **options)


def build_network(arch: str, num_classes: int = 10, width: int | None = None,
                  **options: Any) -> keras.Model:
    """The network ``arch`` names (:data:`~edgel2.config.ARCHITECTURES`) at ``width``.

    Args:
        arch: A key of :data:`~edgel2.config.ARCHITECTURES` (``resnet18``, ``resnet20``).
        num_classes: Classes of the classifier.
        width: Channels of the first stage; None: the architecture's standard width.
        **options: The regularization and input options of :func:`cifar_resnet`.

    Returns:
        The uncompiled Keras model.

    Examples:
        >>> build_network("resnet20", 10).name
        'resnet20_w16'
    """
    if arch not in ARCHITECTURES:
        raise OptionError(f"unknown arch {arch!r} (choose from {', '.join(ARCHITECTURES)})")
    return cifar_resnet(arch, num_classes, width or ARCHITECTURES[arch].width, **options)


def cifar_resnet(arch: str, num_classes: int = 10, width: int = 64, *,
                 weight_l2: float = DEFAULT_WEIGHT_L2, feature_l2: float = DEFAULT_FEATURE_L2,
                 l1: float = 0.0, dropout: float = 0.0, bn_l2: float = 0.0,
                 input_shape: tuple[int, int, int] = (32, 32, 3),
                 mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD,
                 name: str | None = None) -> keras.Model:
    """A CIFAR ResNet of basic blocks with the stages of ``ARCHITECTURES[arch]``: normalize,
    a 3x3 stem, the stages, global average pooling, the feature L2, a dense classifier.

    Every architecture names its layers the same way (``stem``, ``stage<s>_block<b>_<i>``,
    ``pool``, ``logits``), so export, fine-tuning and the unknown score treat them alike.

    Args:
        arch: A key of :data:`~edgel2.config.ARCHITECTURES`.
        num_classes: Classes of the classifier.
        width: Channels of the stem and first stage.
        weight_l2: L2 on the convolution and dense kernels.
        feature_l2: ``λ`` of ``λ·mean‖u‖²`` on the pooled features (:class:`FeatureL2`).
        l1: L1 on the same kernels as ``weight_l2``.
        dropout: Dropout before the classifier.
        bn_l2: L2 on the batch-norm scales and offsets and the classifier's bias (off by default;
            the published recipes that "decay all parameters" set it equal to ``weight_l2``).
        input_shape: (height, width, 3).
        mean: Per-channel mean of the normalization, in pixel units.
        std: Per-channel standard deviation of the normalization.
        name: The model's name; None for ``<arch>_w<width>``.

    Returns:
        The uncompiled Keras model.

    Examples:
        >>> cifar_resnet("resnet20", width=4).output.shape
        (None, 10)
    """
    if width < 1:
        raise OptionError(f"width must be >= 1, got {width}")
    for label, value in (("weight_l2", weight_l2), ("feature_l2", feature_l2), ("l1", l1),
                         ("bn_l2", bn_l2)):
        if value < 0:
            raise OptionError(f"{label} must be >= 0, got {value}")
    if not 0.0 <= dropout < 1.0:
        raise OptionError(f"dropout must be in [0, 1), got {dropout}")
    reg, bn_reg = _regularizer(weight_l2, l1), _regularizer(bn_l2, 0.0)

    images = keras.Input(shape=input_shape, dtype="uint8", name="images")
    x = Normalize(mean, std, name="normalize")(images)
    x = _conv_bn(x, width, 3, 1, "stem", reg, bn_reg=bn_reg)
    for stage, (mult, stride, blocks) in enumerate(ARCHITECTURES[arch].stages, start=1):
        for block in range(blocks):
            x = _basic_block(x, width * mult, stride if block == 0 else 1,
                             f"stage{stage}_block{block + 1}", reg, bn_reg)
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    features = FeatureL2(feature_l2, name="feature_l2")(features)
    if dropout:
        features = layers.Dropout(dropout, name="dropout")(features)
    # float32 logits even under mixed precision, for a stable softmax and loss.
    logits = layers.Dense(num_classes, kernel_regularizer=reg, bias_regularizer=bn_reg,
                          dtype="float32", name="logits")(features)
    return keras.Model(images, logits, name=name or f"{arch}_w{width}")


def conv_layer_names(arch: str) -> set[str]:
    """The names of the convolution layers of ``arch`` (at any width): what tells an
    exported graph's architecture (:func:`architecture_of`).

    Examples:
        >>> len(conv_layer_names("resnet18")), len(conv_layer_names("resnet20"))
        (20, 21)
    """
    names = {"stem_conv"}
    for stage, (mult, stride, blocks) in enumerate(ARCHITECTURES[arch].stages, start=1):
        for block in range(1, blocks + 1):
            names |= {f"stage{stage}_block{block}_1_conv", f"stage{stage}_block{block}_2_conv"}
        if stride != 1 or mult != 1:  # the first block changes the shape: a projection
            names.add(f"stage{stage}_block1_proj_conv")
    return names


def architecture_of(layer_names) -> str | None:
    """The architecture whose convolution layers are the ``*_conv`` names among
    ``layer_names``, or None.

    Examples:
        >>> architecture_of(layer.name for layer in resnet20(width=4).layers)
        'resnet20'
    """
    convs = {name for name in layer_names if name.endswith("_conv")}
    return next((arch for arch in ARCHITECTURES if conv_layer_names(arch) == convs), None)


def stem_width(model: keras.Model) -> int:
    """The channels of a network's stem and first stage: its ``width``.

    Examples:
        >>> stem_width(resnet20(width=8))
        8
    """
    return int(model.get_layer("stem_conv").kernel.shape[-1])


def count_multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one image through ``model``'s convolutions and dense layers (the
    usual "MACs"; normalization, batch norms folded at export, additions and pooling are
    not counted).

    Examples:
        >>> count_multiply_adds(resnet18(width=64))   # doctest: +SKIP
        555422720
    """
    total = 0
    for layer in network_of(model).layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            kernel = layer.kernel.shape  # (kh, kw, in / groups, out) or (kh, kw, in, mult)
            _, height, width, channels = layer.output.shape
            per_output = kernel[0] * kernel[1] * (
                1 if isinstance(layer, layers.DepthwiseConv2D) else kernel[2])
            total += height * width * channels * per_output
        elif isinstance(layer, layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def feature_extractor(model: keras.Model) -> keras.Model:
    """A model from the same inputs to the pooled features ``u`` (before dropout/classifier).

    Args:
        model: A network :func:`resnet18` built.

    Returns:
        A Keras model that maps images to their pooled features.

    Examples:
        >>> extractor = feature_extractor(resnet18(width=8))
        >>> extractor.output.shape
        (None, 64)
    """
    return keras.Model(model.input, model.get_layer("pool").output)


def network_of(model: keras.Model) -> keras.Model:
    """The network inside a training model: the model itself when it has no augmentation
    wrapper, else the nested model the augmentation feeds (``with_augmentation``).

    Examples:
        >>> from edgel2.augment import with_augmentation
        >>> net = resnet18(width=4)
        >>> network_of(with_augmentation(net)) is net, network_of(net) is net
        (True, True)
    """
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[-1] if nested else model


def count_params(model: keras.Model) -> int:
    """Number of trainable parameters."""
    return int(sum(int(ops.size(w)) for w in model.trainable_weights))


@keras.saving.register_keras_serializable(package="edgel2")
class WithMirror(layers.Layer):
    """``[images; images flipped left-right]``: the batch, then its mirror images, as one
    batch twice as long (so the network runs once, on both views).

    Examples:
        >>> import numpy as np
        >>> x = np.arange(2 * 1 * 2 * 1).reshape(2, 1, 2, 1)
        >>> keras.ops.convert_to_numpy(WithMirror()(x))[:, 0, :, 0].tolist()
        [[0, 1], [2, 3], [1, 0], [3, 2]]
    """

    def call(self, images):
        return ops.concatenate([images, ops.flip(images, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="edgel2")
class MeanOfHalves(layers.Layer):
    """The mean of a batch's first and second halves: row ``i`` is the mean of rows ``i`` and
    ``i + n`` of ``2n`` rows (the view and its mirror, from :class:`WithMirror`).

    Examples:
        >>> import numpy as np
        >>> keras.ops.convert_to_numpy(MeanOfHalves()(np.array([[0., 2.], [4., 6.]]))).tolist()
        [[2.0, 4.0]]
    """

    def call(self, logits):
        pairs = ops.reshape(logits, (2, -1, logits.shape[-1]))
        return ops.mean(pairs, axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


def flip_averaged(model: keras.Model) -> keras.Model:
    """``model`` with test-time flip averaging inside the graph.

    The logits of each image and of its left-right mirror image, averaged: twice the compute of
    ``model``, the same input and output. ``edgel2 export --flip-average`` exports this.

    Args:
        model: A network that maps uint8 images to logits.

    Returns:
        The flip-averaged model.

    Examples:
        >>> import numpy as np
        >>> both = flip_averaged(resnet18(width=4))
        >>> both.output.shape, both.input.dtype
        ((None, 10), 'uint8')
    """
    images = keras.Input(shape=model.input.shape[1:], dtype=model.input.dtype, name="images")
    logits = MeanOfHalves(name="flip_average", dtype="float32")(model(WithMirror(name="with_mirror")(images)))
    return keras.Model(images, logits, name=model.name)
