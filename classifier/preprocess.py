"""Decoding image files into the network's input: grayscale, IMAGE_SIZE x IMAGE_SIZE, uint8.

Training evaluation and the workers both call `load_image`, so a photo is
seen the same way in validation as in production. Whatever a file holds, decoding it
returns an array or raises ImageDecodeError: one bad file never fails anything but itself.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from classifier.files import FileRefused, open_within
from classifier.model import IMAGE_SIZE

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "MPO"})
MAX_PIXELS = 50_000_000  # refuse decompression bombs before decoding
# The most memory one image may take once decoded, before it is made small (read from its header):
# a 33-megapixel RGB PNG or TIFF (a JPEG is decoded reduced, far smaller). It bounds the decode's
# time too (docs/reliability.md measures the worst files under it).
MAX_DECODED_BYTES = 128 * 2**20
MAX_FILE_BYTES = 512 * 2**20  # read whole to be hashed: a larger file is refused, as no photo is that large
TOO_MANY_PIXELS = f"refused: more than {MAX_PIXELS:,} pixels"
# Bytes per pixel as Pillow holds a decoded image (RGB and two-band modes are padded to 4 bytes).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


class ImageDecodeError(ValueError):
    """An image file that cannot be turned into network input; the message says why."""


def load_image(
    path: str | os.PathLike[str],
    size: int = IMAGE_SIZE,
    reduced_decode: bool = True,
    roots: Sequence[Path] | None = None,
) -> np.ndarray:
    """Return a (size, size) uint8 grayscale array, or raise ImageDecodeError saying why.

    With `roots`, the file is opened only inside those folders (classifier.files.open_within);
    without, by its name (training and benchmarks, on data of their own).

    With `reduced_decode` a JPEG is decoded straight to grayscale (its luma) at the smallest of
    1/1, 1/2, 1/4 or 1/8 scale that keeps at least twice `size` (libjpeg's DCT scaling), so
    that the last step is still a bilinear downscale, as in training. A full-size photo decodes
    about twice as fast; docs/performance.md measures both ways on speed and accuracy. A photo
    larger than twice `size` is shrunk to twice `size` first, as the training photos were.
    """
    with os.fdopen(_open(path, roots), "rb") as file:
        return decode_image(file, size, reduced_decode)


def read_file(path: str | os.PathLike[str], roots: Sequence[Path] | None = None) -> bytes:
    """The whole file, opened as load_image opens it (only inside `roots`, when given); ImageDecodeError
    saying why not, also for a file of more than MAX_FILE_BYTES."""
    fd = _open(path, roots)
    try:
        size = os.fstat(fd).st_size
        chunks = [os.read(fd, size + 1)] if size <= MAX_FILE_BYTES else []  # all of it in one call, usually
        read = sum(map(len, chunks))
        while read > size and chunks[-1] and read <= MAX_FILE_BYTES:  # it grew since fstat: read on to its end
            chunks.append(os.read(fd, MAX_FILE_BYTES + 1 - read))
            read += len(chunks[-1])
    except OSError as exc:
        raise ImageDecodeError(_open_reason(exc)) from None
    finally:
        os.close(fd)
    if not chunks or read > MAX_FILE_BYTES:
        raise ImageDecodeError(f"refused: larger than {MAX_FILE_BYTES:,} bytes")
    return b"".join(chunks) if len(chunks) > 1 else chunks[0]


def _open(path: str | os.PathLike[str], roots: Sequence[Path] | None) -> int:
    try:
        return _open_regular_file(path) if roots is None else open_within(path, roots)
    except FileRefused as exc:
        raise ImageDecodeError(str(exc)) from None
    except OSError as exc:
        raise ImageDecodeError(_open_reason(exc)) from None


def decode_image(file: BinaryIO, size: int = IMAGE_SIZE, reduced_decode: bool = True) -> np.ndarray:
    """Decode an open image file (see load_image); any failure is an ImageDecodeError naming its cause."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on corrupt metadata: noise in a worker's log
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                _check_header(img)
                if reduced_decode and img.format in ("JPEG", "MPO"):
                    img.draft("L", (2 * size, 2 * size))
                _check_budget(img)
                return _to_gray_array(img, size)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(TOO_MANY_PIXELS) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified_reason(file)) from None
    except MemoryError:
        raise ImageDecodeError("cannot decode: out of memory") from None
    except Exception as exc:  # a crafted file can raise anything from deep inside Pillow (struct.error, TypeError)
        raise ImageDecodeError(f"cannot decode: {type(exc).__name__}: {exc}"[:500]) from None


