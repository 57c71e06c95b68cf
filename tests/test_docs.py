"""The documentation: the site builds with every warning an error, its reference covers every
command-line option and metadata key, the commands the guides show use options that exist,
the README is a front door, and no tracked file speaks of how the project was built."""
from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from edgel2.cli import cli
from edgel2.cli.base import RENAMED_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built strict (a broken link, a missing page or a stale API reference fails)."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is missing in CI (the [docs] extra, which [dev] holds)")
        pytest.skip("mkdocs is not installed: pip install -e \".[docs]\"")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    # not --quiet: it hides the warnings that --strict counts
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def page_text(site: Path, page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", (site / page / "index.html").read_text()))


def test_the_site_builds_strict_with_every_page_in_its_navigation(site):
    for page in ("reference/cli", "reference/python", "reference/files", "guides/own-photos",
                 "measurements", "models", "contributing", "changelog"):
        assert (site / page / "index.html").is_file(), page


def test_every_option_of_every_command_is_in_the_generated_cli_reference(site):
    text = page_text(site, "reference/cli")
    missing = [f"{name} {opt}" for name, command in cli.commands.items()
               for param in command.params if isinstance(param, click.Option)
               for opt in param.opts if opt.startswith("--") and opt not in text]
    assert missing == []
    assert all(f"edgel2 {name}" in text for name in cli.commands)
    assert "Sentinel" not in text  # click's "no default" marker is not shown as a default


def test_the_python_reference_renders_the_public_api_from_its_docstrings(site):
    text = page_text(site, "reference/python")
    for name in ("Classifier", "export_model", "ExportConfig", "train", "TrainConfig",
                 "open_engine", "classify_on_ray", "create_app", "benchmark"):
        assert re.search(rf"\b{name}\b", text), name
    assert "Parameters:" in text or "PARAMETER" in text.upper()  # the Args: sections, as a table
    assert not re.search(r":(?:func|meth|class|mod|data):", text)  # Sphinx roles shown as code


def _shown_commands() -> list[tuple[str, str, str]]:
    """(page, command, its text) for every `edgel2 COMMAND ...` line in a shell block of the
    guides, the README and CONTRIBUTING.md."""
    shown = []
    for path in [*DOC_PAGES, ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "models/README.md"]:
        in_block = False
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_block = line.strip() in ("```bash", "```sh", "```console")
                continue
            match = re.match(r"\s*(?:\$ )?edgel2 ([a-z]+)(.*)", line) if in_block else None
            if match and match.group(1) in cli.commands:
                shown.append((path.relative_to(ROOT).as_posix(), match.group(1), match.group(2)))
    return shown


def test_the_commands_the_documentation_shows_use_options_that_exist():
    shown = _shown_commands()
    assert len(shown) > 40  # the guides are full of commands; a parser that finds none is broken
    unknown = []
    for page, name, rest in shown:
        command = cli.commands[name]
        known = {o for p in command.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        known |= {"--help", "-h"} | set(RENAMED_OPTIONS.get(name, {}))
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b", rest.split("#")[0]):
            if flag not in known:
                unknown.append(f"{page}: edgel2 {name} {flag}")
    assert unknown == []


def test_the_readme_is_a_front_door():
    """At most 250 lines, and a new user finds fine-tuning on their own photos on the first
    screen (the first 30 lines)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:30])
    assert "edgel2 train --data photos/ --pretrained" in first_screen
    assert "source .venv/bin/activate" in "\n".join(lines)


def test_every_metadata_key_of_the_shipped_files_is_documented():
    from edgel2.runtime import read_metadata, shipped_model

    files_page = (ROOT / "docs/reference/files.md").read_text()
    for name in ("resnet18-int8.onnx", "resnet18-int8.tflite"):
        keys = set(read_metadata(shipped_model(name)))
        assert keys and {k for k in keys if f"`{k}`" not in files_page} == set(), name


# Words that speak of how the project was made rather than of the product. ONNX Runtime's
# "session" (an InferenceSession) is the product's word and is allowed.
PROCESS_WORDS = [
    r"\b(?:earlier|previous|next|later|this|that|a|each|GPU|lent|build|building) sessions?\b"
    r"(?! (?:really|uses|fell|options|runs))",
    r"\bsessions? (?:that built|ran on|of work)",
    r"\bissues? #?\d+\b", r"\bthe issue'?s?\b", r"\bfiled\b",
    r"\blent\b", r"\bdevice tool\b", r"DEVICE\.md", r"\bworkplace\b", r"closing note",
    r"\bI (?:would|ship|think|measured|chose|ran|did|found|tried|made)\b",
    r"(?<![\w`'\"])(?:we|We|our|Our)\b(?![\w`'\"])",
]
# Files whose words are not ours (licences, generated code) or are this list itself.
NOT_OURS = {"LICENSE", "edgel2/export/vendor/LICENSE", "edgel2/export/vendor/tflite_metadata_schema.py",
            "tests/test_docs.py"}
TEXT_SUFFIXES = {".md", ".py", ".sh", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".json", ""}


def test_no_tracked_file_speaks_of_how_the_project_was_built():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    pattern = re.compile("|".join(PROCESS_WORDS))
    found = []
    for name in tracked.stdout.splitlines():
        path = ROOT / name
        if name in NOT_OURS or path.suffix not in TEXT_SUFFIXES or not path.is_file() \
                or path.is_symlink() or name.startswith("models/test-vectors"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = pattern.search(line)
            if match:
                found.append(f"{name}:{number}: {match.group(0)!r} in {line.strip()[:100]}")
    assert found == []
