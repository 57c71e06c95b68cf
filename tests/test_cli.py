"""The command line: bad input gets one clear line and a documented exit code, no traceback."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgel2.cli import cli


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize("args, message", [
    (["--feature-l2", "-1"], "Invalid value for '--feature-l2': -1.0 is not in the range x>=0"),
    (["--weight-l2", "-0.1"], "Invalid value for '--weight-l2'"),
    (["--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range x>=1"),
    (["--backend", "torch"], "Invalid value for '--backend': 'torch' is not one of"),
    (["--width", "0"], "Invalid value for '--width': 0 is not in the range x>=1"),
    (["--ema", "1"], "Invalid value for '--ema': 1.0 is not in the range 0<=x<1"),
    (["--cutout", "-2"], "Invalid value for '--cutout': -2 is not in the range x>=0"),
    (["--no-such-option"], "No such option '--no-such-option'"),
    (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295"),
    (["--momentum", "nan"], "momentum must be a finite number, got nan"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--weight-l2", "inf"], "weight l2 must be a finite number, got inf"),
    (["--outliers", "1.5"], "Invalid value for '--outliers': 1.5 is not in the range 0<=x<=1"),
    (["--logit-norm", "-0.04"], "Invalid value for '--logit-norm'"),
    (["--val-split", "1"], "Invalid value for '--val-split': 1.0 is not in the range 0<=x<1"),
])
def test_bad_train_options_exit_2_with_one_line(args, message):
    result = _run("train", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("edgel2: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_missing_data_path_exits_1_with_one_line(tmp_path):
    result = _run("train", "--data", str(tmp_path / "nowhere"), "--width", "4", "--epochs", "1")
    assert result.exit_code == 1
    assert result.stderr == f"edgel2: error: data path does not exist: {tmp_path / 'nowhere'}\n"


@pytest.mark.parametrize("content, message", [
    (None, "model file does not exist"),
    (b"not a zip", "not a Keras model file"),
])
def test_eval_of_a_missing_or_corrupt_model_exits_1(tmp_path, content, message):
    model = tmp_path / "model.keras"
    if content is not None:
        model.write_bytes(content)
    result = _run("eval", str(model))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"edgel2: error: {message}") and result.stderr.count("\n") == 1


def test_help_lists_the_commands_and_documents_the_l2_defaults():
    assert _run("--help").exit_code == 0
    help_text = " ".join(_run("train", "--help").output.split())  # undo line wrapping
    assert "--weight-l2" in help_text and "2.5e-4 equals SGD weight decay 5e-4" in help_text
    assert "--feature-l2" in help_text and "[default: 0.0001" in help_text


@pytest.mark.parametrize("args, formats, precisions", [
    (["--format", "onnx,tflite", "--precision", "fp32,int8"], ["onnx", "tflite"], ["fp32", "int8"]),
    (["--format", "onnx", "--format", "tflite", "--precision", "int8"], ["onnx", "tflite"], ["int8"]),
    (["--format", "tflite,onnx", "--format", "onnx"], ["tflite", "onnx"], ["fp32"]),
    ([], ["onnx"], ["fp32"]),
    # full precision has one name; the older spelling 'none' is read as it
    (["--precision", "none", "--precision", "fp32,int8"], ["onnx"], ["fp32", "int8"]),
])
def test_list_options_take_commas_and_repetition_alike(monkeypatch, tmp_path, args, formats,
                                                       precisions):
    import edgel2.export

    seen = {}

    def fake_export(model, config, **kwargs):
        seen.update(formats=list(config.formats), precisions=list(config.precisions))
        return {"rows": [], "out": str(tmp_path), "keras_accuracy": None}

    monkeypatch.setattr(edgel2.export, "export_model", fake_export)
    monkeypatch.setattr(edgel2.cli.export, "use_backend", lambda backend: None)
    result = CliRunner().invoke(cli, ["export", "m.keras", *args])
    assert result.exit_code == 0, result.output
    assert seen == {"formats": formats, "precisions": precisions}


def test_an_unknown_name_in_a_list_option_is_one_line_and_exit_2():
    result = CliRunner().invoke(cli, ["benchmark", "x.keras", "--format", "onnx,coreml"])
    assert result.exit_code == 2
    assert result.stderr == ("edgel2: error: Invalid value for '--format': 'coreml' is not one "
                             "of keras, onnx, tflite, openvino\n")


def test_an_older_spelling_of_an_option_works_with_a_one_line_note():
    result = CliRunner().invoke(cli, ["benchmark", "x.keras", "--formats", "coreml"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == ("edgel2: note: benchmark --formats is now --format; "
                                             "the old spelling still works for now")


def test_the_quick_start_in_help_is_what_quickstart_sh_runs():
    """One source for the quick start: each command `edgel2 --help` shows is a line of
    scripts/quickstart.sh with its defaults filled in (the script's run directory, images)."""
    import re
    from pathlib import Path

    script = (Path(__file__).resolve().parent.parent / "scripts" / "quickstart.sh").read_text()
    script = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", script)            # ${EPOCHS:-4} -> 4
    script = script.replace('"$run"', "runs/train/quickstart").replace("$run", "runs/train/quickstart")
    script = re.sub(r"\\\n\s*", "", script).replace('"', "")          # join continued lines
    shown = re.sub(r"\\\n\s*", "", CliRunner().invoke(cli, ["--help"]).output)  # joined too
    quick_start = shown.split("Quick start on a CPU")[1]
    commands = [line.strip() for line in quick_start.splitlines()
                if line.strip().startswith("edgel2 ")]
    assert len(commands) == 5
    for command in commands:
        tail = command.split("photos/ ")[-1]  # the script infers on test images, not photos/
        assert tail in script, command


def test_train_into_a_place_that_cannot_be_a_folder_is_one_line_before_the_data_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _run("train", "--out", str(blocker / "run"), "--data", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert result.stderr == (f"edgel2: error: cannot create the run directory {blocker / 'run'}: "
                             "Not a directory\n")


def test_resume_of_a_folder_that_holds_no_run_is_one_line(tmp_path):
    result = _run("train", "--resume", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (f"edgel2: error: cannot resume {tmp_path}: no readable config.json "
                             "there (No such file or directory)\n")
