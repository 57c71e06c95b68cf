"""Throw hostile images, paths and model files at edgel2.runtime and count how each is handled.

Every input is made here by mutating a valid one (seeded, so every run tries the same set):
- images: every image format and mode edgel2 reads, each with single-byte mutations over its
  first bytes and truncations at many lengths, decoded by ``load_image``;
- model files: a tiny valid ONNX classifier with byte mutations, and the shipped .tflite with
  byte mutations of its appended metadata zip, and of its flatbuffer (graph and weights) both
  with its ``weights_sha256`` and without it (then only the first run at open can catch what
  a mutation breaks), opened by ``Classifier``;
- paths: FIFOs, sockets, devices, broken links, link loops, folders named like images,
  non-UTF-8 names, walked by ``expand_paths`` and classified by ``edgel2 infer``.

An outcome is ``ok``, an ``EdgeL2Error`` subclass (the expected refusals, by class and the
first words of the reason), or ``BUG:`` anything else; the script exits 1 if any BUG was seen.

    python scripts/bench/fuzz_runtime.py              # about a minute on 2 cores
    python scripts/bench/fuzz_runtime.py --quick      # a tenth of the mutations
"""
from __future__ import annotations

import argparse
import collections
import io
import itertools
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the tests' tiny model
from conftest import make_tiny_onnx  # noqa: E402 - the same tiny model the tests use

from edgel2.errors import EdgeL2Error  # noqa: E402
from edgel2.runtime import Classifier, load_image  # noqa: E402
from edgel2.runtime.io import expand_paths  # noqa: E402
from edgel2.runtime.shipped import shipped_model  # noqa: E402

MUTATION_VALUES = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF)


def valid_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    cases = {
        "png-rgb": (rgb, "PNG", {}), "png-rgba": (rgb.convert("RGBA"), "PNG", {}),
        "png-p": (rgb.quantize(16), "PNG", {}), "png-i16": (Image.fromarray(
            rng.integers(0, 65535, (12, 16), dtype=np.uint16)), "PNG", {}),
        "jpeg": (rgb, "JPEG", {"quality": 75}), "jpeg-cmyk": (rgb.convert("CMYK"), "JPEG", {}),
        "gif": (rgb.quantize(16), "GIF", {}), "bmp": (rgb, "BMP", {}),
        "webp": (rgb, "WEBP", {}), "tiff-rgb": (rgb, "TIFF", {}),
        "tiff-f": (Image.fromarray(rng.random((12, 16), dtype=np.float32)), "TIFF", {}),
        "tiff-i16": (Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16)), "TIFF", {}),
        "tiff-lab": (rgb.convert("LAB"), "TIFF", {}), "ico": (rgb, "ICO", {}),
        "ppm": (rgb, "PPM", {}),
    }
    out = {}
    for name, (image, fmt, options) in cases.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out[name] = buffer.getvalue()
    return out


