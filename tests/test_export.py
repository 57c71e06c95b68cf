"""edgel2 export: every format x precision runs in its runtime, carries its metadata, is
checked against Keras, and is written atomically; bad input gets one clear line."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from edgel2.cli import cli
from edgel2.errors import EdgeL2Error
from edgel2.export import export_model, format_table
from edgel2.runtime import read_metadata
from edgel2.runtime.auto import open_engine
from edgel2.runtime.formats import REFERENCE_ENGINE
from edgel2.runtime.modelfile import UNKNOWN_OPS, sniff_format

pytestmark = pytest.mark.slow


def _reference(path):
    """The file on the engine its exporter targets (the one export checks it with)."""
    return open_engine(path, engine=REFERENCE_ENGINE[sniff_format(path)])


@pytest.fixture(scope="module")
def full_matrix(small_model, cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix")
    report = export_model(small_model, ["all"], ["all"], dataset=cifar, int8_images=64, check=200,
                          out=out, allow_drop=True)
    return out, report


def test_every_format_and_precision_exports_and_runs_in_its_runtime(full_matrix, cifar):
    out, report = full_matrix
    assert [(r["format"], r["precision"]) for r in report["rows"]] == [
        (f, p) for f in ("onnx", "tflite") for p in ("fp32", "fp16", "dynamic", "int8")]
    for row in report["rows"]:
        assert row["status"] == "ok", row
        logits = _reference(out / row["file"]).run(cifar.x_test[:3])
        assert logits.shape == (3, 10) and logits.dtype == np.float32
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [r["file"] for r in report["rows"]] + ["export_report.json"])


def test_onnx_int8_runs_every_convolution_as_an_integer_kernel(full_matrix):
    _, report = full_matrix
    (row,) = [r for r in report["rows"] if (r["format"], r["precision"]) == ("onnx", "int8")]
    assert row["integer_convs"] == "20/20"


def test_onnx_int8_stem_reads_the_uint8_pixels(full_matrix):
    """No float pre-processing is left before the first integer kernel: the pixels, padded to 4
    channels for MLAS's symmetric kernel, are the stem's quantized input."""
    import onnx

    out, _ = full_matrix
    graph = onnx.load(str(out / "model-int8.onnx")).graph
    assert path_to_first_conv(graph) == ["Pad", "DequantizeLinear", "Transpose", "QuantizeLinear",
                                         "DequantizeLinear", "Conv"]
    # (the unknown score, computed in float after the network, is no pre-processing)
    assert not {"Cast", "Sub", "Mul"} & {n.op_type for n in graph.node
                                         if not UNKNOWN_OPS.search(n.name)}
    stem = next(i for i in graph.initializer if i.name == "edgel2_input_fold/w")
    assert list(stem.dims) == [4, 4, 3, 3]  # width-4 stem: 4 filters over 3 + 1 zero channels


def test_onnx_int8_weights_stay_within_7_bits_so_avx2_cpus_sum_them_exactly(full_matrix):
    """x86 CPUs without VNNI add each pair of uint8 x int8 products into a saturating int16
    (VPMADDUBSW): at |w| <= 64 no pair of 255 * w can overflow it, the stem included."""
    import onnx
    from onnx import numpy_helper

    from edgel2.export.qdq import WEIGHT_QMAX

    out, _ = full_matrix
    graph = onnx.load(str(out / "model-int8.onnx")).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    largest = {}
    for node in graph.node:
        if node.op_type == "Conv":
            weights = initializers[producer[node.input[1]].input[0]]
            assert weights.dtype == np.int8, node.name
            largest[node.name] = int(np.abs(weights.astype(np.int32)).max())
    assert WEIGHT_QMAX == 64 and 2 * 255 * WEIGHT_QMAX <= 32767
    assert len(largest) > 10 and max(largest.values()) == WEIGHT_QMAX, largest


def test_narrowing_int8_weights_keeps_the_answers_within_their_rounding(full_matrix, cifar,
                                                                        tmp_path):
    """What scripts/tools/narrow_int8_weights.py does to an older full-range file, here from
    7 to 6 bits: every integer kernel's weights within the new bound, the unknown score's
    projection (computed in float) untouched, the logits within the weights' rounding."""
    import onnx
    from onnx import numpy_helper

    from edgel2.export.onnx import set_metadata
    from edgel2.export.qdq import narrow_weights

    out, _ = full_matrix
    proto = onnx.load(str(out / "model-int8.onnx"))
    before = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    assert narrow_weights(proto, qmax=32) == convs + 1        # and the classifier
    narrowed = tmp_path / "narrowed.onnx"
    onnx.save(proto, str(narrowed))
    set_metadata(narrowed, {p.key: p.value for p in proto.metadata_props})  # the checksum
    after = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert all(np.abs(after[k].astype(np.int32)).max() <= 32 for k in changed
               if after[k].dtype == np.int8)
    assert not [k for k in changed if "unknown" in k]
    images = cifar.x_test[:200]
    old, new = _reference(out / "model-int8.onnx").run(images), _reference(narrowed).run(images)
    assert 0 < np.abs(new - old).mean() < 0.05 * old.std()


