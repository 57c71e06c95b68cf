"""Classify images with an edgel2 int8 .tflite file through MediaPipe Tasks' ImageClassifier,
the API Android, iOS and the web share: MediaPipe reads the class names and the unknown
threshold from the file's TFLite Support metadata and runs the model; edgel2's image policy
(``edgel2.runtime.load_image``: EXIF orientation, alpha over white, Pillow's bilinear resize,
width then height) gives it the pixels the model expects, and the file's calibration turns
MediaPipe's scores (the logits) into probabilities.

    python classify.py [--model FILE.tflite] IMAGE...

One JSON line per image: {"path", "label", "probabilities" (in the model's class order),
"unknown"}. A bad model or image is one line on stderr and exit 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "resnet18-int8.tflite"


def load_classifier(path: Path):
    """MediaPipe's ImageClassifier on ``path``, every class in every result, and the file's
    edgel2 metadata (input size and calibration)."""
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    from edgel2.runtime import read_metadata

    metadata = read_metadata(path)
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                     max_results=-1)
    return ImageClassifier.create_from_options(options), metadata


def classify(classifier, metadata: dict, path: str) -> dict:
    """One image's answer, as the Python runtime gives it."""
    import mediapipe as mp

    from edgel2.calibration.apply import calibrated_probabilities
    from edgel2.runtime import load_image

    _, height, width, _ = metadata["input"]["shape"]
    pixels = np.ascontiguousarray(load_image(path, (width, height)))
    result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
    heads = {head.head_name: head for head in result.classifications}
    # MediaPipe reports every class of the logits head (its scores are the logits) and the
    # unknown head's one category only when the score is over the file's threshold.
    logits = np.zeros(len(metadata["class_names"]), np.float32)
    for category in heads["logits"].categories:
        logits[category.index] = category.score
    p = calibrated_probabilities(logits[None], metadata.get("temperature", 1.0),
                                 metadata.get("unsmooth", 0.0))[0]
    answer = {"path": path, "label": metadata["class_names"][int(p.argmax())],
              "probabilities": p.tolist()}
    if "unknown_score" in heads:
        answer["unknown"] = bool(heads["unknown_score"].categories)
    return answer


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    args = parser.parse_args(argv)
    try:
        classifier, metadata = load_classifier(args.model)
    except Exception as e:  # noqa: BLE001 - one line, whatever MediaPipe raised
        print(f"edgel2-mediapipe: error: cannot load {args.model}: {str(e).splitlines()[0]}",
              file=sys.stderr)
        return 1
    failed = 0
    with classifier:
        for path in args.images:
            try:
                print(json.dumps(classify(classifier, metadata, path)), flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"edgel2-mediapipe: error: {path}: {str(e).splitlines()[0]}",
                      file=sys.stderr)
                failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
