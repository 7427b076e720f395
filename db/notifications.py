"""A job's completion webhook: which deliveries are due, claiming an attempt, recording its outcome.

This module owns the job's notify_* columns (db.jobs.create_job sets notify_url, and makes it due). An
attempt is claimed before it is sent: the count goes up and notify_next_at moves past the attempt's end, a
lease. A sender that dies mid-attempt leaves the delivery to be tried again once the lease lapses (that
attempt counts): delivery is at least once. notify_next_at is None once no attempt will follow.

Each function takes a keyword-only `session` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import FINAL_JOB_STATUSES, Job, utcnow

INTERRUPTED = "the last attempt did not finish (its sender stopped); no attempts are left"


def url_without_query(url: str) -> str:
    """The URL without its query string and fragment, which may hold a receiver's token: what is shown and logged."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def due_notifications(*, session: Session, max_attempts: int, limit: int) -> list[int]:
    """Ended jobs whose next delivery attempt is due, the longest waiting first."""
    query = (
        select(Job.id)
        .where(Job.notify_next_at <= utcnow(), Job.status.in_(FINAL_JOB_STATUSES), Job.notify_attempts < max_attempts)
        .order_by(Job.notify_next_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def claim_attempt(*, session: Session, job_id: int, max_attempts: int, lease_seconds: float) -> Job | None:
    """Count a new attempt and hold the delivery for `lease_seconds`; the job (its notify_attempts is this
    attempt's number), or None when it is not due (claimed meanwhile, delivered, deleted)."""
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.notify_next_at <= now, Job.status.in_(FINAL_JOB_STATUSES))
        .where(Job.notify_attempts < max_attempts)
        .values(notify_attempts=Job.notify_attempts + 1, notify_next_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Job, job_id, populate_existing=True)


def record_delivered(*, session: Session, job_id: int) -> None:
    """A receiver answered 2xx: no attempt follows."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.notified_at.is_(None))
        .values(notified_at=utcnow(), notify_next_at=None, notify_error=None)
        .execution_options(synchronize_session=False)
    )


def record_failed(*, session: Session, job_id: int, attempt: int, error: str, retry_after: float | None) -> None:
    """Attempt number `attempt` failed: try again in `retry_after` seconds (None: never). An attempt that a
    later one has overtaken (its lease lapsed meanwhile) records nothing."""
    next_at = None if retry_after is None else utcnow() + timedelta(seconds=retry_after)
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.notified_at.is_(None), Job.notify_attempts == attempt)
        .values(notify_error=error[:1000], notify_next_at=next_at)
        .execution_options(synchronize_session=False)
    )


def end_exhausted(*, session: Session, max_attempts: int) -> list[int]:
    """End the deliveries whose last attempt's lease lapsed without an outcome; return their jobs' ids. (It
    writes only when there are some: SQLite would lock the database for an UPDATE that changes nothing.)"""
    lapsed = (Job.notify_next_at <= utcnow(), Job.notify_attempts >= max_attempts)
    ids = list(session.scalars(select(Job.id).where(*lapsed)))
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), *lapsed)
            .values(notify_next_at=None, notify_error=INTERRUPTED)
            .execution_options(synchronize_session=False)
        )
    return ids
