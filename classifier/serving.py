"""Serving the network: device choice, decoding a batch of files, the forward pass, labels. No Celery, no database."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.files import text_to_fspath
from classifier.model import predict_proba
from classifier.outcomes import Outcome
from classifier.preprocess import ImageDecodeError, decode_image, read_file, stack
from classifier.store import LoadedModel

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when asked for or available, else CPU. Call only in the process that runs the model."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# A CPU forward pass's largest activation, the stem's output, is 64 x 32 x 32 values per image: 16 MiB
# for 128 images in bf16 or 64 in fp32, half of glibc's largest mmap threshold (keep_freed_memory).
CPU_FORWARD_BATCH = {"bf16": 128, "fp32": 64}
GLIBC_MAX_MMAP_THRESHOLD = 32 << 20  # bytes; glibc refuses a larger one on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def forward_batch(requested: int, batch_size: int, device: torch.device, precision: str) -> int:
    """Images per forward pass: `requested`, or 0 for BATCH_SIZE on a GPU and CPU_FORWARD_BATCH on a CPU."""
    if requested:
        return min(requested, batch_size)
    return batch_size if device.type == "cuda" else min(batch_size, CPU_FORWARD_BATCH[precision])


def keep_freed_memory() -> bool:
    """Keep the memory that PyTorch frees in this process's heap instead of giving it back to the kernel.

    A forward pass allocates its activations and frees them when it ends. By default glibc serves a
    block over its sliding mmap threshold with mmap and trims the top of the heap, so every batch
    page-faults its activations in again: on two cores, 8,000-22,000 faults and 5-130 ms of system
    time per batch of 256 (docs/performance.md). A fixed threshold at glibc's maximum and no trimming
    keep the heap at its peak, which a worker reaches on every batch anyway. A block of 32 MiB or more
    is still mmapped: hence CPU_FORWARD_BATCH. Returns False where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    fixed = libc.mallopt(_M_MMAP_THRESHOLD, GLIBC_MAX_MMAP_THRESHOLD)
    return bool(fixed and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))


ANYWHERE = (Path("/"),)  # a job's roots in development mode: any folder, still without symlink loops


def decode_one(path: str, size: int, roots: Sequence[Path] = ANYWHERE) -> np.ndarray | str:
    """Read, hash and decode a path (as recorded: classifier.files.path_to_text), opened only inside `roots`, to
    a (size, size) uint8 array, or to the reason it could not be: one file as a worker's batch does it."""
    read = _read_one(path, roots)
    return read if isinstance(read, str) else _decode_read(path, roots, read, size)[1]


def predict(model: LoadedModel, images: list[np.ndarray], device: torch.device) -> tuple[list[str], list[float]]:
    """One batched forward pass; return a label and a confidence per image."""
    norm = model.meta["normalization"]
    batch = stack(images)  # uint8: a quarter of float32's bytes to copy; normalised on the device
    if device.type == "cuda":
        batch = batch.pin_memory()
    batch = batch.to(device, non_blocking=True)
    probs = predict_proba(model.net, batch, norm["mean"], norm["std"], model.meta.get("temperature", 1.0))
    confidence, index = probs.max(dim=1)
    classes = model.meta["classes"]
    return [classes[i] for i in index.tolist()], confidence.tolist()


def warm_up(model: LoadedModel, batch_size: int, device: torch.device) -> None:
    """One forward pass on a blank batch: a compiled backend compiles here, not on a job's first batch."""
    size = model.meta["input"]["height"]
    predict(model, [np.zeros((size, size), np.uint8)] * batch_size, device)


StageTimer = Callable[[str, float], None]  # told each stage's name ("decode", "forward") and its seconds


Known = Callable[[list[bytes]], dict[bytes, tuple[str, float]]]  # earlier (label, confidence) by content hash
Read = tuple[bytes, bytes | None]  # a file's SHA-256 and its bytes (None: not kept; read again to decode)
KEEP_BYTES = 512 * 2**20  # a batch's file bytes kept between hashing and decoding; the rest are read twice


