"""The unknown score: every exported file has a second output, ``unknown_score``, and its own
threshold in its metadata, set to keep the asked share of held-out known images; every way a
prediction leaves edgel2 says ``unknown`` with the score, and ``--no-unknown`` (``unknown=False``)
or a file without the score leaves both None. ``eval --ood`` measures it as accuracy is
measured: AUROC and FPR95 per out-of-distribution folder."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from edgel2.cli import cli
from edgel2.runtime import Classifier, read_metadata
from edgel2.runtime.formats import REFERENCE_ENGINE
from edgel2.runtime.modelfile import UNKNOWN_OPS, sniff_format
from edgel2.unknown.scores import auroc, fpr_at, threshold_for

SCORED = ["model-int8.onnx", "model-fp32.onnx", "model-fp32.tflite"]


def noise_folder(folder, count: int = 12, seed: int = 0):
    """``count`` seeded uniform-noise 32x32 PNGs: images of none of the classes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def threshold_images(ds) -> np.ndarray:
    """The images export sets the threshold on: the validation split, else the calibration's
    first class-balanced half of the test split."""
    from edgel2.calibration.files import fit_and_report_split

    fit, _ = fit_and_report_split(ds)
    return ds.x_val if fit is None else ds.x_test[fit]


@pytest.mark.parametrize("name", SCORED)
def test_an_exported_file_returns_the_score_as_a_second_one_column_output(exported, name):
    clf = Classifier(exported[name], engine=REFERENCE_ENGINE[sniff_format(exported[name])])
    assert clf.engine.has_unknown and clf.engine.with_unknown
    batch = np.zeros((3, 32, 32, 3), np.uint8)
    assert clf.engine.run(batch).shape == (3, len(clf.class_names) + 1)
    record = read_metadata(exported[name])["unknown"]
    assert record["output"] == "unknown_score" and record["keep"] == 0.95
    assert np.isfinite(record["threshold"]) and clf.unknown_threshold == record["threshold"]


def test_int8_onnx_computes_the_score_in_float_from_int8_stored_weights(exported):
    graph = onnx.load(str(exported["model-int8.onnx"])).graph
    assert [o.name for o in graph.output] == ["logits", "unknown_score"]
    assert [d.dim_value for d in graph.output[1].type.tensor_type.shape.dim][1:] == [1]
    constants = {i.name: i for i in graph.initializer}
    score_ops = [n for n in graph.node if UNKNOWN_OPS.search(n.name)]
    assert "MatMul" in {n.op_type for n in score_ops}
    assert "QuantizeLinear" not in {n.op_type for n in score_ops}  # no activation rounded
    (weights,) = [n for n in score_ops if n.op_type == "DequantizeLinear"]
    assert constants[weights.input[0]].data_type == onnx.TensorProto.INT8
    # the int8 weights are the float32 file's projection exactly (fitted on the int8 grid)
    float_graph = onnx.load(str(exported["model-fp32.onnx"])).graph
    (matmul,) = [n for n in float_graph.node if n.op_type == "MatMul"
                 and UNKNOWN_OPS.search(n.name)]
    projection = onnx.numpy_helper.to_array(
        {i.name: i for i in float_graph.initializer}[matmul.input[1]])
    q, scale = (onnx.numpy_helper.to_array(constants[name]) for name in weights.input[:2])
    np.testing.assert_allclose(q * scale, projection, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", SCORED)
def test_each_files_threshold_keeps_the_asked_share_of_the_images_it_was_set_on(exported, cifar,
                                                                                 name):
    # export measures each file on its reference engine (OpenVINO's int8 kernels round a little
    # differently)
    clf = Classifier(exported[name], engine=REFERENCE_ENGINE[sniff_format(exported[name])])
    images = threshold_images(cifar)
    scores = clf.unknown_scores(images)
    kept = np.mean(scores <= clf.unknown_threshold)
    assert 0.95 <= kept <= 0.95 + 1 / len(images) + 1e-9
    assert clf.unknown_threshold == pytest.approx(threshold_for(scores, 0.95), rel=1e-5)


def test_predictions_carry_the_score_and_the_verdict_and_unknown_false_leaves_them_none(exported,
                                                                                       cifar):
    model = exported["model-int8.onnx"]
    clf = Classifier(model)
    images = np.concatenate([cifar.x_test[:4],
                             np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)])
    predictions = clf.predict(list(images), top_k=2)
    scores = clf.unknown_scores(images)
    assert [p.unknown_score for p in predictions] == pytest.approx(scores.tolist())
    assert [p.unknown for p in predictions] == [bool(s > clf.unknown_threshold) for s in scores]
    assert all(len(p) == 2 for p in predictions)  # the labels are still given

    plain = Classifier(model, unknown=False)
    assert not plain.engine.with_unknown and plain.unknown_threshold is None
    off = plain.predict(list(images), top_k=2)
    assert [(p.unknown, p.unknown_score) for p in off] == [(None, None)] * len(images)
    assert [list(p) for p in off] == [list(p) for p in predictions]


