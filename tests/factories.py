"""Small bad and unusual inputs, made on the fly (real photos come from the shared data folder)."""

from __future__ import annotations

import io
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
