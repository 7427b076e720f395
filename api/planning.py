"""Turning a folder into a job: validate it, then record its images in batches and send one task per batch."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from classifier.preprocess import IMAGE_SUFFIXES, iter_image_files
from db.queries import add_batch, finish_planning

log = logging.getLogger(__name__)


class FolderError(ValueError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def validate_folder(folder: str) -> Path:
    """Return the folder's absolute path, or raise FolderError with an HTTP status and a clear reason."""
    path = Path(folder).expanduser()
    if not path.is_absolute():
        raise FolderError(422, f"folder must be an absolute path: {folder!r}")
    if not path.exists():
        raise FolderError(404, f"folder does not exist: {folder}")
    if not path.is_dir():
        raise FolderError(422, f"not a folder: {folder}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise FolderError(403, f"folder is not readable: {folder}")
    path = path.resolve()
    if next(iter_image_files(path), None) is None:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise FolderError(422, f"no images in folder {folder} (searched recursively for {suffixes})")
    return path


def plan_job(
    job_id: int,
    folder: Path,
    batch_size: int,
    sessions: sessionmaker[Session],
    enqueue: Callable[[int], None],
    max_images: int,
) -> int:
    """Record every image under `folder` in batches of `batch_size`, sending each batch once it is committed."""
    seq, count, pending = 0, 0, []
    error = None
    try:
        for path in iter_image_files(folder):
            if count == max_images:
                error = f"folder has more than {max_images:,} images; only the first {max_images:,} were submitted"
                break
            pending.append(str(path))
            count += 1
            if len(pending) == batch_size:
                _commit_and_send(job_id, seq, pending, sessions, enqueue)
                seq, pending = seq + 1, []
        if pending:
            _commit_and_send(job_id, seq, pending, sessions, enqueue)
    except OSError as exc:
        error = f"listing the folder failed after {count} images: {exc}"
        log.exception("job %s: %s", job_id, error)
    with sessions.begin() as session:
        finish_planning(session=session, job_id=job_id, error=error)
    return count


def _commit_and_send(
    job_id: int, seq: int, paths: list[str], sessions: sessionmaker[Session], enqueue: Callable[[int], None]
) -> None:
    with sessions.begin() as session:
        batch_id = add_batch(session=session, job_id=job_id, seq=seq, paths=paths)
    enqueue(batch_id)
