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
    result = subprocess.run(tool("ruff") + ["check", "--no-cache", "edgel2", "tests", "scripts"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    result = subprocess.run(tool("mypy") + ["--no-incremental"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
