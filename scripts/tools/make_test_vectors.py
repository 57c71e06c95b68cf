#!/usr/bin/env python3
"""Write ``models/test-vectors.json``: a few CIFAR-10-JPEG test images (their JPEG bytes and
the uint8 pixels Pillow decodes from them) and what each shipped file answers for them (raw
logits on its reference engine, calibrated probabilities, top-1, and the unknown score and
verdict when the file has them), so that a port in another
language checks its decoding and its model call against known numbers.

    python scripts/tools/make_test_vectors.py            # after the shipped models change

``tests/test_models.py`` checks that the shipped files still give these numbers.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout: models/ is written

# every shipped file, by its path in models/
FILES = ("resnet18-int8.onnx", "resnet18-int8.tflite",
         "resnet20/resnet20-int8.onnx", "resnet20/resnet20-int8.tflite")
PER_CLASS = 1  # the first test image of each class: 10 images, about 160 KB of JSON
# and one image of none of the classes, which the files' unknown score flags: seeded uniform
# noise, saved as a JPEG like the others
NOISE_NAME, NOISE_SEED = "unknown/noise.jpg", 0


def noise_jpeg() -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(NOISE_SEED).integers(0, 256, (32, 32, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def main() -> None:
    from edgel2.data import load_dataset
    from edgel2.runtime import Classifier, load_image
    from edgel2.runtime.formats import REFERENCE_ENGINE
    from edgel2.runtime.modelfile import sniff_format

    test_dir = Path(load_dataset().source) / "test"
    picked = [sorted((test_dir / c).glob("*.jpg"))[0]
              for c in sorted(p.name for p in test_dir.iterdir())][: 10 * PER_CLASS]
    jpegs = [p.read_bytes() for p in picked] + [noise_jpeg()]
    names = [(f"{p.parent.name}/{p.name}", p.parent.name) for p in picked] + [(NOISE_NAME, None)]
    pixels = np.stack([load_image(j, (32, 32)) for j in jpegs])
    vectors = {
        "about": "edgel2 test vectors: images as JPEG (base64) and as the uint8 HWC RGB pixels "
                 "Pillow decodes from them; per shipped file, its raw logits on its reference "
                 "engine, the calibrated probabilities, the top-1 label and, for a file with "
                 "the unknown score, the score (output unknown_score), the file's threshold and "
                 "whether each image is over it (the last image, uniform noise with label null, "
                 "is). Made by "
                 "scripts/tools/make_test_vectors.py; README, 'Test vectors for ports'.",
        "images": [{"name": name, "label": label,
                    "jpeg_base64": base64.b64encode(j).decode(), "pixels": x.ravel().tolist()}
                   for (name, label), j, x in zip(names, jpegs, pixels)],
        "files": {},
    }
    for name in FILES:
        path = ROOT / "models" / name
        classifier = Classifier(path, engine=REFERENCE_ENGINE[sniff_format(path)])
        outputs = classifier.engine.run(pixels)
        probabilities, scores = classifier.split(outputs, len(pixels))
        logits = outputs[:, :len(classifier.class_names)]
        unknown = {} if not classifier.engine.with_unknown else {
            "unknown_threshold": classifier.unknown_threshold,
            "unknown_score": np.round(scores.astype(np.float64), 6).tolist(),
            "unknown": [classifier.verdict(float(s))[1] for s in scores]}
        vectors["files"][name] = {
            "engine": classifier.engine.name, "temperature": classifier.temperature,
            "unsmooth": classifier.unsmooth,
            "logits": np.round(logits, 6).tolist(),
            "probabilities": np.round(probabilities, 6).tolist(),
            "top1": [classifier.class_names[i] for i in logits.argmax(axis=1)],
            **unknown,
        }
    out = ROOT / "models" / "test-vectors.json"
    out.write_text(json.dumps(vectors, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB, {len(jpegs)} images)")


if __name__ == "__main__":
    main()