def mutations(data: bytes, positions: int, step: int):
    """Single-byte changes over the first ``positions`` bytes, then truncations."""
    for pos in range(0, min(positions, len(data)), step):
        for value in MUTATION_VALUES:
            if data[pos] != value:
                yield data[:pos] + bytes([value]) + data[pos + 1:]
    for length in range(0, len(data), max(1, len(data) // 40)):
        yield data[:length]


def outcome(action) -> str:
    try:
        action()
        return "ok"
    except EdgeL2Error as e:
        return f"{type(e).__name__}: {' '.join(str(e).split()[:2])}"
    except Exception as e:  # noqa: BLE001 - exactly what this script looks for
        return f"BUG: {type(e).__name__}: {str(e)[:60]}"


def fuzz_images(step: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for _name, data in valid_images().items():
        for mutated in mutations(data, 400, step):
            counts[outcome(lambda m=mutated: load_image(m, (32, 32)))] += 1
    return counts


def fuzz_models(folder: Path, step: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    tiny = make_tiny_onnx(folder / "tiny.onnx").read_bytes()
    tflite = shipped_model("resnet18-int8.tflite").read_bytes()
    zip_start = tflite.index(b"PK\x03\x04", len(tflite) - 64 * 1024)
    candidate = folder / "candidate"
    tflite_mutations = (tflite[:zip_start] + m for m in mutations(tflite[zip_start:], 4096, step * 4))
    # one at a time: materialized, the 11 MB .tflite's mutations would take tens of GB
    for mutated in itertools.chain(mutations(tiny, len(tiny), step), tflite_mutations):
        candidate.write_bytes(mutated)
        counts[outcome(lambda: Classifier(candidate, probe=False))] += 1
    return counts


def fuzz_flatbuffer(folder: Path, step: int) -> collections.Counter:
    """Single-byte changes spread over the shipped .tflite's flatbuffer, with its metadata zip
    as shipped (the checksum catches them) and with the checksum taken out."""
    import json
    import zipfile

    from edgel2.runtime.modelfile import flatbuffer_end

    tflite = shipped_model("resnet18-int8.tflite").read_bytes()
    end = flatbuffer_end(tflite)
    unchecked = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(tflite[end:])) as z, \
            zipfile.ZipFile(unchecked, "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "edgel2.json":
                data = json.dumps({k: v for k, v in json.loads(data).items()
                                   if k != "weights_sha256"}).encode()
            out.writestr(info.filename, data)
    counts: collections.Counter = collections.Counter()
    candidate = folder / "candidate.tflite"
    positions = range(0, end, max(1, end // (300 // step)))
    for label, tail in (("with checksum", tflite[end:]), ("without checksum", unchecked.getvalue())):
        for pos in positions:
            for value in (0x00, 0xFF):
                if tflite[pos] == value:
                    continue
                candidate.write_bytes(tflite[:pos] + bytes([value]) + tflite[pos + 1:end] + tail)
                counts[f"{label}: {outcome(lambda: Classifier(candidate, probe=False))}"] += 1
    return counts


def fuzz_paths(folder: Path, model: Path) -> collections.Counter:
    root = folder / "photos"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (100, 150, 200)).save(root / "good.png")
    os.mkfifo(root / "fifo.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "socket.png"))
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "broken.png").symlink_to(root / "missing.png")
    (root / "sub" / "loop").symlink_to(root)
    (root / "sub" / "self").symlink_to(root / "sub")
    (root / "folder.png").mkdir()
    (root / "empty.png").write_bytes(b"")
    with open(os.fsencode(root) + b"/caf\xe9.png", "wb") as f:
        Image.new("RGB", (8, 8)).save(f, "PNG")
    counts: collections.Counter = collections.Counter()
    for pattern in (str(root), f"{root}/**/*.png", f"{root}/*"):
        proc = subprocess.run([sys.executable, "-m", "edgel2", "infer", pattern, "--model",
                               str(model), "--out-format", "csv"], capture_output=True, text=True,
                              timeout=120)
        if "Traceback" in proc.stderr or proc.returncode not in (0, 3):
            counts[f"BUG: exit {proc.returncode}: {proc.stderr.strip()[-80:]}"] += 1
            continue
        for line in proc.stdout.splitlines()[1:]:
            error = line.rsplit(",", 1)[-1]
            counts[f"row: {error or 'ok'}"] += 1
    sock.close()
    counts[f"walk of {root}: {len(expand_paths([str(root)]))} entries"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the mutations")
    args = parser.parse_args()
    step = 10 if args.quick else 1
    bugs = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for title, counts in (("images", fuzz_images(step)), ("model files", fuzz_models(folder, step)),
                              ("tflite flatbuffers", fuzz_flatbuffer(folder, step)),
                              ("paths", fuzz_paths(folder, folder / "tiny.onnx"))):
            print(f"\n{title}: {sum(counts.values())} tried")
            for key, count in counts.most_common():
                print(f"  {count:6d}  {key}")
            bugs += sum(c for k, c in counts.items() if k.startswith("BUG"))
    print(f"\n{bugs} inputs handled outside the EdgeL2Error family")
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