def classify(
    paths: Sequence[str],
    model: LoadedModel,
    device: torch.device,
    pool: ThreadPoolExecutor | None = None,
    roots: Sequence[Path] = ANYWHERE,
    timer: StageTimer | None = None,
    known: Known | None = None,
) -> list[Outcome]:
    """Classify one batch of files, opened only inside `roots`; a file that cannot be opened or decoded
    gets an error outcome and spares the rest. Each file's bytes are hashed; with `known`, a file whose
    hash it knows gets that earlier result (reused) without being decoded or run through the network."""
    started = time.perf_counter()
    reads = _keep_within(_map(pool, _read_one, paths, roots), KEEP_BYTES)
    hashes = [r[0] for r in reads if not isinstance(r, str)]
    earlier = known(hashes) if known is not None and hashes else {}
    todo = [i for i, r in enumerate(reads) if not isinstance(r, str) and r[0] not in earlier]
    size = model.meta["input"]["height"]
    decoded = _map(pool, functools.partial(_decode_read, size=size), [paths[i] for i in todo], roots,
                   [reads[i] for i in todo])  # fmt: skip
    decoded_at = time.perf_counter()
    good = [(i, d) for i, d in zip(todo, decoded, strict=True) if not isinstance(d[1], str)]
    labels, confidences = predict(model, [d[1] for _, d in good], device) if good else ([], [])
    if timer is not None:  # predict's .tolist() has waited for the device, so the forward time is whole
        timer("decode", decoded_at - started)
        timer("forward", time.perf_counter() - decoded_at)
    outcomes: list[Outcome] = []
    for path, read in zip(paths, reads, strict=True):
        if isinstance(read, str):
            outcomes.append(Outcome(path, error=read))
        elif read[0] in earlier:
            label, confidence = earlier[read[0]]
            outcomes.append(Outcome(path, label, confidence, content_hash=read[0], reused=True))
        else:
            outcomes.append(Outcome(path))  # filled in below
    for i, (digest, array) in zip(todo, decoded, strict=True):
        if isinstance(array, str):
            outcomes[i] = Outcome(paths[i], error=array, content_hash=digest)
    for (i, (digest, _)), label, confidence in zip(good, labels, confidences, strict=True):
        outcomes[i] = Outcome(paths[i], label, confidence, content_hash=digest)
    return outcomes


def _map(pool: ThreadPoolExecutor | None, fn: Callable[..., Any], paths: Sequence[str], roots: Sequence[Path],
         *more: Sequence[Any]) -> list[Any]:  # fmt: skip
    """fn over each path (with `roots` and the items of `more`), in the pool's threads a run of files at a time:
    a task per file cost more than reading and hashing a small one."""
    calls = list(zip(paths, [roots] * len(paths), *more, strict=True))
    if pool is None:
        return [fn(*call) for call in calls]
    runs = [calls[i : i + _FILES_PER_TASK] for i in range(0, len(calls), _FILES_PER_TASK)]
    return [result for run in pool.map(lambda run: [fn(*call) for call in run], runs) for result in run]


_FILES_PER_TASK = 16


def _read_one(path: str, roots: Sequence[Path]) -> tuple[bytes, bytes] | str:
    """A file's hash and bytes, or the reason it could not be read."""
    try:
        data = read_file(text_to_fspath(path), roots=roots)
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # read_file raises only ImageDecodeError; a file must never fail its batch
        log.exception("reading %s raised %s", path, type(exc).__name__)
        return f"cannot read: {type(exc).__name__}: {exc}"[:500]
    return hashlib.sha256(data).digest(), data


def _keep_within(reads: list[Read | str], budget: int) -> list[Read | str]:
    """The reads with the bytes of those past `budget` dropped (they are read again when decoded)."""
    kept: list[Read | str] = []
    for read in reads:
        if not isinstance(read, str) and read[1] is not None:
            budget -= len(read[1])
            read = read if budget >= 0 else (read[0], None)
        kept.append(read)
    return kept


def _decode_read(path: str, roots: Sequence[Path], read: Read, size: int) -> tuple[bytes, np.ndarray | str]:
    """Decode a read file (reading it again if its bytes were not kept) to its hash and array, or the reason."""
    digest, data = read
    if data is None:
        again = _read_one(path, roots)
        if isinstance(again, str):
            return digest, again
        digest, data = again  # the bytes decoded now are the ones hashed: the file may have changed meanwhile
    try:
        return digest, decode_image(io.BytesIO(data), size)
    except ImageDecodeError as exc:
        return digest, str(exc)
    except Exception as exc:  # decode_image raises only ImageDecodeError; a file must never fail its batch
        log.exception("decoding %s raised %s", path, type(exc).__name__)
        return digest, f"cannot decode: {type(exc).__name__}: {exc}"[:500]


_SIMULATED = os.urandom(24)  # with a count: simulated hashes, distinct, that match no earlier result


def simulate(paths: Sequence[str], images_per_second: float, known: Known | None = None) -> list[Outcome]:
    """Benchmarks only: no file is opened and no network runs. Sleep as long as an accelerator of
    `images_per_second` would take, then answer "cat" at 0.5 for every path. Each path gets a hash that
    matches nothing (the worker host's own cost of hashing is not simulated), looked up in `known` as a
    real batch's are, so that the database pays what it would."""
    hashes = [_SIMULATED + next(_simulated_count).to_bytes(8, "big") for _ in paths]
    if known is not None:
        known(hashes)
    time.sleep(len(paths) / images_per_second)
    return [Outcome(p, "cat", 0.5, content_hash=h) for p, h in zip(paths, hashes, strict=True)]


_simulated_count = count()


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def default_threads(concurrency: int = 1) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))
