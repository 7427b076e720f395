"""Small bad and unusual inputs, made on the fly (real photos come from the shared data folder)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def corrupt_files(folder: Path, photo: Path) -> dict[str, Path]:
    """Write files that cannot be decoded; return them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    data = photo.read_bytes()
    files = {
        "zero_bytes": folder / "empty.jpg",
        "truncated": folder / "truncated.jpg",
        "text": folder / "notes.jpg",
        "garbage": folder / "garbage.png",
    }
    files["zero_bytes"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["text"].write_text("<html><body>not a photo</body></html>\n")
    files["garbage"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return files


def bad_inputs(folder: Path, photo: Path) -> dict[str, Path]:
    """corrupt_files, and worse: a decompression bomb, a format outside the allow-list, a dangling
    symlink, and a FIFO named like a photo (opening it for reading waits for a writer)."""
    files = corrupt_files(folder, photo)
    files |= {"bomb": folder / "bomb.png", "icon": folder / "icon.jpg", "dangling": folder / "gone.jpg"}
    Image.new("1", (10_000, 6_000)).save(files["bomb"])  # 60 megapixels in a few kilobytes
    Image.new("RGB", (16, 16)).save(files["icon"], format="ICO")
    files["dangling"].symlink_to(folder / "deleted.jpg")
    files["fifo"] = folder / "pipe.jpg"
    os.mkfifo(files["fifo"])
    return files


def copy_photos(photos: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, folder / p.name)) for p in photos]


def png_bytes(mode: str, size: tuple[int, int] = (40, 30)) -> bytes:
    if mode == "I;16":
        img = Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16))
    else:
        img = Image.new(mode, size)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()
