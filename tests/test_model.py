"""edgel2.model: the CIFAR ResNet-18 and its two kinds of L2 regularization."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from edgel2.model import FeatureL2, count_params, feature_extractor, resnet18

BATCH = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
LABELS = np.eye(10, dtype="float32")[np.arange(8) % 10]


def test_full_width_has_the_pytorch_cifar_resnet18_parameter_count():
    assert count_params(resnet18(width=64)) == 11_173_962


def test_model_takes_uint8_pixels_and_returns_float32_logits():
    model = resnet18(width=4)
    assert model.input.dtype == "uint8"
    logits = keras.ops.convert_to_numpy(model(BATCH))
    assert logits.shape == (8, 10) and logits.dtype == np.float32


def test_width_scales_every_stage():
    convs = [layer for layer in resnet18(width=4).layers if isinstance(layer, keras.layers.Conv2D)]
    assert sorted({c.filters for c in convs}) == [4, 8, 16, 32]
    assert feature_extractor(resnet18(width=4)).output.shape == (None, 32)


def _train_loss(model) -> float:
    """The loss a train step computes, with lr 0 so that nothing moves."""
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    return float(model.train_on_batch(BATCH, LABELS))


def test_feature_penalty_adds_exactly_lambda_times_mean_squared_feature_norm():
    rate = 0.05
    keras.utils.set_random_seed(1)
    plain = resnet18(width=4, weight_l2=0, feature_l2=0)
    penalised = resnet18(width=4, weight_l2=0, feature_l2=rate)
    penalised.set_weights(plain.get_weights())
    u = keras.ops.convert_to_numpy(feature_extractor(plain)(BATCH, training=True))
    by_hand = rate * np.mean(np.sum(u.astype(np.float64) ** 2, axis=1))
    assert by_hand > 1e-3  # the check below is not vacuous
    difference = _train_loss(penalised) - _train_loss(plain)
    assert difference == pytest.approx(by_hand, rel=1e-4)


def test_feature_penalty_is_identity_and_adds_nothing_at_inference():
    keras.utils.set_random_seed(1)
    plain = resnet18(width=4, weight_l2=0, feature_l2=0)
    penalised = resnet18(width=4, weight_l2=0, feature_l2=10.0)
    penalised.set_weights(plain.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(penalised(BATCH)),
                                  keras.ops.convert_to_numpy(plain(BATCH)))
    layer = FeatureL2(10.0)
    out = layer(np.ones((2, 3), "float32"), training=False)
    assert layer.losses == []
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), np.ones((2, 3)))


def test_weight_l2_penalises_conv_and_dense_kernels_only():
    model = resnet18(width=4, weight_l2=1e-3, feature_l2=0)
    kernels = [layer.kernel for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    by_hand = 1e-3 * sum(float(np.sum(keras.ops.convert_to_numpy(k) ** 2)) for k in kernels)
    assert len(kernels) == 21  # stem + 16 block convs + 3 projections + classifier
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)) == pytest.approx(
        by_hand, rel=1e-5)


def test_bn_l2_penalises_batch_norm_scales_offsets_and_the_classifier_bias_only():
    model = resnet18(width=4, weight_l2=0, feature_l2=0, bn_l2=1e-3)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    params = [w for layer in norms for w in (layer.gamma, layer.beta)] + [model.get_layer("logits").bias]
    for i, w in enumerate(params):  # away from the initial ones and zeros
        w.assign(np.random.default_rng(i).normal(size=w.shape).astype("float32"))
    by_hand = 1e-3 * sum(float(np.sum(keras.ops.convert_to_numpy(w) ** 2)) for w in params)
    assert len(norms) == 20  # one per conv
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)) == pytest.approx(
        by_hand, rel=1e-5)
    assert resnet18(width=4, weight_l2=0, feature_l2=0).losses == []  # off by default


def test_dropout_and_l1_are_available_for_comparisons():
    model = resnet18(width=4, weight_l2=0, l1=1e-4, dropout=0.3, feature_l2=0)
    assert model.get_layer("dropout").rate == 0.3
    assert isinstance(model.get_layer("stem_conv").kernel_regularizer, keras.regularizers.L1)


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 0}, "width must be >= 1"),
    ({"feature_l2": -1.0}, "feature_l2 must be >= 0"),
    ({"weight_l2": -1.0}, "weight_l2 must be >= 0"),
    ({"bn_l2": -1.0}, "bn_l2 must be >= 0"),
    ({"dropout": 1.0}, "dropout must be in"),
])
def test_nonsense_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet18(**kwargs)
