"""Decoding image files into the network's input: grayscale, IMAGE_SIZE x IMAGE_SIZE, uint8.

Training evaluation and the workers both call `load_image`, so a photo is
seen the same way in validation as in production.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from classifier.model import IMAGE_SIZE

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "MPO"})
MAX_PIXELS = 50_000_000  # refuse decompression bombs before decoding


class ImageDecodeError(ValueError):
    """An image file that cannot be turned into network input; the message says why."""


def load_image(path: str | os.PathLike[str], size: int = IMAGE_SIZE, reduced_decode: bool = True) -> np.ndarray:
    """Return a (size, size) uint8 grayscale array, or raise ImageDecodeError saying why.

    With `reduced_decode` a JPEG is decoded straight to grayscale (its luma) at the smallest of
    1/1, 1/2, 1/4 or 1/8 scale that keeps at least twice `size` (libjpeg's DCT scaling), so
    that the last step is still a bilinear downscale, as in training. A full-size photo decodes
    about twice as fast; docs/performance.md measures both ways on speed and accuracy. A photo
    larger than twice `size` is shrunk to twice `size` first, as the training photos were.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_regular_file(path) as file, Image.open(file) as img:
                _check_header(img)
                if reduced_decode and img.format in ("JPEG", "MPO"):
                    img.draft("L", (2 * size, 2 * size))
                return _to_gray_array(img, size)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"refused: too many pixels ({exc})") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageDecodeError(f"refused: too many pixels ({exc})") from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not a file") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified_reason(path)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from None


def _open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for reading; refuse a pipe or device named like a photo, which could block forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO waits for a writer unless O_NONBLOCK
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageDecodeError("is a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file")
    return os.fdopen(fd, "rb")


def _check_header(img: Image.Image) -> None:
    if img.format not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"format {img.format} is not allowed ({', '.join(sorted(ALLOWED_FORMATS))})")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"invalid dimensions {width}x{height}")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(f"refused: {width}x{height} exceeds {MAX_PIXELS:,} pixels")


def _to_gray_array(img: Image.Image, size: int) -> np.ndarray:
    img.seek(0)  # first frame of animations
    img = ImageOps.exif_transpose(img)
    gray = _to_gray(img)
    if max(gray.size) > 2 * size:
        # The training photos are originals shrunk to 128x128 (../shared/data/README.md); a larger
        # photo takes the same path, which measurably evens out the per-class recall (docs/model.md).
        gray = gray.resize((2 * size, 2 * size), Image.Resampling.BILINEAR)
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _to_gray(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit 'L', composing transparency onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return img.convert("L")


def _unidentified_reason(path: str | os.PathLike[str]) -> str:
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    return f"not a recognised image ({size} bytes)"


def stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack (H, W) uint8 arrays into a (N, 1, H, W) uint8 tensor."""
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1)


# Undecodable bytes and backslashes as escapes: one text per name, never the same text for two names.
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def path_to_text(path: str | os.PathLike[str]) -> str:
    r"""The text a path is stored and shown as: its bytes read as UTF-8, with `\\` for a backslash and
    `\xNN` (lowercase hex) for each byte that is not UTF-8. A UTF-8 name without a backslash is unchanged.

    text_to_path reverses it exactly, so distinct names (as bytes) always get distinct texts.
    """
    raw = os.fsencode(path).replace(b"\\", b"\\\\")  # 0x5C never occurs inside a multi-byte UTF-8 sequence
    return raw.decode("utf-8", "backslashreplace")


def text_to_path(text: str) -> Path:
    """The path whose text is `text` (see path_to_text); a backslash that starts neither escape is kept."""
    pieces = _ESCAPE.split(text)  # literal text at even indexes, escapes at odd ones
    raw = b"".join(_unescape(piece) if i % 2 else os.fsencode(piece) for i, piece in enumerate(pieces))
    return Path(os.fsdecode(raw))


def _unescape(escape: str) -> bytes:
    return b"\\" if escape == "\\" else bytes([int(escape[1:], 16)])


def iter_image_files(folder: Path, within: Sequence[Path] | None = None) -> Iterator[Path]:
    """Yield image files under `folder`, recursively, in a stable order, without following symlinked folders.

    A symlinked file is yielded only when its target lies inside one of `within` (default: `folder`
    itself); one that leads elsewhere or loops is skipped. Every other file lies under `folder`.
    """
    roots = [p for p in map(resolve_path, [folder] if within is None else within) if p is not None]
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(os.path.join(root, name))  # Path(root) / name would intern every name of the list (3.11)
            if path.suffix.lower() in IMAGE_SUFFIXES and (not path.is_symlink() or _target_within(path, roots)):
                yield path


def resolve_path(path: Path) -> Path | None:
    """The absolute path with every symlink and ".." resolved, or None for a symlink loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a loop: RuntimeError up to Python 3.12, OSError (ELOOP) later
        return None


def is_within(path: Path, roots: Sequence[Path]) -> bool:
    """True when the resolved `path` is one of the resolved `roots` or lies below one."""
    return any(path.is_relative_to(root) for root in roots)


def _target_within(link: Path, roots: Sequence[Path]) -> bool:
    target = resolve_path(link)
    return target is not None and is_within(target, roots)
