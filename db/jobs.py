"""Jobs and their listings: creating, claiming and renewing a listing, ending a job.

Each function takes a keyword-only `session` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Update, and_, bindparam, case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from db.models import BATCH, FINAL_JOB_STATUSES, JOB, Batch, BatchStatus, Job, JobStatus, Result, utcnow


def create_job(
    *,
    session: Session,
    folder: str,
    model_version: str,
    batch_size: int,
    roots: list[str] | None = None,
    notify_url: str | None = None,
    reuse: bool = True,
) -> Job:
    """A queued job; its files may be opened only inside `roots` (texts of resolved folders; None: anywhere).
    With `notify_url`, the control plane POSTs the job there once it ends (db.notifications). With `reuse`,
    a file whose bytes and model match an earlier result gets that result (db.results.earlier_results)."""
    job = Job(folder=folder, model_version=model_version, batch_size=batch_size, status=JobStatus.QUEUED, roots=roots,
              reuse=reuse)  # fmt: skip
    if notify_url is not None:
        job.notify_url, job.notify_next_at = notify_url, utcnow()  # due as soon as the job ends
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    *, session: Session, status: JobStatus | None = None, before_id: int | None = None, limit: int = 50
) -> Sequence[Job]:
    """Jobs newest first, with ids below `before_id` (keyset pagination: stable while jobs are added)."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    if before_id is not None:
        query = query.where(Job.id < before_id)
    return session.scalars(query).all()


class ListingLost(RuntimeError):
    """Another planner has taken the job's listing over: this one must stop (its transaction rolls back)."""


def add_batch(*, session: Session, job_id: int, seq: int, paths: list[str], planner: str | None = None) -> int:
    """Record the next batch of a job's images, grow its total and move the listing's cursor; return the batch id.

    With `planner`, only while that planner holds the listing (else ListingLost, and nothing is recorded).
    """
    held = [] if planner is None else [JOB.c.planner == planner]
    values = {"total": JOB.c.total + len(paths), "plan_cursor": paths[-1], "planner_heartbeat_at": utcnow()}
    moved = session.execute(update(JOB).where(JOB.c.id == job_id, *held).values(**values))
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise ListingLost(f"job {job_id}: the listing is no longer held by {planner}")
    row = {
        "job_id": job_id,
        "seq": seq,
        "paths": paths,
        "status": BatchStatus.QUEUED,
        "attempts": 0,
        "sent_at": utcnow(),
    }
    return int(session.execute(insert(BATCH).returning(BATCH.c.id), row).scalar_one())


def _held_by(planner: str | None) -> list[Any]:
    return [] if planner is None else [Job.planner == planner]


@dataclass(frozen=True)
class ListingClaim:
    """Where a planner that has just claimed a job's listing starts."""

    cursor: str | None  # the last path already recorded in a batch (None: none yet)
    next_seq: int
    listed: int  # images already in batches


def claim_listing(
    *, session: Session, job_id: int, planner: str, lease_seconds: float, holder_gone: Callable[[str], bool]
) -> ListingClaim | None:
    """Take the listing of an unplanned job for `planner`: free, its holder silent for `lease_seconds`, or
    known dead. None when it is held by a live planner, already complete, or the job has ended."""
    row = session.execute(
        select(Job.planner, Job.planner_heartbeat_at, Job.planned, Job.status, Job.plan_cursor, Job.total).where(
            Job.id == job_id
        )
    ).one_or_none()
    if row is None or row.planned or row.status in FINAL_JOB_STATUSES:
        return None
    if row.planner is not None and not _listing_lapsed(
        row.planner, row.planner_heartbeat_at, lease_seconds, holder_gone
    ):
        return None
    same_holder = Job.planner.is_(None) if row.planner is None else Job.planner == row.planner
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.planned.is_(False), same_holder)
        .values(planner=planner, planner_heartbeat_at=utcnow())
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None  # another planner claimed it a moment ago
    last_seq = session.scalar(select(func.max(Batch.seq)).where(Batch.job_id == job_id))
    return ListingClaim(row.plan_cursor, 0 if last_seq is None else last_seq + 1, row.total)


def _listing_lapsed(
    planner: str, heartbeat_at: datetime | None, lease_seconds: float, holder_gone: Callable[[str], bool]
) -> bool:
    silent = heartbeat_at is None or (utcnow() - heartbeat_at).total_seconds() >= lease_seconds
    return silent or holder_gone(planner)


def renew_listing(*, session: Session, job_id: int, planner: str) -> bool:
    """Record that `planner` is still listing the job; False if it no longer holds the listing."""
    renewed = session.execute(
        update(Job).where(Job.id == job_id, Job.planner == planner).values(planner_heartbeat_at=utcnow())
    )
    return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]


