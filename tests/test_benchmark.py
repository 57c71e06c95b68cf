"""edgel2 benchmark: every row carries every cell or a stated reason, and --min-accuracy is a
gate that fails on a low-accuracy file."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgel2.benchmark import benchmark, format_table
from edgel2.cli import cli
from edgel2.errors import EdgeL2Error
from edgel2.model import count_multiply_adds, resnet20

pytestmark = pytest.mark.slow
CELLS = {"size_mb", "accuracy", "latency_ms", "throughput"}


def test_tiny_model_measures_every_cell_in_seconds(small_model, cifar, tmp_path):
    model = tmp_path / "model.keras"
    shutil.copy(small_model, model)
    report = benchmark(model, formats=("keras", "onnx"), batch_sizes=(1, 4), seconds=0.05,
                       check=50, dataset=cifar)
    assert [(r["format"], r["precision"]) for r in report["rows"]] == [
        ("keras", "fp32"), ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "dynamic"), ("onnx", "int8")]
    for row in report["rows"]:
        assert row["status"] == "ok", row
        assert CELLS <= row.keys()
        assert set(row["latency_ms"]) == {"p50", "p90", "p99"}
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]
        assert set(row["throughput"]) == {"1", "4"} and min(row["throughput"].values()) > 0
        assert set(row["speedup"]) == {"1", "4"}
    keras_row = report["rows"][0]
    assert keras_row["speedup"] == {"1": 1.0, "4": 1.0}
    assert report["rows"][1]["accuracy"] == keras_row["accuracy"]  # fp32 ONNX = Keras
    assert report["machine"]["cores"] >= 1 and "numpy" in report["machine"]["versions"]
    assert (tmp_path / "export" / "model-int8.onnx").is_file()  # exported what was missing
    table = format_table(report)
    assert len(table.splitlines()) == 2 + 5 + 2 and "x Keras" in table
    assert table.splitlines()[-2].startswith("fastest: batch-1 p50 ONNX Runtime ")
    assert report["data"] == "CIFAR-10-JPEG" and "top-1 on 50 CIFAR-10-JPEG test images" in table


def test_repeat_measures_every_row_once_per_round_and_reports_the_median(exported, cifar,
                                                                          tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(exported["model-int8.onnx"], folder / "model-int8.onnx")
    lines = []
    report = benchmark(folder, formats=("onnx",), batch_sizes=(2,), seconds=0.02, check=20,
                       repeat=3, dataset=cifar, progress=lines.append)
    (row,) = [r for r in report["rows"] if r["status"] == "ok"]
    assert report["repeat"] == 3 and len(row["rounds"]) == 3
    assert row["throughput"]["2"] == np.median([r["throughput"]["2"] for r in row["rounds"]])
    assert row["latency_ms"]["p50"] == np.median([r["latency_ms"]["p50"] for r in row["rounds"]])
    assert [line.endswith(f"(round {i} of 3)") for i, line in enumerate(lines, 1)] == [True] * 3


def test_openvino_rows_run_the_onnx_files_in_their_own_process(exported, cifar, tmp_path):
    pytest.importorskip("openvino")
    from edgel2.backend import cpu_bfloat16

    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("model-int8.onnx", "model-fp32.onnx"):
        shutil.copy(exported[name], folder / name)
    report = benchmark(folder, formats=("onnx", "openvino"), batch_sizes=(1, 8), seconds=0.05,
                       check=100, dataset=cifar)
    rows = {(r["format"], r["precision"]): r for r in report["rows"]}
    bf16 = [("openvino", "bf16")] if cpu_bfloat16() else []  # on CPUs that compute it
    openvino = [("openvino", "fp32"), *bf16, ("openvino", "int8")]
    assert [k for k in rows if k[0] == "openvino"] == openvino
    for key in openvino:
        assert rows[key]["status"] == "ok" and CELLS <= rows[key].keys()
        assert rows[key]["file"] == rows["onnx", "int8" if key[1] == "int8" else "fp32"]["file"]
    # f32 inference precision: the fp32 file scores exactly what ONNX Runtime scores
    assert rows["openvino", "fp32"]["accuracy"] == rows["onnx", "fp32"]["accuracy"]
    assert abs(rows["openvino", "int8"]["accuracy"] - rows["onnx", "int8"]["accuracy"]) <= 0.03
    assert "fastest: batch-1 p50 " in format_table(report)


def test_the_chart_names_the_model_keeps_every_point_visible_and_an_honest_axis():
    from edgel2.benchmark import benchmark_figure

    def row(fmt, precision, p50, accuracy):
        return {"format": fmt, "precision": precision, "file": f"/x/resnet18-{precision}.onnx",
                "latency_ms": {"p50": p50}, "accuracy": accuracy}

    report = {"rows": [row("keras", "fp32", 12.0, 0.9258), row("onnx", "fp32", 6.9, 0.9258),
                       row("tflite", "fp32", 6.9, 0.9258), row("onnx", "int8", 1.9, 0.9255),
                       row("tflite", "int8", 1.75, 0.9264)],
              "source": "/x", "check_images": 10000, "data": "CIFAR-10-JPEG", "repeat": 7,
              "threads": 2, "machine": {"cpu": "Some CPU"}}
    (ax,) = benchmark_figure(report).axes
    assert ax.get_title() == ("resnet18: accuracy against batch-1 latency\n"
                              "Some CPU, 2 threads, median of 7 rounds")
    low, high = ax.get_ylim()
    assert high - low >= 2.0 and low < 92.55 and high > 92.64  # 0.1 point is not the whole axis
    sizes = [c.get_sizes()[0] for c in ax.collections]
    assert sizes[1] != sizes[2]  # ONNX Runtime and LiteRT fp32 at one spot: two rings
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.bbox.x1  # legend beside, not over, points


def test_engine_option_measures_one_engine_beside_keras(exported, data_dir, tmp_path):
    pytest.importorskip("openvino")
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(exported["model-int8.onnx"], folder / "model-int8.onnx")
    common = ["benchmark", str(folder), "--data", str(data_dir), "--check", "20", "--seconds",
              "0.02", "--batch-sizes", "1", "--out", str(tmp_path / "bench.json")]
    CliRunner().invoke(cli, common + ["--engine", "openvino"])
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["format"] for r in rows} == {"keras", "openvino"}
    assert [r["status"] for r in rows if r["precision"] == "int8"] == ["ok"]
    refused = CliRunner().invoke(cli, common + ["--engine", "litert", "--format", "onnx"])
    assert refused.exit_code == 2
    assert refused.stderr == "edgel2: error: --engine litert runs none of the formats asked for\n"


def test_from_another_directory_the_report_finds_its_model_and_missing_files_are_skipped(
        small_model, exported, data_dir, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "exp"
    (run / "export").mkdir(parents=True)
    shutil.copy(small_model, run / "model.keras")
    shutil.copy(exported["model-int8.onnx"], run / "export" / "model-int8.onnx")
    # a report as export wrote it before: the model relative to where export ran
    (run / "export" / "export_report.json").write_text(json.dumps(
        {"model": "runs/exp/model.keras", "out": "runs/exp/export", "rows": []}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    common = ["benchmark", "../runs/exp/export", "--data", str(data_dir), "--check", "20",
              "--seconds", "0.02", "--batch-sizes", "1", "--out", str(tmp_path / "bench.json")]
    result = CliRunner().invoke(cli, common + ["--format", "keras"])
    assert result.exit_code == 0, result.output
    (keras_row,) = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert keras_row["status"] == "ok" and keras_row["file"] == str(run / "model.keras")

    (run / "export" / "export_report.json").unlink()  # no model: its rows are skipped, listed
    result = CliRunner().invoke(cli, common + ["--format", "keras", "--format", "onnx"])
    assert result.exit_code == 0, result.output
    rows = {r["precision"] if r["format"] == "onnx" else "keras": r
            for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert rows["int8"]["status"] == "ok"
    assert {k: (r["status"], r["reason"]) for k, r in rows.items() if k != "int8"} == {
        "keras": ("skipped", "no .keras model to measure"), "fp32": ("skipped", "no such file"),
        "fp16": ("skipped", "no such file"), "dynamic": ("skipped", "no such file")}
    assert "skipped: no such file" in result.stdout


def test_check_0_measures_speed_only(exported, cifar, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(exported["model-int8.onnx"], folder / "model-int8.onnx")
    report = benchmark(folder, formats=("onnx",), batch_sizes=(2,), seconds=0.02, check=0,
                       dataset=cifar)
    (row,) = [r for r in report["rows"] if r["precision"] == "int8"]
    assert row["status"] == "ok" and row["accuracy"] is None and row["throughput"]["2"] > 0
    assert "ONNX Runtime  int8      " in format_table(report)


def _planted_always_class_zero(small_model, out):
    """An int8-named ONNX file that predicts class 0 for every image."""
    from edgel2.checkpoint import load_model
    from edgel2.export import export_model

    model = load_model(small_model)
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * 0, np.eye(len(bias))[0] * 100])
    planted = out / "planted" / "model.keras"
    planted.parent.mkdir()
    model.save(planted)
    export_model(planted, ["onnx"], ["fp32"], check=0, out=planted.parent)
    shutil.copy(planted.parent / "model-fp32.onnx", out / "model-int8.onnx")


def test_min_accuracy_fails_on_a_planted_low_accuracy_file(small_model, exported, data_dir,
                                                           tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(exported["model-fp32.onnx"], folder / "model-fp32.onnx")
    _planted_always_class_zero(small_model, folder)
    result = CliRunner().invoke(cli, [
        "benchmark", str(folder), "--data", str(data_dir), "--format", "onnx", "--check", "50",
        "--seconds", "0.05", "--batch-sizes", "1,2", "--min-accuracy", "0.11",
        "--out", str(tmp_path / "bench.json")])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["precision"]: r for r in report["rows"]}
    assert rows["int8"]["accuracy"] == 0.1  # 50 balanced images, all called class 0
    assert rows["int8"]["status"] == "low accuracy"
    assert rows["int8"]["reason"] == "top-1 10.00 % < --min-accuracy 11 %"
    assert rows["fp32"]["status"] == ("ok" if rows["fp32"]["accuracy"] >= 0.11 else "low accuracy")
    # files that are not there are rows with a reason, not gaps
    assert rows["fp16"]["status"] == "skipped" and rows["fp16"]["reason"] == "no such file"
    assert "int8: top-1 10.00 % < --min-accuracy 11 %" in result.stderr
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_script_attributes_the_int8_run_to_its_fused_integer_kernels(exported):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench" / "profile_onnx.py"
    spec = importlib.util.spec_from_file_location("profile_onnx", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    by_op, by_node = module.profile(str(exported["model-int8.onnx"]), batch=2, runs=3, threads=1)
    counts = {op: nodes for op, nodes, _ in by_op}
    assert counts["QLinearConv"] == 20  # every convolution of the ResNet-18, fused
    assert "Conv" not in counts and "ConvInteger" not in counts
    assert sum(nodes for _, nodes, _ in by_op) == len(by_node)
    assert [us for _, _, us in by_op] == sorted((us for _, _, us in by_op), reverse=True)


def test_a_flip_averaged_folder_is_filled_with_flip_averaged_files(small_model, cifar, tmp_path):
    from edgel2.benchmark.run import _export_missing, _made_as
    from edgel2.export import export_model
    from edgel2.runtime import read_metadata

    folder = tmp_path / "export-flip"
    export_model(small_model, ["onnx"], ["int8"], dataset=cifar, int8_images=64, check=0,
                 calibrate=False, flip_average=True, out=folder)
    assert _made_as(folder) == {"flip_average": True, "batch": None}

    _export_missing(small_model, folder, [("onnx", "fp32"), ("tflite", "int8")], cifar,
                    lambda _: None, flip_average=True)

    assert read_metadata(folder / "model-fp32.onnx")["flip_average"] is True
    assert not (folder / "model-int8.tflite").exists()  # no flip-averaged TFLite int8 exists


def test_unknown_cost_times_each_file_against_its_copy_without_the_score(exported, cifar,
                                                                         tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("model-int8.onnx", "model-fp32.tflite"):
        shutil.copy(exported[name], folder / name)
    lines = []
    report = benchmark(folder, formats=("onnx", "tflite"), batch_sizes=(1, 2), seconds=0.02,
                       check=20, repeat=2, dataset=cifar, unknown_cost=True,
                       progress=lines.append)
    measured = [r for r in report["rows"] if r["status"] == "ok"]
    assert [(r["format"], r["precision"]) for r in measured] == [("onnx", "int8"),
                                                                  ("tflite", "fp32")]
    for row in measured:
        bare = row["without_unknown"]
        assert set(bare) == {"latency_ms", "throughput"} and set(bare["throughput"]) == {"1", "2"}
        assert row["unknown_cost"] == {
            b: 1 - row["throughput"][b] / bare["throughput"][b] for b in ("1", "2")}
    assert len(lines) == 4  # each file once a round; its copy is measured in the same step
    costs = [line for line in format_table(report).splitlines()
             if line.startswith("unknown score: ")]
    assert [line.split(" costs ")[0] for line in costs] == [
        "unknown score: ONNX Runtime int8", "unknown score: LiteRT fp32"]


def test_an_unreadable_file_with_unknown_cost_is_a_failed_row_not_a_traceback(exported, cifar,
                                                                               tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    good = exported["model-int8.onnx"].read_bytes()
    (folder / "model-int8.onnx").write_bytes(good[:len(good) // 3])  # cut short
    report = benchmark(folder, formats=("onnx",), batch_sizes=(2,), seconds=0.02, check=20,
                       dataset=cifar, unknown_cost=True)
    (row,) = [r for r in report["rows"] if r["precision"] == "int8"]
    assert row["status"] == "failed"
    assert row["reason"].startswith("cannot read it to remove the unknown score: ")


def test_a_family_is_measured_in_the_same_rounds_and_drawn_against_latency_and_compute(
        exported, small_resnet20, cifar, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for source in (exported["model-int8.onnx"], small_resnet20["r20-int8.onnx"]):
        shutil.copy(source, folder / source.name)
    lines = []
    report = benchmark(folder, formats=("onnx",), batch_sizes=(1, 4), seconds=0.02, check=50,
                       repeat=2, dataset=cifar, progress=lines.append)
    assert [m["model"] for m in report["models"]] == ["model", "r20"]
    measured = [(r["model"], r["precision"]) for r in report["rows"] if r["status"] == "ok"]
    assert measured == [("model", "int8"), ("r20", "int8")]
    # interleaved: each round measures every model's file before the next round starts
    assert [line.split(" ")[0] for line in lines] == ["model", "r20", "model", "r20"]
    networks = {m["model"]: m["network"] for m in report["models"]}
    assert networks["model"]["architecture"] == "resnet18"
    assert networks["r20"]["multiply_adds"] == count_multiply_adds(resnet20(width=4))
    table = format_table(report)
    assert table.splitlines()[0].startswith("model ")
    # ratios are against the costliest model (at width 4 the ResNet-20, 2.6M multiply-adds,
    # against the ResNet-18's 2.2M)
    costly, cheap = sorted(networks, key=lambda m: -networks[m]["multiply_adds"])
    big, small = (next(r for r in report["rows"] if r["model"] == m and r["status"] == "ok")
                  for m in (costly, cheap))
    network = networks[cheap]
    family = [line for line in table.splitlines() if line.startswith(f"{cheap}: ")]
    assert family == [
        f"{cheap}: {network['architecture']}, {network['parameters'] / 1e6:.2f}M parameters, "
        f"{network['multiply_adds'] / 1e6:.1f}M multiply-adds per image; against {costly}: "
        f"ONNX Runtime int8 {small['throughput']['4'] / big['throughput']['4']:.2f}x b4 "
        f"throughput, {big['latency_ms']['p50'] / small['latency_ms']['p50']:.2f}x batch-1 speed"]
    from edgel2.benchmark import plot_report
    from edgel2.benchmark.report import family_figure

    figure = family_figure(report)
    by_time, by_compute = figure.axes
    assert len(by_time.collections) == len(by_compute.collections) == 2  # a point each
    assert by_compute.get_xlabel() == "multiply-adds per image (millions, log scale)"
    assert plot_report(report, tmp_path / "family.png").stat().st_size > 10_000


def test_a_family_of_models_of_different_image_sizes_is_refused_in_one_line(
        exported, small_resnet20, cifar, tmp_path):
    from edgel2.export import embed_metadata
    from edgel2.runtime.modelfile import read_metadata

    bigger = tmp_path / "big"
    bigger.mkdir()
    shutil.copy(small_resnet20["r20-int8.onnx"], bigger / "r20-int8.onnx")
    metadata = read_metadata(bigger / "r20-int8.onnx")
    metadata["input"]["shape"] = [None, 64, 64, 3]
    embed_metadata("onnx", bigger / "r20-int8.onnx", {"input": metadata["input"]}, update=True)
    with pytest.raises(EdgeL2Error) as raised:
        benchmark([exported["model-int8.onnx"].parent, bigger], formats=("onnx",),
                  batch_sizes=(2,), seconds=0.02, check=10, dataset=cifar)
    assert str(raised.value) == ("r20 takes 64x64 images and the first model 32x32: benchmark "
                                 "models of one image size together")