NARROWING_SCRIPT = Path(__file__).parents[1] / "scripts" / "tools" / "narrow_int8_weights.py"


def test_the_narrowing_script_says_one_line_for_a_file_it_cannot_read_and_does_the_rest(
        tiny_onnx, tmp_path):
    import subprocess
    import sys

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny_onnx.read_bytes()[:100])
    done = subprocess.run([sys.executable, str(NARROWING_SCRIPT), str(corrupt), str(tmp_path / "missing.onnx"),
                           str(tiny_onnx), "--data", ""], capture_output=True, text=True)
    assert done.returncode == 1
    assert [line.split(":")[0] for line in done.stderr.splitlines()] == \
        [str(corrupt), str(tmp_path / "missing.onnx")]
    assert "Traceback" not in done.stderr
    assert done.stdout == f"{tiny_onnx}: 0 weights requantized to 7 bits; accuracy not recorded\n"
    assert read_metadata(tiny_onnx)["class_names"] == ["ant", "bee", "cat"]  # still a model


def test_the_narrowing_script_leaves_a_file_as_it_was_when_its_accuracy_cannot_be_measured(
        tiny_onnx, tmp_path):
    import subprocess
    import sys

    from edgel2.export.onnx import set_metadata

    (tmp_path / "models").mkdir()
    recorded = tmp_path / "models" / "recorded.onnx"
    recorded.write_bytes(tiny_onnx.read_bytes())
    set_metadata(recorded, {"accuracy": json.dumps({"top1": 0.5})}, keep_others=True)
    before = recorded.read_bytes()
    done = subprocess.run([sys.executable, str(NARROWING_SCRIPT), str(recorded),
                           "--data", str(tmp_path / "no-such-folder")], capture_output=True, text=True)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"{recorded}: left as it was: ")
    assert recorded.read_bytes() == before
    assert [p.name for p in recorded.parent.iterdir()] == ["recorded.onnx"]   # nothing staged left


SHIPPING_SCRIPT = Path(__file__).parents[1] / "scripts" / "tools" / "ship_model.py"