def test_a_file_without_the_score_predicts_as_before(tiny_onnx, tmp_path):
    clf = Classifier(tiny_onnx)
    assert not clf.engine.has_unknown and clf.unknown_threshold is None
    (prediction,) = clf.predict(np.full((8, 8, 3), 90, np.uint8))
    assert (prediction.unknown, prediction.unknown_score) == (None, None)
    assert np.isnan(clf.unknown_scores(np.full((2, 8, 8, 3), 90, np.uint8))).all()


def test_infer_json_csv_and_table_say_unknown_with_the_score_and_no_unknown_turns_it_off(
        exported, tmp_path):
    folder = noise_folder(tmp_path / "noise", count=3)
    model = str(exported["model-int8.onnx"])
    clf = Classifier(model)
    expected = clf.predict(sorted(str(p) for p in folder.glob("*.png")))
    runner = CliRunner()

    result = runner.invoke(cli, ["infer", str(folder), "--model", model, "--out-format", "json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [(r["unknown"], r["unknown_score"]) for r in records] == \
        [(p.unknown, round(p.unknown_score, 6)) for p in expected]

    result = runner.invoke(cli, ["infer", str(folder), "--model", model, "--out-format", "csv"])
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert [r["unknown"] for r in rows] == [str(p.unknown).lower() for p in expected]
    assert [float(r["unknown_score"]) for r in rows] == \
        pytest.approx([p.unknown_score for p in expected], rel=1e-5)

    result = runner.invoke(cli, ["infer", str(folder), "--model", model])
    assert result.stdout.count("unknown: ") == sum(bool(p.unknown) for p in expected)

    result = runner.invoke(cli, ["infer", str(folder), "--model", model, "--out-format", "json",
                                 "--no-unknown"])
    assert [(r["unknown"], r["unknown_score"]) for r in json.loads(result.stdout)] == \
        [(None, None)] * 3


def test_eval_ood_reports_auroc_fpr95_and_shares_as_computed_from_the_files_scores(
        exported, cifar, tmp_path):
    from edgel2.evaluate import evaluate_file

    ood = noise_folder(tmp_path / "probe" / "noise", count=20)
    noise_folder(tmp_path / "probe" / "more-noise", count=10, seed=1)
    model = exported["model-fp32.onnx"]
    report = evaluate_file(model, cifar, ood=[tmp_path / "probe"])["unknown"]

    clf = Classifier(model)
    known = clf.unknown_scores(cifar.x_test)
    noise = clf.unknown_scores(np.stack([np.asarray(Image.open(p))
                                         for p in sorted(ood.glob("*.png"))]))
    assert set(report["sets"]) == {"noise", "more-noise"}
    row = report["sets"]["noise"]
    assert row["images"] == 20
    assert row["auroc"] == pytest.approx(auroc(known, noise))
    assert row["fpr95"] == pytest.approx(fpr_at(known, noise, 0.95))
    assert row["flagged"] == pytest.approx(np.mean(noise > clf.unknown_threshold))
    assert report["kept"] == pytest.approx(np.mean(known <= clf.unknown_threshold))


def test_a_keras_models_unknown_report_is_its_fp32_exports(small_model, exported, cifar,
                                                          tmp_path):
    """``eval --ood`` on a ``.keras`` fits the score as export does, so it measures what the
    exported file will do."""
    from edgel2.checkpoint import load_model
    from edgel2.evaluate import evaluate, evaluate_file

    probe = tmp_path / "probe"
    noise_folder(probe / "noise", count=20)
    keras = evaluate(load_model(small_model), cifar, ood=[probe])["unknown"]
    file = evaluate_file(exported["model-fp32.onnx"], cifar, ood=[probe])["unknown"]
    assert keras["threshold"] == pytest.approx(file["threshold"], rel=1e-4)
    assert keras["kept"] == pytest.approx(file["kept"], abs=2e-3)
    assert keras["sets"]["noise"] == pytest.approx(file["sets"]["noise"], abs=2e-3)


def test_a_broken_ood_image_is_named_before_any_image_is_run(exported, cifar, tmp_path):
    from edgel2.errors import ImageError
    from edgel2.evaluate import evaluate_file

    folder = noise_folder(tmp_path / "noise", count=2)
    broken = folder / "01.png"
    broken.write_bytes(broken.read_bytes()[:100])  # a valid file, cut short
    calls = []
    with pytest.raises(ImageError, match=rf"^`ood` image {re.escape(str(broken))}: "):
        evaluate_file(exported["model-fp32.onnx"], cifar, ood=[folder],
                      on_batch=lambda done, total: calls.append(done))
    assert calls == []  # refused before the test split ran


def test_eval_ood_on_a_file_without_the_score_is_one_line(tiny_onnx, tiny_folder, tmp_path):
    ood = noise_folder(tmp_path / "noise", count=2)
    result = CliRunner().invoke(cli, ["eval", str(tiny_onnx), "--ood", str(ood),
                                      "--data", str(tiny_folder)])
    assert (result.exit_code, result.stderr) == (1, (
        f"edgel2: error: {tiny_onnx.name} has no unknown score (export it again with edgel2 "
        "export, which adds it): --ood cannot be measured\n"))


def test_auroc_and_fpr95_agree_with_their_definitions():
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(0, 1, 300), rng.normal(1.5, 1, 200)
    pairs = np.mean(unknown[None, :] > known[:, None]) + \
        0.5 * np.mean(unknown[None, :] == known[:, None])
    assert auroc(known, unknown) == pytest.approx(pairs)
    assert auroc(known, known) == pytest.approx(0.5)
    threshold = np.sort(known)[int(np.ceil(0.95 * 300)) - 1]
    assert fpr_at(known, unknown) == pytest.approx(np.mean(unknown <= threshold), abs=0.01)


def test_the_graph_score_is_the_mahalanobis_distance_to_the_nearest_class_per_feature():
    from edgel2.unknown.scores import fit_mahalanobis

    keras = pytest.importorskip("keras")
    from edgel2.unknown.head import UnknownScore

    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (400, 6)) * [1, 2, 3, 1, 1, 5]
    labels = np.arange(400) % 4
    features[:, 0] += labels * 3
    from edgel2.unknown.scores import precision_factor

    means, factor = precision_factor(features, labels)
    layer = UnknownScore(6, 4)
    layer.build([(None, 6)])
    layer.set_weights([factor.astype("float32"), (means @ factor).astype("float32")])
    new = rng.normal(0, 2, (10, 6))
    graph = keras.ops.convert_to_numpy(layer([new.astype("float32")]))[:, 0]
    assert graph == pytest.approx(fit_mahalanobis(features, labels)(new) / 6, rel=1e-4)


def test_annotated_copies_of_unknown_images_are_captioned_unknown(tmp_path, monkeypatch):
    from edgel2.runtime import annotate
    from edgel2.runtime.classifier import FileResult, Prediction

    captions = []

    def caption_only(source, label):
        captions.append(label)
        return Image.new("RGB", (4, 4))

    monkeypatch.setattr(annotate, "annotated", caption_only)
    annotate.save_annotated([
        FileResult(str(tmp_path / "a.png"), Prediction([("cat", 0.65)], 2.57, True)),
        FileResult(str(tmp_path / "b.png"), Prediction([("dog", 0.9)], 0.8, False)),
        FileResult(str(tmp_path / "c.png"), Prediction([("dog", 0.9)]))], tmp_path / "out")
    assert captions == ["unknown (cat 65.0 %)", "dog 90.0 %", "dog 90.0 %"]


@pytest.mark.parametrize("name", ["model-int8.onnx", "model-fp32.tflite"])
def test_a_copy_without_the_score_gives_the_same_logits_and_nothing_else(exported, name,
                                                                         tmp_path):
    from edgel2.export.unknown import without_unknown
    from edgel2.runtime.auto import open_engine

    original = open_engine(exported[name])
    copy = without_unknown(exported[name], tmp_path)
    bare = open_engine(copy)  # opens: the checksum in its metadata is of the pruned graph
    assert original.has_unknown and not bare.has_unknown
    assert "unknown" in read_metadata(exported[name]) and "unknown" not in read_metadata(copy)
    assert {k: v for k, v in read_metadata(copy).items() if k != "weights_sha256"} == {
        k: v for k, v in read_metadata(exported[name]).items()
        if k not in ("unknown", "weights_sha256")}
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    original.with_unknown = True
    np.testing.assert_array_equal(bare.run(images), original.run(images)[:, :-1])
    assert without_unknown(copy, tmp_path / "again") is None  # no score: nothing to remove