def stalled_listings(*, session: Session, lease_seconds: float, holder_gone: Callable[[str], bool]) -> list[int]:
    """Unfinished jobs whose listing is incomplete and nobody is listing: never claimed yet, or its planner died."""
    rows = session.execute(
        select(Job.id, Job.planner, Job.planner_heartbeat_at)
        .where(Job.planned.is_(False), Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .order_by(Job.id)
    )
    return [
        row.id
        for row in rows
        if row.planner is None or _listing_lapsed(row.planner, row.planner_heartbeat_at, lease_seconds, holder_gone)
    ]


def record_skipped(*, session: Session, job_id: int, count: int, detail: dict[str, Any]) -> None:
    """Record how many of the folder's files the listing has left out so far, and why."""
    session.execute(update(Job).where(Job.id == job_id).values(skipped=count, skipped_detail=detail))


def finish_planning(*, session: Session, job_id: int, error: str | None = None, planner: str | None = None) -> None:
    """Mark that every image of the job is in a batch (or that listing failed), then settle it if done.

    With `planner`, only while that planner holds the listing (else ListingLost).
    """
    ended = session.execute(update(Job).where(Job.id == job_id, *_held_by(planner)).values(planned=True, error=error))
    if ended.rowcount != 1:  # type: ignore[attr-defined]
        raise ListingLost(f"job {job_id}: the listing is no longer held by {planner}")
    finalize_if_complete(session, job_id)


def cancel_job(*, session: Session, job_id: int) -> bool:
    """End an unfinished job as cancelled; its batches not yet run are skipped. False if it had already ended."""
    ended = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .values(status=JobStatus.CANCELLED, finished_at=utcnow())
    )
    if ended.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.execute(
        update(Batch)
        .where(Batch.job_id == job_id, Batch.status.in_([BatchStatus.QUEUED, BatchStatus.RUNNING]))
        .values(status=BatchStatus.CANCELLED)
    )
    return True


class JobNotEnded(RuntimeError):
    """The job is queued or running: cancel it first."""


def delete_job(*, session: Session, job_id: int) -> bool:
    """Delete an ended job with its batches, results and corrections; False if there is no such job.

    Raises JobNotEnded while it is queued or running, as its workers and planner are still writing.
    """
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        return False
    if status not in FINAL_JOB_STATUSES:
        raise JobNotEnded(f"job {job_id} is {status.value}: cancel it first")
    # Batches before the job, the order in which a worker closes a batch and then counts on its job (the
    # opposite would deadlock with it). A worker still closing a cancelled job's batch either commits first,
    # and its rows are deleted next, or finds its batch gone and writes nothing (db.results).
    session.execute(delete(Batch).where(Batch.job_id == job_id))
    session.execute(delete(Result).where(Result.job_id == job_id))  # no foreign key to cascade (migration 0005)
    session.execute(delete(Job).where(Job.id == job_id))  # its corrections go by their foreign key (migration 0006)
    return True


def count_results(session: Session, job_id: int, done: int, failed: int, reused: int = 0) -> None:
    """Add a batch's results to the job's counters (`reused` of the `done` are earlier results), and end the
    job if they complete it: one statement, as every worker runs it once per batch."""
    params = {"job": job_id, "done_now": done, "failed_now": failed, "reused_now": reused, "ended_at": utcnow()}
    session.execute(_COUNT_RESULTS, params)


def _final_status(done: Any, failed: Any) -> Any:
    return case(
        (done + failed == 0, JobStatus.FAILED),
        (failed == 0, JobStatus.SUCCEEDED),
        (done == 0, JobStatus.FAILED),
        else_=JobStatus.PARTIALLY_FAILED,
    )


def _count_results() -> Update:
    """Built once: a worker runs it on every batch, and building it cost more than running it. (SET's
    right-hand sides see the row as it was before the statement.)"""
    done, failed = bindparam("done_now", type_=Integer()), bindparam("failed_now", type_=Integer())
    complete = and_(JOB.c.planned.is_(True), JOB.c.done + JOB.c.failed + done + failed >= JOB.c.total,
                    JOB.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))  # fmt: skip
    return (
        update(JOB)
        .where(JOB.c.id == bindparam("job"))
        .values(
            done=JOB.c.done + done,
            failed=JOB.c.failed + failed,
            reused=JOB.c.reused + bindparam("reused_now", type_=Integer()),
            status=case((complete, _final_status(JOB.c.done + done, JOB.c.failed + failed)), else_=JOB.c.status),
            finished_at=case((complete, bindparam("ended_at", type_=JOB.c.finished_at.type)), else_=JOB.c.finished_at),
        )
    )


_COUNT_RESULTS = _count_results()


def finalize_if_complete(session: Session, job_id: int) -> None:
    final_status = _final_status(Job.done, Job.failed)
    session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.planned.is_(True),
            Job.done + Job.failed >= Job.total,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        )
        .values(status=final_status, finished_at=utcnow())
    )


# --- results ----------------------------------------------------------------


def jobs_by_status(*, session: Session) -> dict[str, int]:
    """How many jobs are in each state (every state, 0 where none is)."""
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
    return {status.value: counts.get(status, 0) for status in JobStatus}