def test_the_shipping_script_copies_a_file_without_the_exporting_machines_data_record(
        tiny_onnx, tmp_path):
    """scripts/tools/ship_model.py: models/ gets the export's file and metadata but the data
    record (a folder on the exporting machine); a file with no accuracy record is one line and
    exit 1, and the file already shipped under that name stays as it was."""
    import subprocess
    import sys

    from edgel2.export.onnx import set_metadata

    exported = tmp_path / "export" / "small-int8.onnx"
    exported.parent.mkdir()
    exported.write_bytes(tiny_onnx.read_bytes())
    set_metadata(exported, {"accuracy": json.dumps({"top1": 0.5}),
                            "data": json.dumps({"source": "/home/someone/photos"})}, keep_others=True)
    unchecked = tmp_path / "export" / "other-int8.onnx"
    unchecked.write_bytes(tiny_onnx.read_bytes())
    models = tmp_path / "models"
    models.mkdir()
    (models / "other-int8.onnx").write_bytes(b"the shipped file")
    done = subprocess.run([sys.executable, str(SHIPPING_SCRIPT), str(exported), str(unchecked),
                           "--to", str(models)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"{unchecked}: not shipped: no edgel2 accuracy record: "
                                        "export it with edgel2 export --check"]
    shipped = read_metadata(models / "small-int8.onnx")
    assert shipped == {k: v for k, v in read_metadata(exported).items() if k != "data"}
    assert "data" in read_metadata(exported) and shipped["accuracy"] == {"top1": 0.5}
    assert (models / "other-int8.onnx").read_bytes() == b"the shipped file"
    assert sorted(p.name for p in models.iterdir()) == ["other-int8.onnx", "small-int8.onnx"]


def path_to_first_conv(graph) -> list[str]:
    """Op types from the graph input to the first Conv, following the data."""
    ops, tensor = [], graph.input[0].name
    while not ops or ops[-1] != "Conv":
        node = next(n for n in graph.node if tensor in n.input)
        ops.append(node.op_type)
        tensor = node.output[0]
    return ops


@pytest.fixture(scope="module")
def unfolded_int8(full_matrix, cifar, tmp_path_factory):
    """The same calibration as the exported int8 file, without the input folding."""
    from edgel2.export.exporter import _representative_images
    from edgel2.export.onnx import quantize_int8

    out, _ = full_matrix
    path = tmp_path_factory.mktemp("unfolded") / "int8.onnx"
    quantize_int8(out / "model-fp32.onnx", path, _representative_images(cifar, 64), fold_input=False)
    return path


def test_folding_the_input_tracks_the_float_model_as_closely_as_before(full_matrix, unfolded_int8,
                                                                       cifar):
    out, _ = full_matrix
    images = cifar.x_test[:500]
    reference = _reference(out / "model-fp32.onnx").run(images)

    def against_float(path):
        logits = _reference(path).run(images)
        return np.mean(logits.argmax(1) == reference.argmax(1)), np.abs(logits - reference).mean()

    agree, error = against_float(out / "model-int8.onnx")
    agree_before, error_before = against_float(unfolded_int8)
    assert agree >= agree_before - 0.02 and error <= 1.1 * error_before


def test_the_channel_padding_changes_no_logit(unfolded_int8, cifar):
    """The 4th input channel is the zero point times zero weights: the same integer sums."""
    import onnx

    from edgel2.export.qdq import fold_input_normalization

    logits = []
    for multiple in (4, 1):
        proto = fold_input_normalization(onnx.load(str(unfolded_int8)), channel_multiple=multiple)
        path = unfolded_int8.with_name(f"folded-{multiple}.onnx")
        onnx.save(proto, str(path))
        logits.append(_reference(path).run(cifar.x_test[:200]))
    assert path_to_first_conv(onnx.load(str(path)).graph)[:2] == ["DequantizeLinear", "Transpose"]
    np.testing.assert_array_equal(logits[0], logits[1])


def test_a_graph_without_the_expected_front_is_not_folded(full_matrix):
    import onnx

    from edgel2.export.qdq import NotFoldable, fold_input_normalization

    out, _ = full_matrix
    with pytest.raises(NotFoldable, match="the graph starts"):
        fold_input_normalization(onnx.load(str(out / "model-fp32.onnx")))


def test_fp32_files_match_keras_to_float_rounding(full_matrix):
    _, report = full_matrix
    for row in report["rows"]:
        if row["precision"] == "fp32":
            assert row["max_abs_diff"] < 1e-4 and row["agreement"] == 1.0, row


def test_report_json_carries_every_row(full_matrix):
    out, report = full_matrix
    saved = json.loads((out / "export_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["check_images"] == 200 and 0 <= saved["keras_accuracy"] <= 1
    assert saved["data"] == "CIFAR-10-JPEG" and "on 200 CIFAR-10-JPEG test images" in format_table(report)


def test_report_json_keeps_earlier_exports_into_the_same_folder(small_model, cifar, tmp_path):
    """Exporting ONNX, then TFLite, then ONNX again into one folder: the file lists every file
    there once, each row with the check it had; the return value is that call's rows only."""
    export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=40, out=tmp_path)
    export_model(small_model, ["tflite"], ["fp32"], dataset=cifar, check=0, out=tmp_path)
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert [(r["file"], r["check_images"]) for r in saved["rows"]] == [
        ("model-fp32.onnx", 40), ("model-fp32.tflite", 0)]
    assert saved["rows"][0]["accuracy"] is not None and saved["rows"][1]["accuracy"] is None
    # the model as seen from the report's folder, so the report works from any directory
    assert saved["model"] == Path(os.path.relpath(small_model.resolve(), tmp_path.resolve())).as_posix()

    (tmp_path / "model-fp32.tflite").unlink()      # a file deleted since: its row goes
    again = export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=20, out=tmp_path,
                         force=True)
    saved = json.loads((tmp_path / "export_report.json").read_text())
    assert [(r["file"], r["check_images"]) for r in saved["rows"]] == [("model-fp32.onnx", 20)]
    assert saved == json.loads(json.dumps(again))


def test_metadata_round_trips_in_both_formats(full_matrix, small_model):
    out, report = full_matrix
    run_config = json.loads((small_model.parent / "config.json").read_text())
    for row in report["rows"]:
        meta = read_metadata(out / row["file"])
        assert meta["class_names"] == run_config["model"]["class_names"]
        assert meta["input"] == {"name": "images", "layout": "NHWC", "dtype": "uint8",
                                 "shape": [None, 32, 32, 3]}
        assert meta["normalization"]["mean"] == pytest.approx([125.307, 122.950, 113.865])
        assert meta["config_hash"] == run_config["config_hash"]
        assert meta["precision"] == row["precision"] and meta["format"] == row["format"]
        assert meta["accuracy"]["top1"] == row["accuracy"]
        assert meta["accuracy"]["data"] == "CIFAR-10-JPEG test split"
        assert meta["model_name"] == "resnet18_w4"
        documented = (Path(__file__).parent.parent / "docs/reference/files.md").read_text()
        assert [key for key in meta if f"`{key}`" not in documented] == []  # every key, documented
        # one calibration, fitted on the Keras logits, in every file
        calibration = report["calibration"]
        assert (meta["temperature"], meta["unsmooth"]) == (calibration["temperature"],
                                                           calibration["unsmooth"])
        assert meta["calibration"]["method"] == calibration["method"]


def test_export_calibrates_on_half_the_test_split_and_reports_on_the_other(full_matrix, cifar):
    _, report = full_matrix
    calibration = report["calibration"]
    assert calibration["fitted_on"] == {"images": 5000, "seed": 0,
                                        "data": "CIFAR-10-JPEG test split, class-balanced half 1 of 2"}
    assert calibration["before"]["images"] == calibration["after"]["images"] == 5000
    assert calibration["after"]["top1"] == calibration["before"]["top1"]
    assert calibration["after"]["nll"] <= calibration["before"]["nll"]
    assert "calibrated (" in format_table(report)


def test_no_calibrate_leaves_the_files_uncalibrated(small_model, cifar, tmp_path):
    report = export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=0,
                          calibrate=False, out=tmp_path)
    assert report["calibration"] is None
    meta = read_metadata(tmp_path / "model-fp32.onnx")
    assert "temperature" not in meta and "calibration" not in meta


