"""The code is held to a linter and a type checker, configured in pyproject.toml: a finding
fails the test command, as in CI. Both come with the [dev] extra."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str) -> list[str]:
    """How to run ``name`` from this interpreter's environment (a CI run must have it)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return [found]


def test_ruff_finds_nothing():
    result = subprocess.run(tool("ruff") + ["check", "--no-cache", "edgel2", "tests", "scripts",
                                           "examples"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    result = subprocess.run(tool("mypy") + ["--no-incremental"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The public API: what the documentation's reference renders and apps call. Every function
# and class here says what each argument is, what comes back, and shows a call.
PUBLIC_MODULES = ["edgel2.runtime", "edgel2.export", "edgel2.train", "edgel2.serve"]
PUBLIC_FUNCTIONS = [
    "edgel2.evaluate:evaluate_path", "edgel2.evaluate:evaluate_file", "edgel2.evaluate:evaluate",
    "edgel2.benchmark:benchmark", "edgel2.benchmark:format_table", "edgel2.benchmark:plot_report",
    "edgel2.calibration:calibrate_file", "edgel2.cluster:classify_on_ray",
    "edgel2.model:resnet18", "edgel2.model:feature_extractor", "edgel2.model:flip_averaged",
    "edgel2.data:load_dataset", "edgel2.data:load_model_data", "edgel2.config:TrainConfig",
]


def _public_api():
    import importlib

    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield f"{module_name}:{name}", getattr(module, name)
    for dotted in PUBLIC_FUNCTIONS:
        module_name, _, name = dotted.partition(":")
        yield dotted, getattr(importlib.import_module(module_name), name)


def _missing_sections(obj) -> list[str]:
    import dataclasses
    import inspect

    doc = inspect.getdoc(obj) or ""
    missing = [] if "Example" in doc else ["Example"]
    if inspect.isclass(obj):
        if not dataclasses.is_dataclass(obj):  # a dataclass's fields say what they are
            params = [p for p in inspect.signature(obj).parameters if p not in ("args", "kwargs")]
            if params and "Args:" not in doc:
                missing.append("Args")
        return missing
    signature = inspect.signature(obj)
    if [p for p in signature.parameters if p not in ("args", "kwargs")] and "Args:" not in doc:
        missing.append("Args")
    if signature.return_annotation not in ("None", None) and "Returns:" not in doc:
        missing.append("Returns")
    return missing


def test_the_public_api_has_google_style_docstrings():
    """Args:, Returns: and an example on every public function and class (exceptions, the
    error family, and constants aside), as the reference renders them."""
    import inspect

    gaps = {}
    for name, obj in _public_api():
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # a constant
        if inspect.isclass(obj) and issubclass(obj, (Exception, Warning)):
            continue  # the error family is documented in one place
        missing = _missing_sections(obj)
        if missing:
            gaps[name] = missing
    assert gaps == {}
