"""Calibrated probabilities: the fit, the figures that judge it, the metadata that carries it,
and the runtime that applies it. Fixtures are the tiny ONNX classifier made in the test and
a labelled split whose labels follow its logits."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgel2.calibration import (
    calibration_figures,
    calibration_split,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
)
from edgel2.calibration.apply import calibrated_probabilities, softmax
from edgel2.calibration.files import calibrate_file
from edgel2.cli import cli
from edgel2.data import Dataset
from edgel2.errors import ModelError
from edgel2.runtime import Classifier, read_metadata
from tests.conftest import TINY_CLASSES, make_tiny_onnx, tiny_metadata


@pytest.fixture
def labelled(tiny_onnx):
    """600 random 8x8 images whose labels are drawn from the tiny model's softmax at
    temperature 0.05: its logits are far too flat, so the fit must sharpen them."""
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (600, 8, 8, 3), dtype=np.uint8)
    logits = Classifier(tiny_onnx).engine.run(images)
    truth = calibrated_probabilities(logits, temperature=0.05)
    labels = (rng.random((600, 1)) < truth.cumsum(axis=1)).argmax(axis=1)
    return Dataset(images[:100], labels[:100], images, labels, list(TINY_CLASSES),
                   name="tiny-test"), logits


def test_expected_calibration_error_is_the_count_weighted_gap_per_bin():
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 0, 0, 1])
    # bin of 0.95: accuracy 1.0, gap 0.05; bin of 0.55: accuracy 0.5, gap 0.05
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.05)


def test_fit_recovers_the_temperature_that_made_the_logits_too_sharp():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20000, 10)) * 3
    labels = (rng.random((20000, 1)) < calibrated_probabilities(logits).cumsum(axis=1)).argmax(1)
    assert fit_temperature(logits * 3.0, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.05)


def test_fit_undoes_label_smoothing_where_a_temperature_cannot():
    rng = np.random.default_rng(2)
    truth = rng.dirichlet(np.full(10, 0.1), size=8000)
    labels = (rng.random((8000, 1)) < truth.cumsum(axis=1)).argmax(axis=1)
    said = np.log(0.8 * truth + 0.02)  # what a model trained with smoothing 0.2 says
    fitted = fit_calibration(said, labels)
    assert fitted["method"] == "unsmooth" and fitted["unsmooth"] == pytest.approx(0.2, abs=0.02)
    after = calibration_figures(said, labels, fitted["temperature"], fitted["unsmooth"])
    by_temperature = calibration_figures(said, labels, fit_temperature(said, labels))
    assert after["ece"] < 0.5 * by_temperature["ece"]


def test_calibration_never_changes_the_order_of_the_classes():
    logits = np.random.default_rng(3).normal(size=(500, 10)) * 4
    order = np.argsort(-logits, axis=1, kind="stable")
    for temperature, unsmooth in [(0.3, 0.0), (4.0, 0.0), (1.0, 0.2), (1.0, 0.6)]:
        p = calibrated_probabilities(logits, temperature, unsmooth)
        assert np.array_equal(np.argsort(-p, axis=1, kind="stable"), order)
        assert np.allclose(p.sum(axis=1), 1.0)


def test_fit_and_report_halves_are_disjoint_class_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 1000)
    fit, report = calibration_split(labels)
    assert len(fit) == len(report) == 5000 and not set(fit) & set(report)
    assert np.bincount(labels[fit]).tolist() == [500] * 10
    assert np.array_equal(calibration_split(labels)[0], fit)


def test_non_finite_logits_cannot_be_fitted():
    with pytest.raises(ValueError, match="non-finite"):
        fit_calibration(np.array([[np.inf, 0.0], [0.0, 1.0]]), np.array([0, 1]))


def test_runtime_applies_the_files_calibration(tmp_path):
    images = np.random.default_rng(4).integers(1, 256, (5, 8, 8, 3), dtype=np.uint8)
    plain = Classifier(make_tiny_onnx(tmp_path / "plain.onnx"))
    logits = plain.engine.run(images)
    assert np.allclose(plain.probabilities(images), softmax(logits), atol=1e-6)
    for extra in ({"temperature": 0.25}, {"unsmooth": 0.1}):
        calibrated = Classifier(make_tiny_onnx(tmp_path / "c.onnx", {**tiny_metadata(), **extra}))
        expected = calibrated_probabilities(logits, extra.get("temperature", 1.0),
                                            extra.get("unsmooth", 0.0))
        assert np.allclose(calibrated.probabilities(images), expected, atol=1e-6)
        assert not np.allclose(expected, softmax(logits), atol=1e-3)


# A str is stored as it is: '"2"' is the JSON string "2"; "NaN" and "Infinity" are what
# Python's json reads as floats (a hand-edited file could carry them).
@pytest.mark.parametrize("key, value", [
    ("temperature", 0), ("temperature", -1.5), ("temperature", '"2"'), ("temperature", True),
    ("temperature", "NaN"), ("temperature", "Infinity"), ("unsmooth", 1.0), ("unsmooth", -0.1),
    ("unsmooth", [0.2]),
])
def test_a_file_with_bad_calibration_metadata_is_refused_in_one_line(tmp_path, key, value):
    path = make_tiny_onnx(tmp_path / "bad.onnx", {**tiny_metadata(), key: value})
    with pytest.raises(ModelError, match=f"metadata {key} is") as error:
        Classifier(path)
    assert "\n" not in str(error.value)


def test_calibrate_writes_its_record_into_the_file_and_keeps_everything_else(tiny_onnx, labelled):
    """The tiny model's logits are far too soft: its best temperature lies past the search's
    bound (0.05), so the fit is refused and the file keeps plain softmax, saying why."""
    import onnx

    dataset, logits = labelled
    model = onnx.load(str(tiny_onnx))
    model.metadata_props.add(key="onnx.quant.pre_process", value="onnxruntime.quant")  # another tool's
    onnx.save(model, str(tiny_onnx))
    before = read_metadata(tiny_onnx)

    result = calibrate_file(tiny_onnx, dataset=dataset, plot=tiny_onnx.with_suffix(".png"))

    after = read_metadata(tiny_onnx)
    assert (after["temperature"], after["unsmooth"]) == (result["temperature"], result["unsmooth"]) \
        == (1.0, 0.0)
    assert result["fitted"]["temperature"] == pytest.approx(0.05, rel=1e-3)
    assert after["calibration"]["method"] == result["method"] == "none"
    assert after["calibration"]["refused"] == result["refused"] == \
        "the fitted temperature 0.0500 is at the end of its search range (0.05 to 20)"
    assert after["calibration"]["fitted_on"]["images"] == 300
    assert {k: after[k] for k in before} == before  # edgel2's and the other tool's, unchanged
    assert result["after"] == result["before"]  # what the file gives: plain softmax
    assert tiny_onnx.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reopened = Classifier(tiny_onnx)
    assert np.array_equal(reopened.probabilities(dataset.x_test).argmax(1), logits.argmax(1))


def test_the_shipped_model_still_calibrates_as_it_ships(cifar):
    """The refusals change nothing for a model with enough held-out images: refitted on the
    CIFAR-10-JPEG test split, the shipped int8 ONNX gets its shipped calibration back."""
    from edgel2.runtime import shipped_model

    result = calibrate_file(shipped_model(), dataset=cifar, write=False)
    shipped = read_metadata(shipped_model())
    assert result["refused"] is None and result["method"] == "unsmooth"
    assert result["unsmooth"] == pytest.approx(shipped["unsmooth"], abs=2e-3)
    # ECE 0.141 -> 0.021 on the held-out half (the 7-bit file; 0.147 -> 0.018 at full range)
    assert result["after"]["ece"] <= 0.025 < 0.14 < result["before"]["ece"]


@pytest.mark.parametrize("images, nll_after, temperature, reason", [
    (99, 0.30, 0.8, "fitted on 99 images, fewer than the 100"),
    (500, 0.30, 20.0, "the fitted temperature 20.0000 is at the end of its search range"),
    (500, 0.30, 0.2, "temperature 0.2000 would sharpen the logits 5.0x, more than the 4x allowed"),
    (500, 0.40, 0.8, "it does not lower the held-out NLL (0.3300 -> 0.4000)")])
def test_each_refusal_keeps_plain_softmax_and_says_why(images, nll_after, temperature, reason):
    from edgel2.calibration import calibration_refusal

    fitted = {"method": "temperature", "temperature": temperature, "unsmooth": 0.0}
    assert calibration_refusal(fitted, images, 0.33, nll_after).startswith(reason)
    assert calibration_refusal({**fitted, "temperature": 0.8}, 500, 0.33, 0.30) is None


def test_a_smoothing_fit_at_its_bound_is_refused_too():
    from edgel2.calibration import MAX_UNSMOOTH, calibration_refusal

    fitted = {"method": "unsmooth", "temperature": 1.0, "unsmooth": MAX_UNSMOOTH}
    assert calibration_refusal(fitted, 500, 0.33, 0.30) == \
        "the fitted label smoothing rate 0.9000 is at the end of its search range (0 to 0.9)"


def test_a_run_with_a_validation_split_fits_on_it_and_reports_on_the_whole_test_split():
    from edgel2.calibration.files import calibrate_on
    from edgel2.data import Dataset

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 60)
    x = np.zeros((240, 1, 1, 3), np.uint8)
    ds = Dataset(x[:8], labels[:8], x[120:], labels[120:], list("abcd"), name="toy",
                 x_val=x[:120], y_val=labels[:120])
    seen = []

    def logits_of(images):
        seen.append(len(images))
        return (np.eye(4)[labels[:120]] * 4 + rng.normal(size=(120, 4)))

    result = calibrate_on(ds, logits_of)
    assert seen == [120, 120]  # the test split, then the validation split
    assert result["fitted_on"]["data"] == "toy validation split"
    assert result["fitted_on"]["images"] == 120
    assert result["reported_on"] == "toy test split (120 images)"


def test_calibrate_cli_dry_run_measures_but_leaves_the_file(tiny_onnx, labelled, monkeypatch):
    import edgel2.data.sources

    dataset, _ = labelled
    monkeypatch.setattr(edgel2.data.sources, "load_dataset", lambda *a, **k: dataset)
    original = tiny_onnx.read_bytes()
    result = CliRunner().invoke(cli, ["calibrate", str(tiny_onnx), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["reported_on"] == "tiny-test test split, class-balanced half 2 of 2 (300 images)"
    assert tiny_onnx.read_bytes() == original
    assert (tiny_onnx.parent / "tiny-onnx-reliability.png").is_file()


def test_calibrate_refuses_data_with_other_classes_in_one_line(tiny_onnx, labelled, monkeypatch):
    import edgel2.data.sources

    dataset, _ = labelled
    dataset.class_names = ["a", "b"]
    monkeypatch.setattr(edgel2.data.sources, "load_dataset", lambda *a, **k: dataset)
    result = CliRunner().invoke(cli, ["calibrate", str(tiny_onnx)])
    assert result.exit_code == 1
    assert result.stderr == "edgel2: error: tiny.onnx has 3 classes but the data has 2\n"


def test_shipped_files_are_calibrated_and_say_how():
    from edgel2.runtime import shipped_model

    for name in ("resnet18-int8.onnx", "resnet18-int8.tflite"):
        meta = read_metadata(shipped_model(name))
        assert meta["calibration"]["method"] == "unsmooth" and 0.1 < meta["unsmooth"] < 0.3
        assert meta["calibration"]["fitted_on"]["data"] == \
            "CIFAR-10-JPEG test split, class-balanced half 1 of 2"
        assert meta["calibration"]["ece_after"] < 0.025 < 0.14 < meta["calibration"]["ece_before"]
