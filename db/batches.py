"""Batches and their leases: claiming one for a worker, renewing, releasing, finding the lost ones.

Each function takes a keyword-only `session` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from classifier.outcomes import Outcome
from db.models import BATCH, FINAL_JOB_STATUSES, JOB, Batch, BatchStatus, Job, JobStatus, utcnow
from db.results import BatchWork, record_batch_results


def unfinished_batch_ids(*, session: Session, job_id: int) -> list[int]:
    """Ids of the job's batches that have no results yet, in order."""
    query = (
        select(Batch.id)
        .where(Batch.job_id == job_id, Batch.status.in_([BatchStatus.QUEUED, BatchStatus.RUNNING]))
        .order_by(Batch.seq)
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class Busy:
    """Another live process holds the batch's lease; ask again after `retry_in` seconds."""

    retry_in: float


@dataclass(frozen=True)
class Lease:
    """How long a silent holder keeps a batch, and how many starts a batch gets before it is failed."""

    seconds: float = 30.0
    max_attempts: int = 5


def start_batch(
    *,
    session: Session,
    batch_id: int,
    holder: str = "",
    lease: Lease = Lease(),
    holder_gone: Callable[[str], bool] = lambda _: False,
) -> BatchWork | Busy | None:
    """Claim a batch for `holder`; None when there is nothing to do, Busy while another process runs it.

    A running batch whose holder stopped renewing its lease, or is known to be dead,
    is taken over; one that has been started `lease.max_attempts` times is failed instead.
    """
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":  # SQLite's RETURNING cannot name the joined job's columns
        params = {"batch_id": batch_id, "holder": holder, "now": now, "max_attempts": lease.max_attempts}
        if (queued := session.execute(_CLAIM_QUEUED, params).one_or_none()) is not None:
            return _started(session, batch_id, queued, queued.attempts, now)
    row = session.execute(_CLAIM_SELECT, {"batch_id": batch_id}).one_or_none()
    if row is None or row.status in _BATCH_FINAL or row.job_status in FINAL_JOB_STATUSES:
        return None
    if row.status == BatchStatus.RUNNING and row.holder != holder and not holder_gone(row.holder or ""):
        age = (now - row.heartbeat_at).total_seconds() if row.heartbeat_at else lease.seconds
        if age < lease.seconds:
            return Busy(retry_in=lease.seconds - age + 1)
    if row.attempts >= lease.max_attempts:
        work = _work(batch_id, row, row.attempts + 1)
        reason = f"gave up after {row.attempts} attempts: its worker died or hung each time"
        outcomes = [Outcome(p, error=reason) for p in work.paths]
        record_batch_results(session=session, work=work, outcomes=outcomes, batch_status=BatchStatus.FAILED)
        return None
    claimed = session.execute(
        update(BATCH)
        .where(BATCH.c.id == batch_id, BATCH.c.attempts == row.attempts, BATCH.c.status.not_in(_BATCH_FINAL))
        .values(status=BatchStatus.RUNNING, attempts=row.attempts + 1, holder=holder, started_at=now, heartbeat_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return Busy(retry_in=1.0)  # another delivery claimed it a moment ago
    return _started(session, batch_id, row, row.attempts + 1, now)


def _started(session: Session, batch_id: int, row: Any, attempt: int, now: datetime) -> BatchWork:
    """The work of a batch just claimed (`row`: its claim's row); the job's first claimed batch also starts the job."""
    if row.job_status == JobStatus.QUEUED:  # the condition below settles a race between two first batches
        session.execute(
            update(JOB)
            .where(JOB.c.id == row.job_id, JOB.c.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, started_at=now)
        )
    return _work(batch_id, row, attempt)


def _work(batch_id: int, row: Any, attempt: int) -> BatchWork:
    return BatchWork(batch_id, row.job_id, row.model_version, list(row.paths), attempt, row.roots, row.reuse)


_BATCH_FINAL = (BatchStatus.DONE, BatchStatus.FAILED, BatchStatus.CANCELLED)
# The usual claim, of a queued batch of a live job, in one statement (PostgreSQL): no row when the batch
# is running, final or out of attempts, or its job has ended, and start_batch then decides as below.
# Two deliveries of one batch meet on its row lock: the second finds it running and goes the long way.
_CLAIM_QUEUED = (
    update(BATCH)
    .where(
        BATCH.c.id == bindparam("batch_id"), BATCH.c.status == BatchStatus.QUEUED,
        BATCH.c.attempts < bindparam("max_attempts"), JOB.c.id == BATCH.c.job_id,
        JOB.c.status.not_in(FINAL_JOB_STATUSES),
    )
    .values(
        status=BatchStatus.RUNNING, attempts=BATCH.c.attempts + 1, holder=bindparam("holder"),
        started_at=bindparam("now", type_=BATCH.c.started_at.type), heartbeat_at=bindparam("now"),
    )
    .returning(
        BATCH.c.paths, BATCH.c.attempts, BATCH.c.job_id, JOB.c.model_version, JOB.c.roots, JOB.c.reuse,
        JOB.c.status.label("job_status"),
    )
)  # fmt: skip
# Core, not the ORM: a worker runs it once per batch, and loading a Job entity cost more than the query.
_CLAIM_SELECT = (
    select(
        BATCH.c.status, BATCH.c.paths, BATCH.c.attempts, BATCH.c.holder, BATCH.c.heartbeat_at, BATCH.c.job_id,
        JOB.c.model_version, JOB.c.roots, JOB.c.reuse, JOB.c.status.label("job_status"),
    )
    .join(JOB, JOB.c.id == BATCH.c.job_id)
    .where(BATCH.c.id == bindparam("batch_id"))
)  # fmt: skip


def renew_lease(*, session: Session, batch_id: int, holder: str) -> bool:
    """Record that `holder` is still running the batch; False if it no longer holds it."""
    renewed = session.execute(
        update(BATCH)
        .where(BATCH.c.id == batch_id, BATCH.c.holder == holder, BATCH.c.status == BatchStatus.RUNNING)
        .values(heartbeat_at=utcnow())
    )
    return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]


def release_batch(*, session: Session, batch_id: int, holder: str, error: str) -> None:
    """Give a batch back after a failed attempt, so its next delivery can start it at once."""
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.holder == holder, Batch.status == BatchStatus.RUNNING)
        .values(status=BatchStatus.QUEUED, holder=None, error=error)
    )


