"""edgel2.model: the CIFAR networks (ResNet-18, ResNet-20) and the two kinds of L2
regularization, which every architecture gets."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from edgel2.config import ARCHITECTURES, TrainConfig
from edgel2.errors import OptionError
from edgel2.model import (
    FeatureL2,
    architecture_of,
    build_network,
    conv_layer_names,
    count_multiply_adds,
    count_params,
    feature_extractor,
    resnet18,
    resnet20,
)

BATCH = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
LABELS = np.eye(10, dtype="float32")[np.arange(8) % 10]


def test_full_width_has_the_pytorch_cifar_resnet18_parameter_count():
    assert count_params(resnet18(width=64)) == 11_173_962


def test_resnet20_has_the_published_parameter_count_and_a_fourteenth_of_the_compute():
    # He et al. (2016) and chenyaofo/pytorch-cifar-models: 0.27M parameters, 41M MACs
    small, full = resnet20(), resnet18(width=64)
    assert count_params(small) == 272_474
    assert count_multiply_adds(small) == 40_813_184
    assert count_multiply_adds(full) == 555_422_720
    assert count_multiply_adds(full) / count_multiply_adds(small) == pytest.approx(13.6, abs=0.1)


def test_multiply_adds_of_a_width_1_resnet20_match_the_sum_by_hand():
    stem = 32 * 32 * 27                                 # 3x3x3 -> 1 channel at 32x32
    stage1 = 6 * 32 * 32 * 9                            # six 3x3 1 -> 1 convolutions
    stage2 = 16 * 16 * 2 * (9 + 18 + 1 + 4 * 18)        # strided 1->2, 2->2, projection, 4 more
    stage3 = 8 * 8 * 4 * (18 + 36 + 2 + 4 * 36)         # the same at 4 channels
    head = 4 * 10
    assert count_multiply_adds(resnet20(width=1)) == stem + stage1 + stage2 + stage3 + head


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_is_told_by_its_convolution_names(arch):
    model = build_network(arch, 10, width=4)
    names = [layer.name for layer in model.layers]
    assert {n for n in names if n.endswith("_conv")} == conv_layer_names(arch)
    assert architecture_of(names) == arch
    assert model.name == f"{arch}_w4"


def test_resnet20_stages_are_three_of_three_blocks_at_1x_2x_4x_width():
    convs = [layer for layer in resnet20(width=4).layers
             if isinstance(layer, keras.layers.Conv2D)]
    assert sorted({c.filters for c in convs}) == [4, 8, 16]
    assert len(convs) == 1 + 3 * 3 * 2 + 2  # stem, 18 block convs, 2 projections
    assert feature_extractor(resnet20(width=4)).output.shape == (None, 16)


def test_both_l2s_apply_to_every_architecture():
    model = build_network("resnet20", 10, width=4, weight_l2=1e-3, feature_l2=0.5)
    assert model.get_layer("feature_l2").rate == 0.5
    assert all(layer.kernel_regularizer is not None for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)))


def test_an_unknown_architecture_names_the_choices():
    with pytest.raises(OptionError, match="unknown arch 'vgg' \\(choose from resnet18, resnet20\\)"):
        build_network("vgg")
    with pytest.raises(OptionError, match="unknown arch 'vgg'"):
        TrainConfig(arch="vgg").validate()


def test_width_defaults_to_the_architectures_standard_and_freeze_to_its_stages():
    assert TrainConfig(arch="resnet20").network_width == 16
    assert TrainConfig().network_width == 64
    with pytest.raises(OptionError, match="freeze takes 0 to 3 stages, got 4"):
        TrainConfig(arch="resnet20", freeze=4, weights="w.keras").validate()
    with pytest.raises(OptionError, match="the shipped pretrained resnet20 is width 16"):
        TrainConfig(arch="resnet20", width=8, weights="pretrained").validate()


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
