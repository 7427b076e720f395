"""Thumbnails of a job's photos for people to look at: JPEG, cached on disk, made only from files opened
inside the job's roots (classifier.files.open_within, as the workers open them).

The cache key is the size asked for, the path and the opened file's size, mtime and inode, so a file
that changes gets a new thumbnail; the file is opened and checked on every request, cached or not. The
cache holds at most `max_bytes`: past that, the files least recently used go first.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from classifier.files import OUTSIDE, FileRefused, open_within, text_to_path
from classifier.preprocess import ALLOWED_FORMATS, MAX_DECODED_BYTES, MAX_PIXELS

log = logging.getLogger(__name__)
SIZES = {"small": 256, "large": 512}  # pixels, the longer side (a smaller photo is not enlarged)
JPEG_QUALITY = 85
RESCAN_EVERY = 256  # writes between rescans of the folder, which other processes write too
KEEP_AFTER_EVICTION = 0.9  # of max_bytes: room for the next writes before the next eviction


class ThumbnailError(ValueError):
    """A thumbnail that cannot be made; `kind` is "not_found", "outside" or "unreadable", the message says why."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    key: str  # changes whenever the file or the size changes: an ETag


class ThumbnailCache:
    """Thumbnails under `folder` (made on first use), at most `max_bytes` of them; safe across threads and processes."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._bytes: int | None = None  # this process's estimate of the folder's size; None: not scanned yet
        self._writes = 0

    def get(self, path: str, roots: Sequence[Path], size: int) -> Thumbnail:
        """The thumbnail of the file at `path` (as recorded: classifier.files.path_to_text), `size` pixels at most
        on its longer side, opened only inside `roots`. Raises ThumbnailError."""
        with _open(path, roots) as file:
            stat = os.fstat(file.fileno())
            key = _key(path, size, stat)
            cached = self._read(key)
            if cached is not None:
                return Thumbnail(cached, key)
            jpeg = make_thumbnail(file, size)
        try:
            self._write(key, jpeg)
        except OSError as exc:  # a full or read-only disk costs speed, not the thumbnail
            log.warning("could not cache a thumbnail in %s (%s)", self.folder, exc)
        return Thumbnail(jpeg, key)

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.jpg"

    def _read(self, key: str) -> bytes | None:
        try:
            jpeg = self._file(key).read_bytes()
            os.utime(self._file(key))  # used now: the last to be evicted
        except OSError:  # never made, evicted a moment ago, or the cache is unusable: make it again
            return None
        return jpeg

    def _write(self, key: str, jpeg: bytes) -> None:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(jpeg)
        os.replace(temporary, target)  # readers see the whole file or none
        with self._lock:
            self._writes += 1
            if self._bytes is not None:
                self._bytes += len(jpeg)
            if self._bytes is None or self._bytes > self.max_bytes or self._writes % RESCAN_EVERY == 0:
                self._bytes = self._evict()

    def _evict(self) -> int:
        """Delete the least recently used thumbnails while the folder holds more than max_bytes; its size after."""
        entries = []
        for file in self.folder.glob("*/*.jpg"):
            try:
                stat = file.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            entries.append((stat.st_mtime_ns, stat.st_size, file))
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return total
        for _, size, file in sorted(entries):
            if total <= self.max_bytes * KEEP_AFTER_EVICTION:
                break
            file.unlink(missing_ok=True)
            total -= size
        return total


def _key(path: str, size: int, stat: os.stat_result) -> str:
    text = f"{size}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _open(path: str, roots: Sequence[Path]) -> BinaryIO:
    try:
        fd = open_within(text_to_path(path), roots)
    except FileRefused as exc:
        reason = str(exc)
        kind = "not_found" if reason.startswith("file not found") else "outside" if reason == OUTSIDE else "unreadable"
        raise ThumbnailError(kind, reason) from None
    return os.fdopen(fd, "rb")


def make_thumbnail(file: BinaryIO, size: int) -> bytes:
    """A JPEG of the image in `file`, at most `size` pixels on its longer side, upright (EXIF orientation)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                _check(img)
                if img.format in ("JPEG", "MPO"):
                    img.draft("RGB", (size, size))  # decode at a reduced scale: far less work for a large photo
                if img.width * img.height * 4 > MAX_DECODED_BYTES:
                    raise ThumbnailError("unreadable", f"refused: {img.width}x{img.height} is too large to decode")
                small = ImageOps.exif_transpose(img).convert("RGB")
        small.thumbnail((size, size))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()
    except ThumbnailError:
        raise
    except UnidentifiedImageError:
        raise ThumbnailError("unreadable", "not a recognised image") from None
    except Exception as exc:  # whatever a broken or hostile file makes Pillow raise
        raise ThumbnailError("unreadable", f"cannot decode: {type(exc).__name__}: {exc}"[:300]) from None


def _check(img: Image.Image) -> None:
    if img.format not in ALLOWED_FORMATS:
        raise ThumbnailError("unreadable", f"format {img.format} is not allowed")
    if img.width * img.height > MAX_PIXELS:
        raise ThumbnailError("unreadable", f"refused: more than {MAX_PIXELS:,} pixels")