def test_parity_check_catches_a_wrong_normalization(small_model, cifar, tmp_path, monkeypatch):
    import edgel2.export.onnx as onnx_export

    honest = onnx_export.to_onnx

    def wrong_normalization(model, opset=17, batch=None):
        config = model.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "Normalize":
                layer["config"]["mean"] = [0.0, 0.0, 0.0]
        planted = keras.Model.from_config(config)
        planted.set_weights(model.get_weights())
        return honest(planted, opset, batch)

    monkeypatch.setattr(onnx_export, "to_onnx", wrong_normalization)
    report = export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=100, out=tmp_path)
    row = report["rows"][0]
    assert row["status"] == "failed"
    assert row["reason"].startswith("fp32 logits differ from Keras by up to")
    assert list(tmp_path.iterdir()) == [tmp_path / "export_report.json"]  # nothing kept


def test_quantized_file_below_the_accuracy_limit_fails_unless_allowed(small_model, cifar,
                                                                      tmp_path):
    report = export_model(small_model, ["onnx"], ["int8"], dataset=cifar, int8_images=16, check=100,
                          out=tmp_path, max_drop=-100.0)  # any file misses an impossible bar
    assert report["rows"][0]["status"] == "failed"
    assert "points below Keras" in report["rows"][0]["reason"]
    assert not (tmp_path / "model-int8.onnx").exists()


