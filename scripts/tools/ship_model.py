#!/usr/bin/env python3
"""Copy exported files into a models/ folder as edgel2 ships them: the same bytes and
metadata (accuracy, calibration, unknown thresholds, weights' checksum, as the export measured
them) but the run's data record, which names a folder on the exporting machine. Each file is
staged beside its destination and renamed into place, so a failure leaves the shipped file as
it was; a file it cannot read or write is one line on stderr, the others are still done, and
the exit status is 1.

    python scripts/tools/ship_model.py runs/small/resnet20-cycle2/export/resnet20-int8.onnx \\
        runs/small/resnet20-cycle2/export/resnet20-int8.tflite --to models/resnet20
    python scripts/tools/make_test_vectors.py     # then: the test vectors follow the new files
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# metadata that describes the exporting machine rather than the model
MACHINE_KEYS = ("data",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="exported .onnx or .tflite files")
    parser.add_argument("--to", type=Path, required=True, help="the models/ folder to copy into")
    args = parser.parse_args()

    from edgel2.errors import EdgeL2Error, first_line

    failed = 0
    for path in args.files:
        try:
            accuracy = ship(path, args.to / path.name)
        except (EdgeL2Error, OSError, ValueError) as e:
            print(f"{path}: not shipped: {first_line(e)}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path} -> {args.to / path.name}: accuracy {accuracy}")
    sys.exit(1 if failed else 0)


def ship(path: Path, destination: Path) -> dict:
    """Copy ``path`` to ``destination`` without :data:`MACHINE_KEYS` in its metadata. Returns
    the file's accuracy record."""
    from edgel2.export.exporter import embed_metadata
    from edgel2.runtime.modelfile import read_metadata, sniff_format
    from edgel2.utils import atomic_path

    metadata = read_metadata(path)
    if "accuracy" not in metadata:
        raise ValueError("no edgel2 accuracy record: export it with edgel2 export --check")
    with atomic_path(destination) as staged:
        shutil.copyfile(path, staged)
        embed_metadata(sniff_format(path), staged,
                       {k: v for k, v in metadata.items() if k not in MACHINE_KEYS})
    return metadata["accuracy"]


if __name__ == "__main__":
    main()
