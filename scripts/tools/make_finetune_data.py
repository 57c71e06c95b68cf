"""Write two small real image sets that ship inside packages (no download) as edgel2 image
folders, each with a fixed, seeded, class-balanced train/test split:

    OUT/digits/{train,test}/<0..9>/NNNN.png   scikit-learn's load_digits: 1,797 8x8 handwritten
                                             digits (pixel values 0..16 scaled to 0..255)
    OUT/lfw/{train,test}/<face|not_face>/NNNN.png   scikit-image's data.lfw_subset(): 200 25x25
                                             grey images, the first 100 faces, the others not
    OUT/photos/<astronaut|cat|coffee|rocket>/NNNN.{jpg,png}   a folder as a user has one: 52
                                             seeded random crops of each of 4 scikit-image
                                             photos, 64-200 px on a side, JPEG and PNG, no
                                             train/test split (edgel2 splits it)

Grey images are written as RGB (the channel repeated). Needs scikit-learn and scikit-image
(both in edgel2[dev]).

    python scripts/tools/make_finetune_data.py .data/finetune
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from edgel2.data import split_stratified


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255 / 16)).astype(np.uint8), d.target, [str(c) for c in range(10)]


def lfw() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from skimage import data

    images = data.lfw_subset()
    labels = np.array([0] * 100 + [1] * (len(images) - 100))
    return np.round(images * 255).astype(np.uint8), labels, ["face", "not_face"]


SETS = {"digits": digits, "lfw": lfw}
PHOTOS = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}


def write_photos(out: Path, per_class: int = 52, seed: int = 0) -> dict[str, int]:
    """``out/photos/<class>/``: seeded random crops (64-200 px a side, any aspect) of one
    scikit-image photo per class, alternately JPEG (quality 90) and PNG."""
    from skimage import data

    rng = np.random.default_rng(seed)
    counts = {}
    for name, photo in PHOTOS.items():
        image = getattr(data, photo)()
        folder = out / "photos" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            width, height = (int(v) for v in rng.integers(64, 201, 2))
            side = min(image.shape[0], image.shape[1])
            crop = int(rng.integers(side // 3, side + 1))
            top = int(rng.integers(0, image.shape[0] - crop + 1))
            left = int(rng.integers(0, image.shape[1] - crop + 1))
            picture = Image.fromarray(image[top:top + crop, left:left + crop]).resize((width, height))
            if i % 2:
                picture.save(folder / f"{i:04d}.png")
            else:
                picture.save(folder / f"{i:04d}.jpg", quality=90)
        counts[name] = per_class
    return counts


def write(out: Path, name: str, test_fraction: float, seed: int) -> dict[str, int]:
    """Write one set into ``out/name``; returns the number of images per split."""
    images, labels, classes = SETS[name]()
    split = split_stratified(images, labels, test_fraction, seed)
    counts = {}
    for part in ("train", "test"):
        for i, (image, label) in enumerate(zip(split[f"x_{part}"], split[f"y_{part}"])):
            folder = out / name / part / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.repeat(image[..., None], 3, axis=2)).save(folder / f"{i:04d}.png")
        counts[part] = len(split[f"y_{part}"])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sets", default="digits,lfw,photos")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.sets.split(","):
        if name == "photos":
            counts = write_photos(args.out, seed=args.seed)
            print(f"{args.out / name}: {sum(counts.values())} images in {len(counts)} classes")
            continue
        counts = write(args.out, name, args.test_fraction, args.seed)
        print(f"{args.out / name}: {counts['train']} train, {counts['test']} test images")


if __name__ == "__main__":
    main()
