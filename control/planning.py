"""Listing a job's folder into batches: durable, so that a planner that dies is continued by another.

The walk's order is fixed (classifier.files.iter_image_paths), each batch is committed with the
listing's cursor (its last path) under the planner's lease, and a planner that takes a job over
continues after the cursor: no file is listed into two batches, none is skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from classifier.files import Skipped, iter_image_folders, listing_roots, paths_to_texts, text_to_path
from db.batches import unfinished_batch_ids
from db.jobs import ListingClaim, ListingLost, add_batch, claim_listing, finish_planning, record_skipped, renew_listing
from db.models import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """One job's folder, as its planner lists it."""

    job_id: int
    folder: Path  # resolved
    batch_size: int
    roots: Sequence[Path] | None  # where its symlinked files may lead (None: anywhere, development mode)
    max_images: int


@dataclass(frozen=True)
class PlannerLease:
    planner: str  # this planner's name ("host:pid", db.holders.this_process)
    seconds: float  # a planner silent this long has lost the listing
    holder_gone: Callable[[str], bool]


def job_listing(job: Job, max_images: int) -> Listing:
    """The listing of a recorded job, for a planner that continues it."""
    roots = None if job.roots is None else [text_to_path(root) for root in job.roots]
    return Listing(job.id, text_to_path(job.folder), job.batch_size, roots, max_images)


def plan_job(
    listing: Listing, sessions: sessionmaker[Session], send: Callable[[int], None], lease: PlannerLease
) -> int | None:
    """Claim the job's listing and record every image of its folder in batches of `listing.batch_size`,
    sending each batch once it is committed; return the images in the job, or None when another
    planner holds the listing (or it is complete, or the job has ended).

    A claim of a listing that another planner began continues after its cursor. The last full batch
    is held back until the listing ends, then shared evenly with the rest (`even_tail`), so that a job
    never ends on one worker finishing a full batch while the others idle after a small one. Paths are
    recorded as their text (classifier.files.path_to_text), whatever bytes their names hold. Every file
    left out is counted on the job with its reason (classifier.files.SKIP_REASONS).
    """
    with sessions.begin() as session:
        claim = claim_listing(
            session=session,
            job_id=listing.job_id,
            planner=lease.planner,
            lease_seconds=lease.seconds,
            holder_gone=lease.holder_gone,
        )
    if claim is None:
        return None
    if claim.cursor is not None:
        log.warning("job %s: continuing its listing after %s (%d images listed)", listing.job_id, claim.cursor,
                    claim.listed)  # fmt: skip
        _send_recorded(listing.job_id, sessions, send)
    try:
        return _Planner(listing, sessions, send, lease, claim).run()
    except ListingLost:
        log.warning("job %s: another planner took the listing over; this one stops", listing.job_id)
        return None


def _send_recorded(job_id: int, sessions: sessionmaker[Session], send: Callable[[int], None]) -> None:
    """Send the unfinished batches a dead planner recorded: the last may never have been sent. Sending
    one that is still queued is harmless (a batch's results are recorded once)."""
    with sessions() as session:
        batch_ids = unfinished_batch_ids(session=session, job_id=job_id)
    send = _until_the_broker_fails(job_id, send)
    for batch_id in batch_ids:
        send(batch_id)


