"""A run directory: its name, the files a run writes into it, what a killed run leaves, and
the config a run recorded (what ``edgel2 train --resume`` reads)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from edgel2.config import NAME_PATTERN, TrainConfig
from edgel2.errors import OptionError, TrainingError
from edgel2.utils import writable_folder


def default_name(run_dir: Path) -> str:
    """The run directory's name, with what a file name or URL cannot hold as ``-``.

    Examples:
        >>> default_name(Path("runs/my photos (2)"))
        'my-photos-2'
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.resolve().name).strip("-._")[:100]
    return name if NAME_PATTERN.fullmatch(name) else "run"


def finished(run_dir: Path) -> bool:
    """Whether the run wrote its final model and summary."""
    return (run_dir / "model.keras").is_file() and (run_dir / "summary.json").is_file()


# What a run writes into its directory (each through utils.atomic_path)
RUN_FILES = ("config.json", "metrics.csv", "curves.png", "last.keras", "best.keras",
             "model.keras", "summary.json")


def remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files a killed write of a run file leaves
    (``.last.tmp123.keras``, see :func:`~edgel2.utils.atomic_path`): they are never read, and
    they would make a fresh folder look used. Nothing else is touched."""
    if run_dir.is_dir():
        for name in map(Path, RUN_FILES):
            for leftover in run_dir.glob(f".{name.stem}.tmp*{name.suffix}"):
                leftover.unlink(missing_ok=True)


def make_run_dir(run_dir: Path) -> Path | None:
    """Create the run directory before any data is loaded, so an unwritable place is one
    line at once. Returns the outermost folder created (None: it was there, empty)."""
    return writable_folder(run_dir, "the run directory", TrainingError)


def saved_config(run_dir: Path) -> tuple[TrainConfig, str]:
    """The config and name a run directory's ``config.json`` recorded, for ``--resume``."""
    try:
        described = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot resume {run_dir}: no readable config.json there "
                            f"({getattr(e, 'strerror', None) or e})") from None
    try:
        config = TrainConfig.from_saved(described["config"])
        config.validate()
    except (OptionError, KeyError, TypeError) as e:
        raise TrainingError(f"cannot resume {run_dir}: its config.json is not usable ({e})") from None
    name = described.get("name")
    return config, name if isinstance(name, str) and name else default_name(run_dir)
