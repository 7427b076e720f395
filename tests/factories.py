"""Small bad and unusual inputs, made on the fly (real photos come from the shared data folder), and jobs
made whole in the database."""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from classifier.outcomes import Outcome
from classifier.store import read_all_meta
from db.batches import start_batch
from db.corrections import record_correction
from db.jobs import add_batch, create_job, finish_planning
from db.models import Job, JobStatus, Result, ResultStatus
from db.registry import register_missing
from db.results import record_batch_results


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


# --- hostile images -----------------------------------------------------------------------------------------


def tiff_bytes(entries: list[tuple[int, int, int, bytes]], data: bytes = b"") -> bytes:
    """A little-endian TIFF with one IFD of (tag, type, count, value bytes) entries, then `data`."""
    header, base = b"II*\x00" + struct.pack("<I", 8), 8 + 2 + 12 * len(entries) + 4
    body, extra = struct.pack("<H", len(entries)), b""
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
        else:
            body += struct.pack("<HHII", tag, kind, count, base + len(extra))
            extra += value
    return header + body + struct.pack("<I", 0) + extra + data


def jpeg_with_mistyped_exif() -> bytes:
    """A small JPEG whose EXIF block stores ResolutionUnit (a SHORT tag) as text, with an orientation
    to apply: Pillow writes the EXIF block back while transposing and raises struct.error."""
    exif = tiff_bytes([(0x0112, 3, 1, struct.pack("<H", 6)), (0x0128, 2, 3, b"ab\x00")])
    img = Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", exif=b"Exif\x00\x00" + exif)
    return buffer.getvalue()


def tiff16_with_rational_strip_offset() -> bytes:
    """An 8x8 16-bit TIFF whose StripOffsets is a RATIONAL: Pillow raises TypeError when it seeks there."""
    pixels = np.full((8, 8), 30000, np.uint16).tobytes()
    short = lambda v: struct.pack("<H", v)  # noqa: E731
    entries = [(256, 3, 1, short(8)), (257, 3, 1, short(8)), (258, 3, 1, short(16)), (259, 3, 1, short(1)),
               (262, 3, 1, short(1)), (273, 5, 1, struct.pack("<II", 1000, 3)), (277, 3, 1, short(1)),
               (278, 3, 1, short(8)), (279, 4, 1, struct.pack("<I", len(pixels)))]  # fmt: skip
    return tiff_bytes(entries, pixels)


def fuzz_seeds(photo: Path, size: int = 48) -> dict[str, bytes]:
    """Real photo bytes in every allowed format, small so that thousands decode in seconds."""
    rgb = Image.open(photo).convert("RGB").resize((size, size))
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "camera"

    def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, fmt, **options)
        return buffer.getvalue()

    return {
        "jpeg": encode(rgb, "JPEG", exif=exif.tobytes()),
        "png": encode(rgb, "PNG"),
        "png16": encode(gray16, "PNG"),
        "tiff": encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff16": encode(gray16, "TIFF"),
        "tiff_float": encode(Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255), "TIFF"),
        "webp": encode(rgb, "WEBP"),
        "gif": encode(rgb, "GIF"),
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few random byte edits: bit flips, boundary values, deletions and duplicated runs."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i, op = rng.randrange(len(out)), rng.random()
        if op < 0.5:
            out[i] ^= 1 << rng.randrange(8)
        elif op < 0.7:
            out[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif op < 0.8:
            out[i : i + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x00\x10"])
        elif op < 0.9:
            del out[i : i + rng.randint(1, 16)]
        else:
            j = rng.randrange(len(out))
            out[i:i] = out[j : j + rng.randint(1, 16)]
    return bytes(out)


# --- jobs in the database -------------------------------------------------------------------------------


def job_with_results(*, session: Session, model_store: Path, rows: int, status: JobStatus = JobStatus.SUCCEEDED) -> int:
    """A listed job with one batch and `rows` results, written directly (no worker), with model v1 of
    `model_store`: every tenth failed, paths CSV and JSON must quote, the first result corrected twice and
    the third once. Returns its id."""
    register_missing(session=session, metas=read_all_meta(model_store))
    job_id = create_job(session=session, folder="/photos", model_version="v1", batch_size=max(rows, 1)).id
    batch_id = add_batch(session=session, job_id=job_id, seq=0, paths=["/photos/a.jpg"])
    failed = len(range(0, rows, 10))
    counts = {"total": rows, "done": rows - failed, "failed": failed}
    session.execute(update(Job).where(Job.id == job_id).values(status=status, planned=True, **counts))
    if rows:
        session.execute(insert(Result), [_result_row(job_id, batch_id, i) for i in range(rows)])
        first = session.scalars(select(Result.id).where(Result.job_id == job_id).order_by(Result.id)).all()[:3]
        for result_id, label in zip([first[0], first[0], first[-1]], ["dog", "neither", "cat"], strict=True):
            record_correction(session=session, result_id=result_id, label=label, who="test")
    return job_id


def _result_row(job_id: int, batch_id: int, i: int) -> dict[str, Any]:
    failed = i % 10 == 0
    return {
        "job_id": job_id,
        "batch_id": batch_id,
        "path": f'/photos/{i}, "é"\n.jpg',
        "status": ResultStatus.FAILED if failed else ResultStatus.OK,
        "label": None if failed else ("cat", "dog")[i % 2],
        "confidence": None if failed else (i % 997) / 997 + 1e-9,
        "model_version": "v1",
        "error": "cannot decode: truncated, or not an image" if failed else None,
    }


def recorded_job(
    session: Session, version: str, outcomes: list[Outcome], folder: str = "/photos", roots: list[str] | None = None
) -> int:
    """A job of one batch whose outcomes are recorded as a worker records them; its id."""
    job = create_job(session=session, folder=folder, model_version=version, batch_size=len(outcomes), roots=roots)
    batch_id = add_batch(session=session, job_id=job.id, seq=0, paths=[o.path for o in outcomes])
    finish_planning(session=session, job_id=job.id)
    work = start_batch(session=session, batch_id=batch_id)
    assert work is not None and record_batch_results(session=session, work=work, outcomes=outcomes)
    return job.id
