#!/usr/bin/env python3
"""Bring int8 ONNX files exported with the full int8 weight range to 7-bit weights (what
``edgel2 export`` writes now; see ``edgel2.export.qdq.WEIGHT_QMAX``), so that ONNX Runtime and
OpenVINO compute them exactly on x86 CPUs without VNNI too. The file is rewritten in place,
its checksum renewed, and its ``accuracy`` metadata measured again when it has one
(``--data``, default ``$EDGEL2_DATA``). A file it cannot read or rewrite is one line on
stderr and is left as it was; the others are still done, and the exit status is 1.

    python scripts/tools/narrow_int8_weights.py models/resnet18-int8.onnx models/resnet20/resnet20-int8.onnx
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--data", default=os.environ.get("EDGEL2_DATA"))
    args = parser.parse_args()

    import onnx

    from edgel2.errors import EdgeL2Error, first_line

    failed = 0
    for path in args.files:
        try:
            proto = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 - a missing, unreadable or corrupt file: one line
            print(f"{path}: not an ONNX file this can read: {first_line(e)}", file=sys.stderr)
            failed += 1
            continue
        try:
            narrowed, accuracy = narrow_file(path, proto, args.data)
        except (EdgeL2Error, OSError) as e:  # e.g. no test split at --data, a read-only folder
            print(f"{path}: left as it was: {first_line(e)}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: {narrowed} weights requantized to 7 bits; accuracy {accuracy}")
    sys.exit(1 if failed else 0)


def narrow_file(path: Path, proto, data: str | None) -> tuple[int, str]:
    """Rewrite ``path`` (loaded as ``proto``) with 7-bit weights, or leave it untouched on
    failure. Returns the number of weights requantized and the accuracy metadata written."""
    import onnx

    from edgel2.export.onnx import set_metadata
    from edgel2.export.qdq import narrow_weights

    narrowed = narrow_weights(proto)
    metadata = {p.key: p.value for p in proto.metadata_props}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name          # nothing half-written on failure
        onnx.save(proto, str(staged))
        set_metadata(staged, metadata)          # the new weights' checksum: the runtime opens it
        if "accuracy" in metadata and data:
            metadata["accuracy"] = json.dumps(measured(staged, json.loads(metadata["accuracy"]),
                                                       data))
            set_metadata(staged, {"accuracy": metadata["accuracy"]}, keep_others=True)
        staged.replace(path)
    return narrowed, metadata.get("accuracy", "not recorded")


def measured(path: Path, accuracy: dict, data: str) -> dict:
    """``accuracy`` with its top-1 measured again on the test split, on ONNX Runtime."""
    from edgel2.data import load_dataset
    from edgel2.evaluate import evaluate_file

    dataset = load_dataset(data)
    report = evaluate_file(path, dataset, engine="onnxruntime")
    return {**accuracy, "top1": round(report["accuracy"], 4), "images": len(dataset.y_test)}


if __name__ == "__main__":
    main()
