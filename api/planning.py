"""Turning a folder into a job: validate it, then record its images in batches and send one task per batch."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from classifier.files import (
    IMAGE_SUFFIXES,
    Skipped,
    is_within,
    iter_image_files,
    path_to_text,
    resolve_path,
    text_to_path,
)
from db.queries import add_batch, finish_planning, record_skipped

log = logging.getLogger(__name__)


class FolderError(ValueError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def validate_folder(folder: str, allowed_roots: Sequence[Path] | None) -> Path:
    """Return the folder's resolved path, or raise FolderError with an HTTP status and a clear reason.

    `folder` is a path's text, in the form the API shows paths in (classifier.files.path_to_text).

    The folder, with its symlinks and ".." resolved, must lie inside one of `allowed_roots`
    (resolved too), which is checked before anything else, so that a folder elsewhere is
    refused without saying whether it exists. An empty list refuses every folder; None
    allows any (development mode).
    """
    path = _checked_path(folder)
    resolved = resolve_path(path)
    if allowed_roots is not None:
        _check_within(folder, resolved, allowed_roots)
    _check_lengths(folder, path)
    if resolved is None:
        raise FolderError(422, f"folder cannot be resolved (symlink loop): {folder}")
    if not resolved.exists():
        raise FolderError(404, f"folder does not exist: {folder}")
    if not resolved.is_dir():
        raise FolderError(422, f"not a folder: {folder}")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise FolderError(403, f"folder is not readable: {folder}")
    if next(iter_image_files(resolved, listing_roots(resolved, allowed_roots)), None) is None:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise FolderError(422, f"no images in folder {folder} (searched recursively for {suffixes})")
    return resolved


NAME_MAX, PATH_MAX = 255, 4096  # bytes, as Linux limits a file name and a whole path


def _checked_path(folder: str) -> Path:
    """The path `folder` names, or FolderError(422) for text that cannot name a folder on this system."""
    if "\x00" in folder:
        raise FolderError(422, "folder must not contain a NUL character")
    path = text_to_path(folder)
    if not path.is_absolute():
        hint = " ('~' is not expanded: the API's home folder means nothing to a client)" if folder[:1] == "~" else ""
        raise FolderError(422, f"folder must be an absolute path{hint}: {folder!r}")
    return path


def _check_lengths(folder: str, path: Path) -> None:
    """404 for a path longer than the system allows any path to be: no such folder can exist."""
    raw = os.fsencode(path)
    if len(raw) >= PATH_MAX:
        raise FolderError(
            404, f"folder does not exist: its path is {len(raw):,} bytes, over the {PATH_MAX - 1:,} allowed"
        )
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise FolderError(404, f"folder does not exist: a name on its path is over {NAME_MAX} bytes: {folder}")


def listing_roots(folder: Path, allowed_roots: Sequence[Path] | None) -> list[Path]:
    """Where the listing's symlinked files may lead: the allowed roots, or anywhere (None: development mode)."""
    return [Path(folder.anchor)] if allowed_roots is None else list(allowed_roots)


def _check_within(folder: str, resolved: Path | None, allowed_roots: Sequence[Path]) -> None:
    if not allowed_roots:
        raise FolderError(
            403, "ALLOWED_ROOTS is not set, so the API accepts no folder: set it to the folders jobs may read"
        )
    roots = [r for r in map(resolve_path, allowed_roots) if r is not None]
    if resolved is None or not is_within(resolved, roots):
        names = ", ".join(str(r) for r in allowed_roots)
        raise FolderError(403, f"folder {folder} is outside the allowed roots ({names}); see ALLOWED_ROOTS")


def plan_job(
    job_id: int,
    folder: Path,
    batch_size: int,
    sessions: sessionmaker[Session],
    enqueue: Callable[[int], None],
    max_images: int,
    allowed_roots: Sequence[Path] | None,
) -> int:
    """Record every image under `folder` in batches of `batch_size`, sending each batch once it is committed.

    The last full batch is held back until the listing ends, then shared evenly with the rest
    (`even_tail`), so that a job never ends on one worker finishing a full batch while the
    others idle after a small one.

    Paths are recorded as their text (classifier.files.path_to_text), whatever bytes their names hold.

    A symlinked file whose target is outside `allowed_roots` is left out (see validate_folder); every
    file left out is counted on the job with its reason (classifier.files.SKIP_REASONS).
    """
    seq, count = 0, 0
    held: list[str] = []
    pending: list[str] = []
    error = None
    enqueue = _until_the_broker_fails(job_id, enqueue)
    skipped = _SkipRecorder(job_id, sessions)
    try:
        for path in iter_image_files(folder, listing_roots(folder, allowed_roots), skipped.tally):
            if count == max_images:
                error = f"folder has more than {max_images:,} images; only the first {max_images:,} were submitted"
                break
            pending.append(path_to_text(path))
            count += 1
            if len(pending) == batch_size:
                if held:
                    _commit_and_send(job_id, seq, held, sessions, enqueue)
                    skipped.record_if_changed()
                    seq += 1
                held, pending = pending, []
    except OSError as exc:
        error = f"listing the folder failed after {count} images: {exc}"
        log.exception("job %s: %s", job_id, error)
    for batch in even_tail(held + pending, batch_size):
        _commit_and_send(job_id, seq, batch, sessions, enqueue)
        seq += 1
    skipped.record_if_changed()
    with sessions.begin() as session:
        finish_planning(session=session, job_id=job_id, error=error)
    return count


class _SkipRecorder:
    """The files a listing leaves out, written to the job whenever the count has changed since the last write."""

    def __init__(self, job_id: int, sessions: sessionmaker[Session]) -> None:
        self.job_id, self.sessions = job_id, sessions
        self.tally, self.recorded = Skipped(), 0

    def record_if_changed(self) -> None:
        if self.tally.total == self.recorded:
            return
        detail = {"counts": self.tally.counts, "examples": self.tally.examples}
        with self.sessions.begin() as session:
            record_skipped(session=session, job_id=self.job_id, count=self.tally.total, detail=detail)
        self.recorded = self.tally.total
        log.info("job %s: %d file(s) left out so far: %s", self.job_id, self.tally.total, self.tally.counts)


def even_tail(paths: list[str], batch_size: int) -> list[list[str]]:
    """The last one or two batches of a listing: up to a full batch as one, more split in two halves."""
    if len(paths) <= batch_size:
        return [paths] if paths else []
    half = (len(paths) + 1) // 2
    return [paths[:half], paths[half:]]


def _until_the_broker_fails(job_id: int, enqueue: Callable[[int], None]) -> Callable[[int], None]:
    """Send batches until sending fails once; record the rest without sending them.

    Every batch is committed before it is sent, so none is lost: the sweeper (workers.sweep) sends
    recorded batches that no message delivers once the broker answers again. Not retrying each batch
    keeps a long listing from waiting out the broker's retry policy thousands of times.
    """
    failed = False

    def send(batch_id: int) -> None:
        nonlocal failed
        if failed:
            return
        try:
            enqueue(batch_id)
        except Exception as exc:
            failed = True
            log.warning(
                "job %s: sending batch %s failed (%s: %s); the rest of the folder is recorded without sending, "
                "and the sweeper sends it when the broker answers",
                job_id, batch_id, type(exc).__name__, exc,
            )  # fmt: skip

    return send


def _commit_and_send(
    job_id: int, seq: int, paths: list[str], sessions: sessionmaker[Session], enqueue: Callable[[int], None]
) -> None:
    with sessions.begin() as session:
        batch_id = add_batch(session=session, job_id=job_id, seq=seq, paths=paths)
    enqueue(batch_id)