def mark_sent(*, session: Session, batch_ids: list[int]) -> None:
    if batch_ids:
        session.execute(update(Batch).where(Batch.id.in_(batch_ids)).values(sent_at=utcnow()))


def lost_batch_ids(*, session: Session, lease: Lease, resend_after: float, queue_is_empty: bool) -> list[int]:
    """Batches of unfinished jobs that no message will deliver any more.

    A running batch whose holder stopped renewing its lease is lost. A queued one is
    presumed lost only when the broker's queue is empty and it was sent more than
    `resend_after` seconds ago: the broker forgot it (a Redis restart empties queues).
    """
    now = utcnow()
    sent_long_ago = or_(Batch.sent_at.is_(None), Batch.sent_at < now - timedelta(seconds=resend_after))
    stale_running = and_(
        Batch.status == BatchStatus.RUNNING, Batch.heartbeat_at < now - timedelta(seconds=lease.seconds)
    )
    # A lapsed batch is sent again once, then again only `resend_after` later: the first message may still
    # be on its way to a worker, and a queue of copies would only be work for the workers to turn down.
    conditions = [and_(stale_running, or_(Batch.sent_at.is_(None), Batch.sent_at < Batch.heartbeat_at, sent_long_ago))]
    if queue_is_empty:
        conditions.append(and_(Batch.status == BatchStatus.QUEUED, sent_long_ago))
    query = (
        select(Batch.id)
        .join(Job, Job.id == Batch.job_id)
        .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]), or_(*conditions))
        .order_by(Batch.job_id, Batch.seq)
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class BatchCensus:
    """What the control plane exports about batches (control/metrics.py)."""

    queued: int  # of unfinished jobs, waiting for a worker
    running: int  # of unfinished jobs, held by a worker
    failed: int  # every batch whose images were failed after its last attempt, of any job
    lease_lapsed: int  # running, but its holder has been silent for a lease
    oldest_queued_seconds: float  # since the oldest queued batch was (last) sent; 0 when none waits


def batch_census(*, session: Session, lease_seconds: float) -> BatchCensus:
    now = utcnow()
    live = (
        select(Batch.status, func.count(), func.min(Batch.sent_at))
        .join(Job, Job.id == Batch.job_id)
        .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .where(Batch.status.in_([BatchStatus.QUEUED, BatchStatus.RUNNING]))
        .group_by(Batch.status)
    )
    counts, oldest = {BatchStatus.QUEUED: 0, BatchStatus.RUNNING: 0}, None
    for status, count, sent_at in session.execute(live):
        counts[status] = count
        oldest = sent_at if status == BatchStatus.QUEUED else oldest
    lapsed = session.scalar(
        select(func.count())
        .select_from(Batch)
        .where(Batch.status == BatchStatus.RUNNING, Batch.heartbeat_at < now - timedelta(seconds=lease_seconds))
    )
    failed = session.scalar(select(func.count()).select_from(Batch).where(Batch.status == BatchStatus.FAILED))
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return BatchCensus(counts[BatchStatus.QUEUED], counts[BatchStatus.RUNNING], failed or 0, lapsed or 0, age)
