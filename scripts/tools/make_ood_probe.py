"""Write edgel2's out-of-distribution probe: five folders of 32x32 PNG images of none of
CIFAR-10's classes, made from images that ship inside packages (no download):

    OUT/digits/   coloured digits (SVHN-like): scikit-learn's 8x8 handwritten digits, upscaled,
                  in a random colour on a random background, with a little noise
    OUT/faces/    faces: the 100 faces of scikit-image's data.lfw_subset() (25x25 grey)
    OUT/photos/   photo and texture crops: random crops of scikit-image and scikit-learn photos
                  and textures that show none of the ten classes (people, coffee, rocket, coins,
                  bricks, grass, gravel, text, the moon, a retina, a flower, a Chinese temple...)
    OUT/noise/    uniform noise: every pixel drawn from 0..255
    OUT/jigsaw/   4x4 jigsaws of CIFAR-10 test images: the 16 tiles of a test image shuffled
                  (the colours and textures of the classes, none of their shapes); needs the data

Every image is seeded: the same command writes the same bytes. Needs scikit-learn and
scikit-image (both in edgel2[dev]).

    python scripts/tools/make_ood_probe.py .data/ood               # 500 a set, faces 100
    python scripts/tools/make_ood_probe.py .data/ood --count 100 --data .data/cifar10-jpeg
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 32
# scikit-image photos and textures that show none of CIFAR-10's classes (chelsea is a cat,
# horse a horse: left out), and scikit-learn's two sample photos
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina",
                  "rocket", "text", "logo", "colorwheel", "clock", "cell", "microaneurysms")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(255 * (image - image.min()) / max(np.ptp(image), 1e-9)).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3]


def _resized(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(_rgb(image)).resize((SIDE, SIDE), Image.BILINEAR))


def digits(count: int, rng: np.random.Generator, data=None) -> np.ndarray:
    from sklearn.datasets import load_digits

    glyphs = load_digits().images / 16.0
    out = []
    for i in rng.permutation(len(glyphs))[:count]:
        glyph = np.asarray(Image.fromarray(np.uint8(255 * glyphs[i])).resize(
            (SIDE - 8, SIDE - 8), Image.BILINEAR), np.float32)[..., None] / 255
        ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        while np.abs(ink - paper).sum() < 150:  # a digit one can read
            ink = rng.integers(0, 256, 3)
        image = np.tile(paper.astype(np.float32), (SIDE, SIDE, 1))
        image[4:-4, 4:-4] = glyph * ink + (1 - glyph) * paper
        image += rng.normal(0, 8, image.shape)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(out)


def faces(count: int, rng: np.random.Generator, data=None) -> np.ndarray:
    from skimage import data as skdata

    return np.stack([_resized(f) for f in skdata.lfw_subset()[:min(count, 100)]])


def photos(count: int, rng: np.random.Generator, data=None) -> np.ndarray:
    from skimage import data as skdata
    from sklearn.datasets import load_sample_image

    sources = [_rgb(getattr(skdata, n)()) for n in SKIMAGE_PHOTOS]
    sources += [load_sample_image(n) for n in SKLEARN_PHOTOS]
    out = []
    for i in range(count):
        image = sources[i % len(sources)]
        side = min(image.shape[:2])
        crop = int(rng.integers(max(16, side // 8), side // 2 + 1))
        top = int(rng.integers(0, image.shape[0] - crop + 1))
        left = int(rng.integers(0, image.shape[1] - crop + 1))
        out.append(_resized(image[top:top + crop, left:left + crop]))
    return np.stack(out)


def noise(count: int, rng: np.random.Generator, data=None) -> np.ndarray:
    return rng.integers(0, 256, (count, SIDE, SIDE, 3), dtype=np.uint8)


def jigsaw(count: int, rng: np.random.Generator, data=None) -> np.ndarray:
    from edgel2.data import load_dataset

    test = load_dataset(data).x_test
    tile = SIDE // 4
    out = []
    for i in rng.permutation(len(test))[:count]:
        image = _resized(test[i])
        tiles = [image[r:r + tile, c:c + tile] for r in range(0, SIDE, tile)
                 for c in range(0, SIDE, tile)]
        order = rng.permutation(16)
        rows = [np.concatenate([tiles[j] for j in order[r * 4:r * 4 + 4]], axis=1)
                for r in range(4)]
        out.append(np.concatenate(rows, axis=0))
    return np.stack(out)


SETS: dict[str, Callable] = {"digits": digits, "faces": faces, "photos": photos,
                             "noise": noise, "jigsaw": jigsaw}


def make_probe(out: Path, count: int = 500, data: str | None = None, seed: int = 0,
               sets: tuple[str, ...] = tuple(SETS)) -> dict[str, int]:
    """Write ``out/<set>/NNNN.png`` for each set; returns the images written per set."""
    written = {}
    for index, name in enumerate(sets):
        images = SETS[name](count, np.random.default_rng([seed, index]), data)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:04d}.png")
        written[name] = len(images)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=500, help="images a set (faces: at most 100)")
    parser.add_argument("--data", default=None,
                        help="CIFAR-10 for the jigsaws (default: $EDGEL2_DATA or the checkout's)")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, n in make_probe(args.out, args.count, args.data, args.seed, tuple(args.sets)).items():
        print(f"{n:5d} {name:<7} -> {args.out / name}")


if __name__ == "__main__":
    main()
