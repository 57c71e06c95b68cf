"""Any image -> the model's uint8 RGB input, the same way every time (numpy + pillow only).

The policy, in order:

1. open from a path, bytes, a file object, a PIL image or an array, in one of the formats of
   :data:`FORMATS` (Pillow's other plugins are not tried: each is attack surface, and some
   decode while they open); animated images (GIF, APNG, WebP) give their **first frame**;
2. apply the EXIF orientation (``ImageOps.exif_transpose``), so phone photos stand upright;
3. convert to RGB: 16-bit greyscale is scaled to 8 bits (``>> 8``); floating-point images
   (32-bit TIFF) are read as 0..1 when every value is in 0..1, else as 0..255, and refused
   outside 0..255 or with NaN; CMYK and palette images go through Pillow's conversions, and
   any alpha (LA, RGBA, PA, transparent palettes) is composited over **white**
   (:data:`BACKGROUND`);
4. resize to the model's input size with Pillow's **bilinear** filter, which antialiases when
   it shrinks (``Image.resize`` widens the kernel by the scale factor), the width first, then
   the height, each pass rounded to uint8 (:func:`resize_bilinear`: the exact integer
   arithmetic every port in ``examples/`` repeats).

Training images go through the same steps (``edgel2.data``), so what the model saw and what it
is shown match. Images larger than :data:`MAX_PIXELS` are refused as decompression bombs, from
their header, before any pixel is decoded (for an ICO, every image inside it).
"""
from __future__ import annotations

import errno
import io
import os
import stat
import struct
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

from edgel2.errors import ImageError, first_line

BACKGROUND = (255, 255, 255)
RESAMPLE = Image.Resampling.BILINEAR
MAX_PIXELS = 64 * 1024 * 1024  # 64 Mpx: far above any camera frame a classifier is given
# The file suffixes counted as images when a folder is searched (training data and infer).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                            ".tiff", ".ppm", ".pgm", ".pbm", ".ico"})

# The Pillow plugins edgel2 opens (MPO, a phone's multi-picture JPEG, comes through JPEG's).
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM", "ICO")
FORMAT_NAMES = "JPEG, PNG, BMP, GIF, WebP, TIFF, PPM/PGM/PBM or ICO"

ImageLike = Union[str, os.PathLike[str], bytes, "Image.Image", np.ndarray]

