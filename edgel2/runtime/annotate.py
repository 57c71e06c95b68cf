"""``edgel2 infer --save DIR``: copies of the classified images with their top label and
probability drawn on, for people who would rather look than read. Pillow only.

Each copy keeps its path relative to the folder the inputs share (so ``a/1.jpg`` and
``b/1.jpg`` stay apart) and its name; a format Pillow writes poorly for photos (GIF, ICO,
TIFF, ...) becomes PNG under ``NAME.png``. Small images are scaled up (nearest neighbour, so
that each pixel stays visible) until the label fits.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from edgel2.errors import EdgeL2Error
from edgel2.runtime.classifier import FileResult
from edgel2.runtime.preprocess import open_image, to_rgb
from edgel2.utils import atomic_path, writable_folder

MIN_SIDE = 256          # a 32x32 CIFAR image is drawn 8x, so the label is readable
BANNER = (0, 0, 0)      # the label's background, behind white text
KEPT_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}


def prepare_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` (and its parents) before any image is classified, so that a place
    that cannot be written is one line at once, not after the work."""
    writable_folder(folder, "the folder for annotated copies")
    return Path(folder)


def annotated(source: str | os.PathLike[str], label: str) -> Image.Image:
    """The image at ``source`` (upright, RGB) with ``label`` drawn in a banner across its top.

    Examples:
        >>> import numpy as np
        >>> annotated_image = annotated(np.zeros((32, 48, 3), np.uint8), "cat 91.0 %")
        >>> annotated_image.size
        (384, 256)
    """
    image = to_rgb(open_image(source))
    scale = max(1, -(-MIN_SIDE // min(image.size)))  # ceiling: the short side reaches MIN_SIDE
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    else:
        image = image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, min(image.size) // 14))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    pad = max(2, (bottom - top) // 4)
    draw.rectangle((0, 0, min(image.width, right - left + 2 * pad), bottom - top + 2 * pad),
                   fill=BANNER)
    draw.text((pad - left, pad - top), label, fill=(255, 255, 255), font=font)
    return image


def save_annotated(results: Sequence[FileResult], folder: str | os.PathLike[str]) -> list[Path]:
    """Write an annotated copy of every classified image in ``results`` into ``folder`` (the
    failed ones have no copy; an image over the file's unknown threshold is captioned
    ``unknown (cat 65.0 %)``); returns the paths written, each written atomically.

    Examples:
        >>> save_annotated(classifier.predict_files(["cat.jpg"]), "annotated")  # doctest: +SKIP
        [PosixPath('annotated/cat.jpg')]
    """
    folder = prepare_folder(folder)
    done = [(r, r.prediction[0]) for r in results if r.error is None and r.prediction]
    if not done:
        return []
    parents = [os.path.dirname(os.path.abspath(r.source)) for r, _ in done]
    common = os.path.commonpath(parents)
    written = []
    for result, (label, probability) in done:
        relative = Path(os.path.relpath(os.path.abspath(result.source), common))
        fmt = KEPT_SUFFIXES.get(relative.suffix.lower())
        target = folder / (relative if fmt else relative.with_name(relative.name + ".png"))
        try:
            caption = f"{label} {100 * probability:.1f} %"
            if getattr(result.prediction, "unknown", None):
                caption = f"unknown ({caption})"
            image = annotated(result.source, caption)
            with atomic_path(target) as tmp:
                image.save(tmp, fmt or "PNG", **({"quality": 90} if fmt == "JPEG" else {}))
        except OSError as e:
            raise EdgeL2Error(f"cannot write {target}: {e.strerror or e}") from None
        written.append(target)
    return written
