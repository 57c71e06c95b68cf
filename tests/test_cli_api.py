"""Whatever the CLI does, the Python API does with the same defaults: each command, run with
no options, calls its library function with exactly that function's own defaults (the CLI
reads them from one place; it adds none of its own). The library functions are replaced by
recorders here, so nothing is trained, exported or served."""
from __future__ import annotations

import inspect

import pytest
from click.testing import CliRunner

from edgel2.cli import cli
from edgel2.cli import export as export_command
from edgel2.cli import train as train_command


class Called(Exception):
    """Raised by a recorder: the command got as far as its library call."""


def recorder(calls: list):
    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise Called
    return record


def defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def run(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, Called), result.output


# Progress callbacks: the CLI draws bars where the library draws nothing.
HOOKS = {"progress", "check_progress", "on_batch"}


def same_as_defaults(function, kwargs: dict, differ: dict | None = None) -> None:
    """Every keyword the CLI passed, progress hooks aside, equals the function's default,
    except those in ``differ`` (documented), which must equal the value given there."""
    expected = {**defaults(function), **(differ or {})}
    passed = {k: v for k, v in kwargs.items() if k in expected and k not in HOOKS}
    assert passed, "the CLI passed none of the function's keywords"

    def plain(value):  # a tuple default and the list the CLI parsed are the same choice
        return list(value) if isinstance(value, tuple) else value

    assert {k: plain(v) for k, v in passed.items()} == {k: plain(expected[k]) for k in passed}


def test_train_builds_the_library_default_config_or_the_fine_tuning_recipe(monkeypatch):
    import edgel2.train
    from edgel2.config import TrainConfig

    calls: list = []
    library = edgel2.train.train
    monkeypatch.setattr(train_command, "use_backend", lambda backend: None)
    monkeypatch.setattr(edgel2.train, "train", recorder(calls))
    run(["train"])
    run(["train", "--pretrained"])
    assert [args[0] for args, _ in calls] == [TrainConfig(), TrainConfig.finetune()]
    same_as_defaults(library, calls[0][1])


def test_export_builds_the_default_export_config(monkeypatch):
    import edgel2.export
    from edgel2.export import ExportConfig

    calls: list = []
    monkeypatch.setattr(export_command, "use_backend", lambda backend: None)
    monkeypatch.setattr(edgel2.export, "export_model", recorder(calls))
    run(["export", "m.keras"])
    (args, kwargs), = calls
    assert args == ("m.keras",) and kwargs["config"] == ExportConfig()
    assert set(kwargs) == {"config"} | HOOKS - {"on_batch"}


def test_eval_and_calibrate_pass_their_functions_defaults(monkeypatch):
    import edgel2.calibration.files
    import edgel2.evaluate

    calls: list = []
    evaluate_path, calibrate_file = (edgel2.evaluate.evaluate_path,
                                     edgel2.calibration.files.calibrate_file)
    monkeypatch.setattr(edgel2.evaluate, "evaluate_path", recorder(calls))
    run(["eval", "m.keras"])
    same_as_defaults(evaluate_path, calls[-1][1])
    monkeypatch.setattr(edgel2.calibration.files, "calibrate_file", recorder(calls))
    run(["calibrate", "m.onnx"])
    # the CLI draws the reliability diagram beside the file unless told where
    assert calls[-1][1]["plot"].name == "m-onnx-reliability.png"
    same_as_defaults(calibrate_file, calls[-1][1], differ={"plot": calls[-1][1]["plot"]})


def test_benchmark_passes_benchmarks_defaults(monkeypatch):
    import edgel2.benchmark

    calls: list = []
    library = edgel2.benchmark.benchmark
    monkeypatch.setattr(edgel2.benchmark, "benchmark", recorder(calls))
    run(["benchmark", "export/"])
    same_as_defaults(library, calls[0][1])


def test_infer_opens_the_classifier_with_its_defaults_for_a_batch_job(monkeypatch, tmp_path):
    import edgel2.runtime

    calls: list = []
    library = edgel2.runtime.Classifier.__init__
    monkeypatch.setattr(edgel2.runtime, "Classifier", recorder(calls))
    run(["infer", str(tmp_path)])
    (args, kwargs), = calls
    assert args == (None,)  # the shipped pair
    same_as_defaults(library, kwargs,
                     differ={"workload": "throughput"})  # a folder of files: a batch job


def test_serve_builds_the_default_serve_config(monkeypatch):
    import edgel2.serve
    from edgel2.serve import ServeConfig

    pytest.importorskip("starlette")
    calls: list = []
    monkeypatch.setattr(edgel2.serve, "open_model", recorder(calls))
    run(["serve"])
    assert calls[0][0] == (ServeConfig(),)


def test_the_older_int8_option_spellings_reach_the_renamed_arguments(monkeypatch):
    """--calib and --calib-method (int8's representative images, not probability
    calibration) are now --int8-images and --int8-method; the old spellings still work."""
    import edgel2.export

    calls: list = []
    monkeypatch.setattr(export_command, "use_backend", lambda backend: None)
    monkeypatch.setattr(edgel2.export, "export_model", recorder(calls))
    result = CliRunner().invoke(cli, ["export", "m.keras", "--calib", "64",
                                      "--calib-method", "entropy"])
    assert isinstance(result.exception, Called), result.output
    config = calls[0][1]["config"]
    assert (config.int8_images, config.int8_method) == (64, "entropy")
    assert result.stderr.splitlines() == [
        "edgel2: note: export --calib is now --int8-images; the old spelling still works for now",
        "edgel2: note: export --calib-method is now --int8-method; the old spelling still works "
        "for now"]
