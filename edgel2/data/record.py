"""What a model remembers of its data (its run's ``config.json``, an exported file's
metadata), and loading that data again, split the way the run split it."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgel2.data.dataset import DEFAULT_TEST_SPLIT, Dataset, carve
from edgel2.data.sources import load_dataset_for
from edgel2.errors import DataError
from edgel2.utils import run_config

KERAS_CIFAR10_SOURCE = "keras.datasets.cifar10"  # what runs that downloaded CIFAR-10 recorded


@dataclass(frozen=True)
class DataRecord:
    """The data a model was trained on, as its run recorded it: where it is and how the run
    split it (the test fraction of a bare class folder, the validation fraction held out of
    the training images after ``subset``, and the seed of both).

    Examples:
        >>> DataRecord("/data/photos", "photos", val_split=0.2).as_metadata()["val_split"]
        0.2
    """

    source: str
    name: str
    test_split: float = DEFAULT_TEST_SPLIT
    val_split: float = 0.0
    subset: int | None = None
    seed: int = 0
    recorded_in: str = ""   # the file that holds the record, for messages

    def as_metadata(self) -> dict:
        """The record as an exported file's ``data`` metadata entry."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "recorded_in"}

    @classmethod
    def from_run(cls, described: dict, recorded_in: str = "") -> DataRecord | None:
        """The record in a run's ``config.json`` (None when it has none)."""
        data, config = described.get("data"), described.get("config") or {}
        if not isinstance(data, dict) or not isinstance(data.get("source"), str) \
                or not data["source"]:
            return None
        return cls(data["source"], str(data.get("name") or Path(data["source"]).name),
                   **_split_fields(config), recorded_in=recorded_in)

    @classmethod
    def from_metadata(cls, entry, recorded_in: str = "") -> DataRecord | None:
        """The record in an exported file's ``data`` metadata entry (None when unusable)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) \
                or not entry["source"]:
            return None
        return cls(entry["source"], str(entry.get("name") or ""), **_split_fields(entry),
                   recorded_in=recorded_in)


def _split_fields(entry: dict) -> dict:
    """The split fields of a record, each only when it has the right type."""
    fields: dict = {}
    for key, kinds in (("test_split", (int, float)), ("val_split", (int, float)),
                       ("subset", (int,)), ("seed", (int,))):
        value = entry.get(key)
        if isinstance(value, kinds) and not isinstance(value, bool):
            fields[key] = value
    return fields


def data_record(model_path: str | os.PathLike) -> DataRecord | None:
    """What ``model_path`` remembers of its data: for a ``.keras`` file, its run's
    ``config.json``; for an exported file, the ``data`` entry of its metadata, else the run
    that the ``export_report.json`` beside it names. None when nothing is recorded (the
    shipped models, files from elsewhere).

    Examples:
        >>> data_record("runs/train/photos/model.keras").source     # doctest: +SKIP
        '/home/me/photos'
    """
    path = Path(model_path)
    if path.suffix.lower() == ".keras":
        return _run_record(path)
    from edgel2.errors import ModelError
    from edgel2.runtime.modelfile import read_metadata

    try:
        record = DataRecord.from_metadata(read_metadata(path).get("data"), f"{path.name}'s metadata")
    except ModelError:
        record = None  # the command that opens the model says what is wrong with it
    if record is not None:
        return record
    report = path.parent / "export_report.json"
    try:
        stored = json.loads(report.read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(stored, str) or not stored:
        return None
    return _run_record(report.parent / stored)


def _run_record(model_path: Path) -> DataRecord | None:
    """The record in the ``config.json`` of the run ``model_path`` belongs to."""
    return DataRecord.from_run(run_config(model_path), str(model_path.parent / "config.json"))


def load_model_data(model_path: str | os.PathLike, size: tuple[int, int], *,
                    data: str | os.PathLike | None = None, test_split: float | None = None,
                    image_size: int | None = None) -> Dataset:
    """The labelled images to evaluate, export, calibrate or benchmark a model on.

    Recorded data that is no longer there is a :class:`DataError` naming ``data``, never a
    silent fall-back to CIFAR-10.

    Args:
        model_path: A ``.keras`` model or an exported file.
        size: The model's input size (height, width).
        data: The data to use; None for the data the model's run recorded
            (:func:`data_record`), split as the run split it (its validation split too), else
            :func:`default_cifar10`.
        test_split: The test fraction of a folder of bare class subfolders; None: as recorded.
        image_size: Resize the images to this side.

    Returns:
        The :class:`Dataset`, at ``size``.

    Examples:
        >>> ds = load_model_data("runs/train/photos/model.keras", (32, 32))   # doctest: +SKIP
        >>> ds.name, ds.x_val is not None                                     # doctest: +SKIP
        ('photos', True)
    """
    record = None if data else data_record(model_path)
    if record is None or record.source == KERAS_CIFAR10_SOURCE:
        split = DEFAULT_TEST_SPLIT if test_split is None else test_split
        return load_dataset_for(data, size, test_split=split, image_size=image_size)
    if not Path(record.source).exists():
        raise DataError(f"the data {Path(model_path).name} was trained on is gone: "
                        f"{record.source} (recorded in {record.recorded_in}); pass `data` PATH")
    ds = load_dataset_for(record.source, size, image_size=image_size, seed=record.seed,
                          test_split=record.test_split if test_split is None else test_split)
    return carve(ds, subset=record.subset, val_split=record.val_split, seed=record.seed)