class _Planner:
    """The state of one planner's listing of one job."""

    def __init__(
        self,
        listing: Listing,
        sessions: sessionmaker[Session],
        send: Callable[[int], None],
        lease: PlannerLease,
        claim: ListingClaim,
    ) -> None:
        self.listing, self.sessions, self.lease = listing, sessions, lease
        self.send = _until_the_broker_fails(listing.job_id, send)
        self.seq, self.count = claim.next_seq, claim.listed
        self.after = _WalkPosition(listing.folder, claim.cursor)
        self.held: list[str] = []
        self.pending: list[str] = []
        self.skipped = _SkipRecorder(listing.job_id, sessions)  # the walk starts at the top: it counts everything
        self.renewed = time.monotonic()

    def run(self) -> int:
        listing, error, limit = self.listing, None, self.listing.max_images
        roots = listing_roots(listing.folder, listing.roots)
        try:
            for paths in iter_image_folders(listing.folder, roots, self.skipped.tally):
                if self.after.key is not None:
                    paths = [path for path in paths if not self.after.covers(path)]
                if len(paths) > (room := limit - self.count):
                    self._add(paths_to_texts(paths[:room]))
                    error = f"folder has more than {limit:,} images; only the first {limit:,} were submitted"
                    break
                self._add(paths_to_texts(paths))
        except OSError as exc:
            error = f"listing the folder failed after {self.count} images: {exc}"
            log.exception("job %s: %s", listing.job_id, error)
        for batch in even_tail(self.held + self.pending, listing.batch_size):
            self._commit_and_send(batch)
        self.skipped.record_if_changed()
        with self.sessions.begin() as session:
            finish_planning(session=session, job_id=listing.job_id, error=error, planner=self.lease.planner)
        return self.count

    def _add(self, texts: list[str]) -> None:
        """Take a folder's next images: each batch they fill becomes the one held back, and the one held
        before it is committed and sent."""
        self.count += len(texts)
        start, room = 0, self.listing.batch_size - len(self.pending)
        while len(texts) - start >= room:
            self.pending.extend(texts[start : start + room])
            start, room = start + room, self.listing.batch_size
            if self.held:
                self._commit_and_send(self.held)
                self.skipped.record_if_changed()
            self.held, self.pending = self.pending, []
        self.pending.extend(texts[start:])
        if time.monotonic() - self.renewed > self.lease.seconds / 3:
            self._renew()

    def _commit_and_send(self, paths: list[str]) -> None:
        with self.sessions.begin() as session:
            batch_id = add_batch(
                session=session, job_id=self.listing.job_id, seq=self.seq, paths=paths, planner=self.lease.planner
            )
        self.seq += 1
        self.renewed = time.monotonic()
        self.send(batch_id)

    def _renew(self) -> None:
        with self.sessions.begin() as session:
            if not renew_listing(session=session, job_id=self.listing.job_id, planner=self.lease.planner):
                raise ListingLost(f"job {self.listing.job_id}")
        self.renewed = time.monotonic()


class _WalkPosition:
    """Whether a path comes at or before a cursor in the walk's order: a folder's files (by name) before
    its sub-folders (by name), depth first, as classifier.files.iter_image_folders lists them."""

    def __init__(self, folder: Path, cursor: str | None) -> None:
        self.folder = os.fspath(folder)
        self.key = None if cursor is None else self._key(os.fspath(text_to_path(cursor)))

    def _key(self, path: str) -> tuple[tuple[int, str], ...]:
        parts = os.path.relpath(path, self.folder).split(os.sep)
        return (*((1, part) for part in parts[:-1]), (0, parts[-1]))

    def covers(self, path: str) -> bool:
        if self.key is None:
            return False
        if self._key(os.fspath(path)) <= self.key:
            return True
        self.key = None  # the walk's order only rises: every later path is past the cursor too
        return False


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


def _until_the_broker_fails(job_id: int, send: Callable[[int], None]) -> Callable[[int], None]:
    """Send batches until sending fails once; record the rest without sending them.

    Every batch is committed before it is sent, so none is lost: the sweeper (control.sweep) sends
    recorded batches that no message delivers once the broker answers again. Not retrying each batch
    keeps a long listing from waiting out the broker's retry policy thousands of times.
    """
    failed = False

    def send_until_failure(batch_id: int) -> None:
        nonlocal failed
        if failed:
            return
        try:
            send(batch_id)
        except Exception as exc:
            failed = True
            log.warning(
                "job %s: sending batch %s failed (%s: %s); the rest of the folder is recorded without sending, "
                "and the sweeper sends it when the broker answers",
                job_id, batch_id, type(exc).__name__, exc,
            )  # fmt: skip

    return send_until_failure
