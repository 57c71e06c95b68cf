"""The unknown score inside the graph: a Keras layer that computes, from the pooled features
of every stage of the network, the Mahalanobis distance to the nearest class, fitted on
known images; and the two-output model (``logits``, ``unknown_score``) that export writes.

Why this score: of those measured on the shipped ResNet-18 (max softmax, energy, the feature
norm both ways, Mahalanobis on the last stage, per stage and on all stages, k-NN, ViM; see
the "Unknown images" measurements page) one Mahalanobis distance over the pooled features of
all four stages, concatenated, had the best mean and the best worst-case AUROC over the
out-of-distribution probe, and it is one matrix product and a few element-wise ops in the
graph (about 0.2 % of the network's multiply-adds).
"""
from __future__ import annotations

import re
from collections.abc import Callable

import keras
import numpy as np
from keras import layers, ops

from edgel2.errors import ModelError
from edgel2.runtime.modelfile import UNKNOWN_OUTPUT
from edgel2.unknown.scores import on_int8_grid, precision_factor

OUTPUT = UNKNOWN_OUTPUT     # the graph output's name
LAYER = "unknown_score"    # the Keras layer's name (its ops' names start with it)
_STAGE_OUT = re.compile(r"^stage(?P<stage>\d+)_block(?P<block>\d+)_out$")


@keras.saving.register_keras_serializable(package="edgel2")
class UnknownScore(layers.Layer):
    """The squared Mahalanobis distance of the concatenated pooled features to the nearest
    class mean, divided by their dimension (about 1 for known images), as ``[batch, 1]``.

    ``projection`` whitens the features (its product with its transpose is the inverse of the
    covariance shared by the classes); ``centres`` are the class means already projected.

    Examples:
        >>> import numpy as np
        >>> layer = UnknownScore(2, 1)
        >>> layer.build([(None, 2)])
        >>> layer.set_weights([np.eye(2, dtype="float32"), np.zeros((1, 2), "float32")])
        >>> keras.ops.convert_to_numpy(layer([np.array([[3.0, 4.0]], "float32")])).tolist()
        [[12.5]]
    """

    def __init__(self, dims: int, classes: int, **kwargs):
        super().__init__(**kwargs)
        self.dims, self.classes = int(dims), int(classes)

    def build(self, input_shape):
        self.projection = self.add_weight(shape=(self.dims, self.dims), initializer="identity",
                                          trainable=False, name="projection")
        self.centres = self.add_weight(shape=(self.classes, self.dims), initializer="zeros",
                                       trainable=False, name="centres")

    def call(self, inputs):
        features = ops.concatenate(inputs, axis=-1) if len(inputs) > 1 else inputs[0]
        z = ops.matmul(ops.cast(features, "float32"), self.projection)
        squared = ops.mean(ops.square(ops.expand_dims(z, 1) - self.centres), axis=-1)
        return ops.min(squared, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims, "classes": self.classes}


def stage_features(network: keras.Model) -> list:
    """The pooled output of each stage's last block (the network's own pooling for the last
    stage), as Keras tensors of ``network``'s graph.

    Raises:
        ModelError: ``network`` has no stages edgel2 knows (it is not an edgel2 network).
    """
    last: dict[int, tuple[int, layers.Layer]] = {}
    for layer in network.layers:
        match = _STAGE_OUT.match(layer.name)
        if match:
            stage, block = int(match["stage"]), int(match["block"])
            if stage not in last or block > last[stage][0]:
                last[stage] = (block, layer)
    if not last:
        raise ModelError(f"{network.name} has no stage outputs (stage<N>_block<M>_out): "
                         "not an edgel2 network, so it gets no unknown score")
    final = max(last)
    pooled = [layers.GlobalAveragePooling2D(name=f"{LAYER}_pool{stage}")(last[stage][1].output)
              for stage in sorted(last) if stage != final]
    return pooled + [network.get_layer("pool").output if "pool" in
                     {layer.name for layer in network.layers} else
                     layers.GlobalAveragePooling2D(name=f"{LAYER}_pool{final}")(last[final][1].output)]


def feature_model(network: keras.Model) -> keras.Model:
    """``network`` with the concatenated pooled stage features as a second output."""
    pooled = stage_features(network)
    features = layers.Concatenate(name=f"{LAYER}_features")(pooled) if len(pooled) > 1 \
        else pooled[0]
    return keras.Model(network.input, [network.output, features])


def fit_head(network: keras.Model, images: np.ndarray, labels: np.ndarray,
             on_batch: Callable[[int, int], None] | None = None,
             batch_size: int = 250) -> dict[str, np.ndarray]:
    """Fit the score's parameters on known images.

    Args:
        network: The classifier (one logits output).
        images: uint8 NHWC training images of the known classes.
        labels: Their classes.
        on_batch: Called with (done, total) after every batch.
        batch_size: Images a forward pass.

    Returns:
        ``projection`` and ``centres`` (float32), the weights of :class:`UnknownScore`.

    Examples:
        >>> from edgel2.model import resnet18
        >>> x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), np.uint8)
        >>> head = fit_head(resnet18(width=4), x, np.arange(40) % 2)
        >>> head["projection"].shape, head["centres"].shape
        ((60, 60), (2, 60))
    """
    from edgel2.utils import run_batches

    extract = feature_model(network)
    features = run_batches(lambda b: extract.predict_on_batch(b)[1], images, batch_size, on_batch)
    means, factor = precision_factor(features, np.asarray(labels))
    factor = on_int8_grid(factor)
    return {"projection": factor.astype(np.float32),
            "centres": (means @ factor).astype(np.float32)}


def with_unknown_score(network: keras.Model, head: dict[str, np.ndarray]) -> keras.Model:
    """The two-output model export writes: ``{"logits": ..., "unknown_score": [batch, 1]}``.

    Args:
        network: The classifier.
        head: What :func:`fit_head` returned.

    Returns:
        A functional model sharing ``network``'s layers and weights.
    """
    pooled = stage_features(network)
    classes, dims = head["centres"].shape
    score_layer = UnknownScore(dims, classes, name=LAYER, dtype="float32")
    score = score_layer(pooled)
    score_layer.set_weights([head["projection"], head["centres"]])
    return keras.Model(network.input, {"logits": network.output, OUTPUT: score},
                       name=network.name)