def test_interrupted_export_leaves_no_file_behind(small_model, cifar, tmp_path, monkeypatch):
    import edgel2.export.onnx as onnx_export

    def interrupted(path, metadata, keep_others=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "set_metadata", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=50, out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_without_force(small_model, cifar, tmp_path):
    (tmp_path / "model-fp32.onnx").write_bytes(b"precious")
    with pytest.raises(EdgeL2Error, match="exists; pass `force` to overwrite"):
        export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=0, out=tmp_path)
    assert (tmp_path / "model-fp32.onnx").read_bytes() == b"precious"
    export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=0, out=tmp_path, force=True)
    assert (tmp_path / "model-fp32.onnx").read_bytes() != b"precious"


def test_bf16_trained_model_exports_as_float32(small_model, cifar, tmp_path):
    from edgel2.checkpoint import load_model

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = keras.Model.from_config(load_model(small_model).get_config())
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    mixed.set_weights(load_model(small_model).get_weights())
    mixed.save(tmp_path / "mixed.keras")
    report = export_model(tmp_path / "mixed.keras", ["onnx"], ["fp32"], dataset=cifar, check=50,
                          out=tmp_path / "out")
    assert report["rows"][0]["status"] == "ok"
    engine = _reference(tmp_path / "out" / "mixed-fp32.onnx")
    assert engine.session.get_inputs()[0].type == "tensor(uint8)"
    assert engine.session.get_outputs()[0].type == "tensor(float)"


def test_model_without_its_run_config_takes_class_names_from_the_data(small_model, cifar,
                                                                      tmp_path):
    # A checkpoint carried back from a GPU machine often arrives without its config.json.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(small_model, alone / "model.keras")
    lines = []
    export_model(alone / "model.keras", ["onnx"], ["fp32"], dataset=cifar, check=0,
                 out=tmp_path / "out", progress=lines.append)
    assert read_metadata(tmp_path / "out" / "model-fp32.onnx")["class_names"] == cifar.class_names
    assert "no config.json beside model.keras: class names taken from the data" in lines