# Non-regular files are refused by what they are, before any read: reading a FIFO would block.
_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_image(source: ImageLike) -> Image.Image:
    """A decoded PIL image (first frame) from any accepted source; :class:`ImageError` with a
    short reason for anything else, whatever the decoder raised."""
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, np.ndarray):
            return _from_array(source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("empty data")
            return _decode(io.BytesIO(bytes(source)))
        with open_regular_file(source) as file:
            return _decode(file)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError("refused as a decompression bomb") from None
    except FileNotFoundError:
        broken = isinstance(source, (str, os.PathLike)) and os.path.islink(source)
        raise ImageError("broken symbolic link" if broken else "no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image edgel2 reads ({FORMAT_NAMES})") from None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise TypeError, IndexError,
        # struct.error... on hostile files: each is that one file's problem, never the run's
        raise ImageError(f"cannot decode: {first_line(e, 120)}") from None


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading (binary) only if it is a non-empty regular file, else raise
    :class:`ImageError` saying what it is. O_NONBLOCK makes
    opening a FIFO return at once, and fstat on the open descriptor leaves no window in which
    the path could be swapped for something else."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket cannot be opened at all
            _refuse_special(os.stat(path).st_mode)
        raise
    try:
        info = os.fstat(fd)
        _refuse_special(info.st_mode)
        if info.st_size == 0:
            raise ImageError("empty file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_special(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ImageError("is a directory")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "special file")
        raise ImageError(f"not a regular file ({kind})")


def _decode(file: BinaryIO) -> Image.Image:
    image = _open_checked(file)
    image.seek(0)
    image.load()
    return image


def _open_checked(file: BinaryIO) -> Image.Image:
    """``Image.open`` for :data:`FORMATS` only, its size checked against :data:`MAX_PIXELS`
    before any pixel is decoded. Pillow's ICO plugin decodes its largest image while it opens
    (and trusts the directory's claimed size), so an ICO's images are measured from their own
    headers first."""
    head = file.read(4)
    file.seek(0)
    if head == b"\0\0\1\0":
        for width, height in _ico_sizes(file):
            _check_size(width, height)
        file.seek(0)
    image = Image.open(file, formats=FORMATS)
    _check_size(image.width, image.height)
    return image


class _Oversized(ImageError):
    """An image over :data:`MAX_PIXELS`, found from its header."""


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise _Oversized(f"image too large ({width}x{height}): refused as a possible "
                        "decompression bomb")


def _ico_sizes(file: BinaryIO) -> list[tuple[int, int]]:
    """The (width, height) of every image in an ICO, from each image's own header (a PNG's
    IHDR, or a BMP's info header), not the directory's one-byte claims."""
    count = struct.unpack("<H", file.read(6)[4:6])[0]
    entries = [struct.unpack("<4xHHII", file.read(16)) for _ in range(count)]
    sizes = []
    for _, _, _length, offset in entries:
        file.seek(offset)
        header = file.read(24)
        if header[:8] == b"\x89PNG\r\n\x1a\n" and len(header) >= 24:
            sizes.append(struct.unpack(">II", header[16:24]))
        elif len(header) >= 12:  # BITMAPINFOHEADER: width, then twice the height (with mask)
            width, height = struct.unpack("<ii", header[4:12])
            sizes.append((abs(width), abs(height) // 2))
    return sizes


def pixel_count(data: bytes) -> int:
    """How many pixels ``data`` decodes to, read from its header (0 when it is not an image
    edgel2 reads: decoding it will say why). What a server sums to bound a request's work
    before decoding any of it.

    Examples:
        >>> buffer = io.BytesIO(); Image.new("RGB", (40, 30)).save(buffer, "PNG")
        >>> pixel_count(buffer.getvalue())
        1200
    """
    try:
        with _open_checked(io.BytesIO(data)) as image:
            return int(image.width * image.height)
    except _Oversized:
        return MAX_PIXELS + 1
    except Exception:  # noqa: BLE001 - not an image: decoding reports it
        return 0


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise ImageError(f"array of shape {array.shape} is not an HWC image")
    if array.dtype != np.uint8:
        raise ImageError(f"array dtype {array.dtype} is not uint8")
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], "L")
    return Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA")


def to_rgb(image: Image.Image) -> Image.Image:
    """Steps 2 and 3 of the policy: EXIF orientation, then RGB over a white background."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "F":
        image = _from_float(np.asarray(image, dtype=np.float32))
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((pixels >> 8).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def _from_float(pixels: np.ndarray) -> Image.Image:
    """A floating-point greyscale image as 8 bits: 0..1 scaled by 255 when every value is in
    0..1 (the convention of scientific tools), 0..255 as it is; anything else is refused
    rather than guessed."""
    if not np.isfinite(pixels).all():
        raise ImageError("a floating-point image with NaN or infinite values")
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ImageError(f"a floating-point image with values in {low:g}..{high:g}; edgel2 "
                         "reads 0..1 or 0..255")
    scale = 255.0 if high <= 1.0 else 1.0
    return Image.fromarray(np.round(pixels * scale).astype(np.uint8), "L")


def load_image(source: ImageLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """The whole image policy: any image -> uint8 ``[H, W, 3]``.

    EXIF orientation is applied, transparency composited over white, any mode converted to
    RGB, and the image resized with :data:`RESAMPLE` (bilinear) when ``size`` asks for it;
    images over :data:`MAX_PIXELS` are refused (:class:`~edgel2.errors.ImageError`), as is
    anything that is not an image (see the module docstring for the whole policy).

    Args:
        source: A path, the file's bytes, a PIL image or a numpy array.
        size: (width, height) to resize to; None keeps the image's size.

    Returns:
        The pixels, uint8 ``[H, W, 3]``.

    Examples:
        >>> load_image(np.zeros((64, 48, 4), np.uint8), size=(32, 32)).shape
        (32, 32, 3)
    """
    return load_image_and_size(source, size)[0]


def load_image_and_size(source: ImageLike, size: tuple[int, int] | None = None
                        ) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`load_image`, and the (width, height) the image had upright, before resizing
    (what a data summary reports as the sizes seen).

    Examples:
        >>> pixels, seen = load_image_and_size(np.zeros((64, 48, 3), np.uint8), size=(32, 32))
        >>> pixels.shape, seen
        ((32, 32, 3), (48, 64))
    """
    image = open_image(source)
    try:
        image = to_rgb(image)
        seen = image.size
        if size is not None and image.size != tuple(size):
            image = resize_bilinear(image, (int(size[0]), int(size[1])))
        return np.asarray(image, dtype=np.uint8), seen
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - a mode Pillow cannot convert (LAB, odd TIFFs...)
        raise ImageError(f"cannot convert a {image.mode} image to RGB: {first_line(e, 120)}") from None


def resize_bilinear(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Step 4 of the policy: Pillow's bilinear resize, the width pass first, then the height.

    Pillow's own two-pass ``resize`` picks the order by the shape (from Pillow 13 it runs the
    height first when the height shrinks more than twice as much as the width), and each pass
    rounds to uint8, so the order changes pixels by a level; one pass per call fixes it, so the
    answer depends neither on the Pillow version nor on what a port in another language does
    (``examples/js/edgel2.mjs`` repeats this arithmetic exactly).

    Examples:
        >>> resize_bilinear(Image.new("RGB", (40, 90)), (32, 32)).size
        (32, 32)
    """
    width, height = size
    if image.width != width:
        image = image.resize((width, image.height), RESAMPLE)
    if image.height != height:
        image = image.resize((width, height), RESAMPLE)
    return image


# EXIF orientations that turn an image a quarter turn (ImageOps.exif_transpose swaps W and H)
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112


def upright_size(data: bytes) -> tuple[int, int]:
    """The (width, height) of an encoded image once its EXIF orientation is applied, read
    from its header without decoding the pixels; :class:`ImageError` for what is not an
    image.

    Examples:
        >>> buffer = io.BytesIO(); Image.new("RGB", (40, 30)).save(buffer, "PNG")
        >>> upright_size(buffer.getvalue())
        (40, 30)
    """
    try:
        with _open_checked(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = image.getexif().get(_ORIENTATION_TAG) if hasattr(image, "getexif") else None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types on bad headers
        raise ImageError(f"not an image ({first_line(e, 120)})") from None
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)