def _open_regular_file(path: str | os.PathLike[str]) -> int:
    """Open a regular file for reading; refuse a pipe or device named like a photo, which could block forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO waits for a writer unless O_NONBLOCK
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FileRefused("is a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file")
    return fd


def _open_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return f"cannot open: {exc.strerror}"


def _check_header(img: Image.Image) -> None:
    if img.format not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"format {img.format} is not allowed ({', '.join(sorted(ALLOWED_FORMATS))})")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"invalid dimensions {width}x{height}")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(f"{TOO_MANY_PIXELS}: {width}x{height}")


def _check_budget(img: Image.Image) -> None:
    """Refuse, from the header, an image whose decoded pixels would take more than MAX_DECODED_BYTES."""
    width, height = img.size
    needed = width * height * _PIXEL_BYTES.get(img.mode, 4)
    if needed > MAX_DECODED_BYTES:
        raise ImageDecodeError(
            f"refused: {width}x{height} {img.mode} would take {needed / 2**20:,.0f} MiB to decode "
            f"(at most {MAX_DECODED_BYTES / 2**20:,.0f} MiB)"
        )


def _to_gray_array(img: Image.Image, size: int) -> np.ndarray:
    img.seek(0)  # first frame of animations
    img = ImageOps.exif_transpose(img)
    if img.mode in _HIGH_BIT_MODES:
        return _high_bit_to_gray(img, size)
    gray = _to_gray(img)
    if max(gray.size) > 2 * size:
        # The training photos are originals shrunk to 128x128 (../shared/data/README.md); a larger
        # photo takes the same path, which measurably evens out the per-class recall (docs/model.md).
        gray = gray.resize((2 * size, 2 * size), Image.Resampling.BILINEAR)
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _high_bit_to_gray(img: Image.Image, size: int) -> np.ndarray:
    """16-bit, 32-bit and float images: shrunk in their own mode first, then scaled to 0-255 by their range.

    Shrinking first keeps a large 16-bit image's cost near its decode (scaling all its pixels as
    float64 took gigabytes and seconds). 16-bit values are read on 0-65535; integers on 0-255 when none is larger;
    floats on 0-1 when none is larger (a float TIFF's usual range), else like integers.
    """
    peak = _peak(img)
    if max(img.size) > 2 * size:
        img = img.resize((2 * size, 2 * size), Image.Resampling.BILINEAR)  # in its own mode: no full-size copy
    small = img.convert("F").resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(small, dtype=np.float32)
    array = np.nan_to_num(array, nan=0.0, posinf=peak, neginf=0.0)
    gray: np.ndarray = np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
    return gray


def _peak(img: Image.Image) -> float:
    if img.mode.startswith("I;16"):
        return 65535.0
    extrema = cast(tuple[float, float], img.getextrema())  # one band: (lowest, highest)
    high = float(extrema[1]) if np.isfinite(extrema[1]) else 0.0
    if img.mode == "F" and high <= 1.0:
        return 1.0
    if high <= 255:
        return 255.0
    return 65535.0 if high <= 65535 else high


def _to_gray(img: Image.Image) -> Image.Image:
    """Convert an 8-bit mode to 'L', composing transparency onto white."""
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return img.convert("L")


def _unidentified_reason(file: BinaryIO) -> str:
    try:
        size = file.seek(0, io.SEEK_END)
    except (OSError, ValueError):
        return "not a recognised image"
    return "empty file (0 bytes)" if size == 0 else f"not a recognised image ({size} bytes)"


def stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack (H, W) uint8 arrays into a (N, 1, H, W) uint8 tensor."""
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1)
