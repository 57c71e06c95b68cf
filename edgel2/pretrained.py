"""Pretrained weights for fine-tuning, with no download and nothing more in ``models/``.

The shipped ``resnet18-int8.onnx`` *is* the pretrained ResNet-18, in a compact encoding: int8
per-channel weights (10.8 MB against 45 MB of float32), every batch norm folded into its
convolution and the input normalization into the stem (see :mod:`edgel2.export.qdq`).
:func:`network_from_onnx` undoes the folds and rebuilds the Keras network edgel2 trains; any
edgel2 ``.keras`` file serves the same way (:func:`load_backbone`). :func:`start_from` copies a
backbone into a network built for new classes and image sizes (the classifier too when the
classes are the weights' own), and
:func:`recalibrate_batchnorm` gives folded batch norms statistics that training mode can use.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgel2.config import ARCHITECTURES, DEFAULT_ARCH
from edgel2.errors import ModelError
from edgel2.runtime.modelfile import UNKNOWN_OPS

PRETRAINED = "pretrained"          # --pretrained: the shipped int8 ONNX
HEAD = "logits"                    # the layer that fine-tuning replaces
BN_EPSILON = 1e-5                  # edgel2's BatchNormalization epsilon (model._conv_bn)
# "resnet18_w64_1/stage1_block1_1_conv_1/convolution/...": the Keras layer a tf2onnx
# initializer came from
_LAYER = re.compile(r"^[^/]+/(?P<layer>[A-Za-z0-9_]+?)_1/")


def network_from_onnx(path: str | os.PathLike):
    """The Keras ResNet-18 whose weights are those of an int8 (or fp32) ONNX file that
    edgel2 exported: convolutions with their batch norm folded in (the batch norms start as
    identities: mean 0, variance 1, scale 1, the folded bias as offset), the stem with the
    input normalization taken back out, and the classifier.

    Examples:
        >>> from edgel2.runtime.shipped import shipped_model
        >>> network_from_onnx(shipped_model()).name       # doctest: +SKIP
        'resnet18_w64'
    """
    import onnx
    from onnx import numpy_helper

    from edgel2.model import architecture_of, build_network
    from edgel2.runtime.modelfile import read_metadata
    from edgel2.stem import PREFIX, unfold_stem

    path = Path(path)
    metadata = read_metadata(path)
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # protobuf raises its own types for bad bytes
        raise ModelError(f"cannot read {path}: {e}") from None
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dequantized = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}

    def value(name: str) -> np.ndarray:
        """A constant input, dequantized when it comes out of a DequantizeLinear."""
        if name in consts:
            return consts[name].astype(np.float64)
        node = dequantized.get(name)
        if node is None or any(i not in consts for i in node.input):
            raise ModelError(f"{path} is not an edgel2 network export: {name} is not a constant")
        q, scale, *zero = (consts[i].astype(np.float64) for i in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[axis] = -1
        return (q - (zero[0].reshape(shape) if zero else 0.0)) * scale.reshape(shape)

    convs, dense = {}, None
    for node in graph.node:
        if node.op_type == "Conv":
            match = _LAYER.match(node.input[1])
            if not match or len(node.input) < 3:
                raise ModelError(f"{path} is not an edgel2 network export: convolution "
                                 f"{node.name} has no layer name or no folded bias")
            weights, bias = value(node.input[1]), value(node.input[2])
            weight_node = dequantized.get(node.input[1])
            if weight_node is not None and weight_node.input[0].startswith(PREFIX):  # the stem
                norm = metadata["normalization"]
                weights, bias = unfold_stem(weights, bias, np.asarray(norm["mean"]),
                                            np.asarray(norm["std"]))
            convs[match["layer"]] = (weights, bias)
        elif node.op_type in ("Gemm", "MatMul") and not UNKNOWN_OPS.search(node.name):
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            kernel = value(node.input[1])
            dense_bias: np.ndarray | None
            if len(node.input) > 2:  # Gemm's own bias
                dense_bias = value(node.input[2])
            else:  # MatMul, then an Add of the bias (tf2onnx's fp32 Dense)
                add = next((n for n in graph.node if n.op_type == "Add"
                            and node.output[0] in n.input), None)
                dense_bias = (value(next(i for i in add.input if i != node.output[0]))
                              if add is not None else None)
            dense = (kernel.T if transposed else kernel, dense_bias)
    if "stem_conv" not in convs or dense is None:
        raise ModelError(f"{path} is not an edgel2 network export: no stem convolution or "
                         "no classifier")

    arch = architecture_of(convs)
    if arch is None:
        raise ModelError(f"{path} is not an edgel2 network export: its {len(convs)} "
                         "convolutions are those of none of edgel2's architectures")
    norm = metadata["normalization"]
    model = build_network(arch, dense[0].shape[1], width=convs["stem_conv"][0].shape[0],
                          input_shape=tuple(metadata["input"]["shape"][1:]),
                          mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    for name, (weights, bias) in convs.items():
        model.get_layer(name).set_weights([weights.transpose(2, 3, 1, 0).astype(np.float32)])
        channels = len(bias)
        model.get_layer(name[:-len("_conv")] + "_bn").set_weights([
            np.ones(channels, np.float32), bias.astype(np.float32),
            np.zeros(channels, np.float32), np.full(channels, 1.0 - BN_EPSILON, np.float32)])
    kernel, head_bias = dense
    model.get_layer(HEAD).set_weights([kernel.astype(np.float32),
                                       (head_bias if head_bias is not None
                                        else np.zeros(kernel.shape[1])).astype(np.float32)])
    return model


def load_backbone(source: str | os.PathLike, arch: str = DEFAULT_ARCH):
    """The network to start from: ``"pretrained"`` (the shipped int8 ONNX of ``arch``), an edgel2
    ``.keras`` file (a model, or a training checkpoint such as ``last.keras``) or an int8/fp32
    ``.onnx`` that edgel2 exported. Returns ``(network, folded)``; ``folded`` says its batch
    norms were folded away (see :func:`recalibrate_batchnorm`)."""
    from edgel2.checkpoint import load_model
    from edgel2.model import architecture_of, network_of

    if str(source) == PRETRAINED:
        return network_from_onnx(pretrained_file(arch)), True
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"weights file does not exist: {path}")
    if path.suffix.lower() == ".onnx":
        return network_from_onnx(path), True
    if path.suffix.lower() != ".keras":
        raise ModelError(f"`weights` takes an edgel2 .keras or .onnx file, got {path}")
    network = network_of(load_model(path))
    if HEAD not in {layer.name for layer in network.layers} or \
            architecture_of(layer.name for layer in network.layers) is None:
        raise ModelError(f"{path} is not an edgel2 network (its layers are those of none of "
                         f"{', '.join(ARCHITECTURES)})")
    return network, False


def pretrained_file(arch: str = DEFAULT_ARCH) -> Path:
    """The shipped int8 ONNX that ``--pretrained`` starts an ``arch`` network from.

    Examples:
        >>> pretrained_file("resnet18").name
        'resnet18-int8.onnx'
    """
    from edgel2.runtime.shipped import shipped_model

    path = shipped_model(ARCHITECTURES[arch].pretrained)
    if not path.is_file():
        raise ModelError(f"no pretrained {arch} is shipped ({path.name} is not in "
                         f"{path.parent}): train one, or start from `weights` FILE")
    return path


def _weights_record(source: str | os.PathLike, arch: str, in_run: Callable[[dict], Any],
                    in_file: Callable[[dict], Any]) -> Any:
    """What the weights at ``source`` (``"pretrained"``, an exported file, a ``.keras`` file)
    say about themselves without loading the network: ``in_run`` of the ``model`` record in a
    ``.keras`` file's run ``config.json``, or ``in_file`` of an exported file's metadata; None
    when it is not there."""
    from edgel2.runtime.modelfile import read_metadata
    from edgel2.utils import run_config

    try:
        path = pretrained_file(arch) if str(source) == PRETRAINED else Path(source)
        if path.suffix.lower() == ".keras":
            return in_run(run_config(path)["model"])
        return in_file(read_metadata(path))
    except (OSError, ValueError, KeyError, TypeError, IndexError, ModelError):
        return None


def natural_image_size(source: str | os.PathLike, arch: str = DEFAULT_ARCH) -> int | None:
    """The side of the images the weights at ``source`` were trained on (the shipped
    ResNet-18: 32), read from the file's metadata or its run's ``config.json`` without
    loading the network; None when neither says.

    Examples:
        >>> natural_image_size(PRETRAINED)
        32
    """
    height = _weights_record(source, arch, lambda model: model["input_shape"][0],
                             lambda metadata: metadata["input"]["shape"][1])
    return height if isinstance(height, int) and height > 0 else None


def weights_class_names(source: str | os.PathLike, arch: str = DEFAULT_ARCH) -> list[str] | None:
    """The class names, in order, of the weights at ``source`` (``"pretrained"``, an exported
    file's metadata, or a ``.keras`` file's run), without loading the network; None when
    nothing says.

    Examples:
        >>> weights_class_names(PRETRAINED)[:3]
        ['airplane', 'automobile', 'bird']
    """
    names = _weights_record(source, arch, lambda model: model["class_names"],
                            lambda metadata: metadata["class_names"])
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def keeps_classifier(source: str | os.PathLike, class_names: Sequence[str] | None,
                     arch: str = DEFAULT_ARCH) -> bool:
    """Whether fine-tuning from ``source`` keeps its classifier (:func:`start_from`): the
    data's ``class_names`` are the weights' own, in the same order.

    Examples:
        >>> keeps_classifier(PRETRAINED, ["cat", "dog"])
        False
    """
    return class_names is not None and list(class_names) == weights_class_names(source, arch)


def start_from(network, source: str | os.PathLike, images: np.ndarray | None = None,
               class_names: Sequence[str] | None = None) -> bool:
    """Load every weight of ``network`` from ``source`` (see :func:`load_backbone`) but the
    classifier's, which keeps its fresh initialization for the new classes, unless
    ``class_names`` are the weights' own, in the same order: then the classifier is loaded
    too, so that training goes on from the model as it was. The image size may differ (the
    convolutions do not depend on it). Folded batch norms are recalibrated on ``images`` (the
    training images).

    Returns:
        Whether the classifier was loaded too.
    """
    from edgel2.model import architecture_of, stem_width

    arch = architecture_of(layer.name for layer in network.layers) or DEFAULT_ARCH
    backbone, folded = load_backbone(source, arch)
    found = architecture_of(layer.name for layer in backbone.layers)
    width, wanted = stem_width(backbone), stem_width(network)
    shipped = " (the shipped weights)" if str(source) == PRETRAINED else ""
    if found != arch:
        raise ModelError(f"{source}{shipped} is a {found} and this run is a {arch}: "
                         f"pass `arch` {found}")
    if width != wanted:
        raise ModelError(f"{source}{shipped} is a width-{width} {found} and this run is "
                         f"width {wanted}: pass `width` {width}")
    same_classes = keeps_classifier(source, class_names, arch)
    for layer in network.layers:
        if layer.weights and (layer.name != HEAD or same_classes):
            layer.set_weights(backbone.get_layer(layer.name).get_weights())
    if folded and images is not None:
        recalibrate_batchnorm(network, images)
    return same_classes


def recalibrate_batchnorm(network, images: np.ndarray, batch_size: int = 128) -> None:
    """Give every batch norm the mean and variance its input has on ``images``, and the
    scale and offset that keep what the network computes in inference exactly as it was.

    A folded network's batch norms are identities with statistics 0 and 1; in training mode
    they would normalize with the batch's statistics and change the function at once. After
    this, a training batch like ``images`` passes through them (almost) unchanged: with the
    inference map ``y = a x + c``, the statistics ``mu, var`` and ``s = sqrt(var + eps)``,
    the new scale is ``a s`` and the offset ``c + a mu``.
    """
    import keras

    norms = [layer for layer in network.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(network.input, [layer.input for layer in norms])
    total = [np.zeros(layer.input.shape[-1]) for layer in norms]
    squares = [np.zeros(layer.input.shape[-1]) for layer in norms]
    counts = [0] * len(norms)  # values per channel: each stage has its own spatial size
    for start in range(0, len(images), batch_size):
        outputs = probe.predict_on_batch(images[start:start + batch_size])
        for i, x in enumerate(outputs):
            x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
            total[i] += x.sum(0)
            squares[i] += (x * x).sum(0)
            counts[i] += len(x)
    for layer, s1, s2, count in zip(norms, total, squares, counts):
        mean = s1 / count
        var = np.maximum(s2 / count - mean * mean, 0.0)
        gamma, beta, mean0, var0 = (np.asarray(w, np.float64) for w in layer.get_weights())
        a = gamma / np.sqrt(var0 + layer.epsilon)
        c = beta - a * mean0
        layer.set_weights([(a * np.sqrt(var + layer.epsilon)).astype(np.float32),
                           (c + a * mean).astype(np.float32), mean.astype(np.float32),
                           var.astype(np.float32)])


def freeze_stages(network, stages: int) -> None:
    """Freeze the stem and the first ``stages`` stages (all of them: the whole backbone, only
    the classifier trains). Frozen batch norms run in inference mode (Keras 3), so they keep
    their statistics too. (``TrainConfig.validate`` checks the range.)"""
    if stages == 0:
        return
    frozen = ("stem_",) + tuple(f"stage{s}_" for s in range(1, stages + 1))
    for layer in network.layers:
        if layer.name.startswith(frozen):
            layer.trainable = False