def _export_cli(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


def test_cli_exports_and_prints_the_table(small_model, data_dir, tmp_path):
    result = _export_cli(str(small_model), "--data", str(data_dir), "--check", "50",
                         "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "model-fp32.onnx" in result.stdout and "ok" in result.stdout
    assert (tmp_path / "model-fp32.onnx").is_file()
    # off a terminal: no progress bars, and each progress line says what it is about
    assert "\x1b[" not in result.output and "running the check images" not in result.output
    assert result.stderr.splitlines()[:2] == [
        "export: Keras reference on 50 CIFAR-10-JPEG test images",
        "export: calibrating: Keras logits on the CIFAR-10-JPEG test images"]


def test_check_progress_counts_every_image_of_every_pass(small_model, cifar, tmp_path):
    calls = []
    export_model(small_model, ["onnx"], ["fp32"], dataset=cifar, check=300, out=tmp_path,
                 calibrate=False, unknown=False,
                 check_progress=lambda done, total: calls.append((done, total)))
    # the Keras reference in batches of 256, then the file in batches of 100
    assert calls == [(256, 300), (300, 300), (100, 300), (200, 300), (300, 300)]


@pytest.mark.parametrize("setup, args, code, message", [
    ("missing", [], 1, "model file does not exist"),
    ("corrupt", [], 1, "cannot load"),
    ("dense", [], 1, "is not an image classifier"),
    ("model", ["--format", "coreml"], 2, "Invalid value for '--format'"),
    ("model", ["--precision", "int4"], 2, "Invalid value for '--precision'"),
    ("model", ["--opset", "9"], 2, "Invalid value for '--opset': 9 is not in the range 17<=x<=18"),
    ("model", ["--out", "FILE/sub"], 1, "cannot create the output folder"),
])
def test_bad_export_input_gets_one_line_and_leaves_no_folder(small_model, tmp_path, setup, args, code, message):
    path = {"missing": tmp_path / "none.keras", "corrupt": tmp_path / "bad.keras",
            "dense": tmp_path / "dense.keras", "model": small_model}[setup]
    if setup == "corrupt":
        path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    if setup == "dense":
        inputs = keras.Input((4,))
        keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(path)
    (tmp_path / "FILE").write_text("a file, not a folder")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    result = _export_cli(str(path), "--check", "0", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("edgel2: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists(), "a failed export left its output folder behind"


def test_int8_of_a_model_with_no_data_record_offline_says_how_to_get_some(small_model, tmp_path,
                                                                         monkeypatch):
    import urllib.error
    import urllib.request

    import edgel2.data.sources

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    bare = tmp_path / "bare" / "model.keras"  # no config.json beside it: no record of its data
    bare.parent.mkdir()
    shutil.copy(small_model, bare)
    monkeypatch.delenv("EDGEL2_DATA", raising=False)
    monkeypatch.setenv("EDGEL2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(edgel2.data.sources, "CHECKOUT_CIFAR10", tmp_path / "no-checkout-copy")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = _export_cli(str(bare), "--precision", "int8", "--check", "0", "--out", str(tmp_path))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "edgel2: error: could not download CIFAR-10 (no network? Network is unreachable); "
        "pass --data PATH or set $EDGEL2_DATA to an image folder or cifar-10-batches-py/")


def test_a_model_whose_recorded_data_is_gone_says_so_naming_data(small_model, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(small_model, run / "model.keras")
    described = json.loads((small_model.parent / "config.json").read_text())
    described["data"]["source"] = str(tmp_path / "moved")
    (run / "config.json").write_text(json.dumps(described))
    result = _export_cli(str(run / "model.keras"), "--precision", "int8", "--check", "0")
    assert result.exit_code == 1
    assert result.stderr == (f"edgel2: error: the data model.keras was trained on is gone: "
                             f"{tmp_path / 'moved'} (recorded in {run / 'config.json'}); "
                             "pass --data PATH\n")


@pytest.fixture
def run(small_model, tmp_path):
    """A copy of the small model's run directory (model.keras beside config.json), for
    exports into its default folders."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "config.json"):
        shutil.copy(small_model.parent / name, run / name)
    return run


def test_flip_average_export_averages_each_image_with_its_mirror(run, cifar):
    from edgel2.checkpoint import load_model

    report = export_model(run / "model.keras", ["onnx"], ["fp32"], dataset=cifar, check=100,
                          calibrate=False, flip_average=True)

    assert report["out"] == str(run / "export-flip")  # never beside the plain files
    path = run / "export-flip" / "model-fp32.onnx"
    assert read_metadata(path)["flip_average"] is True
    images = cifar.x_test[:8]
    keras_model = load_model(run / "model.keras")
    expected = (keras_model.predict_on_batch(images)
                + keras_model.predict_on_batch(images[:, :, ::-1])) / 2
    assert np.allclose(_reference(path).run(images), expected, atol=1e-4)
    assert report["rows"][0]["status"] == "ok"  # checked against the flip-averaged Keras model


@pytest.fixture(scope="module")
def small_test_split(cifar):
    from dataclasses import replace

    from edgel2.data import balanced_subset

    x, y = balanced_subset(cifar.x_test, cifar.y_test, 400, seed=1)
    return replace(cifar, x_test=x, y_test=y)


def test_eval_on_every_exported_format_agrees_with_the_export_report(small_model,
                                                                     small_test_split, tmp_path):
    from edgel2.evaluate import evaluate_file

    report = export_model(small_model, ["all"], ["fp32", "int8"], dataset=small_test_split,
                          int8_images=64, check=None, calibrate=False, allow_drop=True, out=tmp_path)
    for row in report["rows"]:
        engine = REFERENCE_ENGINE[row["format"]]  # the engine export checked the file on
        evaluated = evaluate_file(tmp_path / row["file"], small_test_split, engine=engine)
        assert evaluated["accuracy"] == row["accuracy"], row["file"]
        assert evaluated["images"] == 400 and sum(map(sum, evaluated["confusion"])) == 400
        assert evaluated["model"] == {"file": str(tmp_path / row["file"]), "format": row["format"],
                                      "precision": row["precision"], "engine": engine}


def test_eval_cli_on_an_exported_file_writes_the_keras_reports_files(full_matrix, tmp_path):
    out, _ = full_matrix
    result = CliRunner().invoke(cli, ["eval", str(out / "model-int8.onnx"), "--json",
                                      "--engine", "onnxruntime", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"accuracy", "images", "per_class", "confusion", "class_names",
                           "data", "model", "calibration", "unknown"}
    assert report["unknown"]["sets"] == {}  # no --ood: the share kept only
    assert report["calibration"]["top1"] == report["accuracy"]
    assert json.loads((tmp_path / "ev" / "eval.json").read_text()) == report
    assert (tmp_path / "ev" / "confusion.png").is_file()


@pytest.mark.parametrize("make, message", [
    ("text", "notes.txt is not a model file of a format edgel2 reads (ONNX, TFLite)"),
    ("tiny", "model predicts 3 classes but the data has 10"),
])
def test_eval_of_a_file_that_cannot_be_evaluated_gets_one_line(data_dir, tmp_path, make, message):
    from tests.conftest import make_tiny_onnx

    if make == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not a model")
    else:
        path = make_tiny_onnx(tmp_path / "tiny.onnx")
    result = CliRunner().invoke(cli, ["eval", str(path), "--data", str(data_dir)])
    assert result.exit_code == 1
    assert result.stderr.startswith("edgel2: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def _assert_tidy_onnx_header(path):
    import onnx

    from edgel2 import __version__

    proto = onnx.load(str(path))
    assert (proto.producer_name, proto.producer_version, proto.model_version) == (
        "edgel2", __version__, 1)
    assert proto.doc_string.startswith("edgel2 image classifier: uint8 NHWC images")
    for value in (proto.graph.input[0], proto.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    used = {n.domain or "" for n in proto.graph.node} | {""}
    assert {o.domain or "" for o in proto.opset_import} == used
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["format"] == "onnx" and props["producer"] == f"edgel2 {__version__}"  # no quotes
    assert json.loads(props["class_names"])  # structured values stay JSON
    onnx.checker.check_model(proto, full_check=True)


def test_onnx_files_have_the_header_generic_tools_read(full_matrix):
    out, report = full_matrix
    for row in report["rows"]:
        if row["format"] == "onnx":
            _assert_tidy_onnx_header(out / row["file"])
            assert read_metadata(out / row["file"])["precision"] == row["precision"]


def test_the_shipped_onnx_has_the_header_generic_tools_read():
    from edgel2.runtime import shipped_model

    _assert_tidy_onnx_header(shipped_model("resnet18-int8.onnx"))


def test_flip_average_to_tflite_int8_is_refused_before_any_work(small_model, tmp_path):
    result = _export_cli(str(small_model), "--format", "all", "--precision", "int8",
                         "--flip-average", "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert result.stderr.startswith("edgel2: error: --flip-average is not exported to TFLite int8")
    assert not (tmp_path / "o").exists()


def test_tflite_signature_takes_images_and_returns_logits(full_matrix, cifar):
    from ai_edge_litert.interpreter import Interpreter

    out, report = full_matrix
    for row in report["rows"]:
        if row["format"] != "tflite":
            continue
        interpreter = Interpreter(model_path=str(out / row["file"]))
        assert interpreter.get_signature_list() == {
            "serving_default": {"inputs": ["images"], "outputs": ["logits", "unknown_score"]}}
        images = cifar.x_test[:4]
        logits = interpreter.get_signature_runner()(images=images)["logits"]
        assert np.array_equal(logits, _reference(out / row["file"]).run(images)), row["file"]


def test_a_dynamic_onnx_slower_than_fp32_here_says_so_in_the_report(full_matrix):
    _, report = full_matrix
    (row,) = [r for r in report["rows"] if (r["format"], r["precision"]) == ("onnx", "dynamic")]
    assert row["status"] == "ok" and row["slower_than_fp32"] > 0
    flagged = "slower than fp32 on this machine" in (row["reason"] or "")
    assert flagged == (row["slower_than_fp32"] > 1.5)
    assert all("slower_than_fp32" not in r for r in report["rows"] if r["precision"] != "dynamic"
               or r["format"] != "onnx")


def test_fixed_batch_export_runs_at_that_batch_and_refuses_another(run, cifar):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from edgel2.runtime import Classifier

    dynamic = export_model(run / "model.keras", ["onnx"], ["fp32"], dataset=cifar, check=0,
                           calibrate=False)
    report = export_model(run / "model.keras", ["onnx", "tflite"], ["fp32"], dataset=cifar,
                          check=50, calibrate=False, batch=4)  # 50: the last call is padded

    assert report["out"] == str(run / "export-b4") and report["batch"] == 4
    assert [r["status"] for r in report["rows"]] == ["ok", "ok"]
    onnx_file, tflite_file = run / "export-b4" / "model-fp32.onnx", run / "export-b4" / "model-fp32.tflite"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 32, 32, 3]
    with pytest.raises(Exception, match="dimensions"):
        session.run(None, {"images": cifar.x_test[:3]})
    assert Interpreter(model_path=str(tflite_file)).get_input_details()[0][
        "shape_signature"].tolist() == [4, 32, 32, 3]
    assert read_metadata(onnx_file)["input"]["shape"] == [4, 32, 32, 3]

    images = cifar.x_test[:7]
    expected = Classifier(Path(dynamic["out"]) / "model-fp32.onnx",
                          engine="onnxruntime").probabilities(images)
    for path in (onnx_file, tflite_file):
        fixed = Classifier(path, engine="onnxruntime" if path.suffix == ".onnx" else "litert")
        assert fixed.engine.fixed_batch == 4
        assert np.allclose(fixed.probabilities(images), expected, atol=1e-5)
