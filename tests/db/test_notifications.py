"""A webhook's delivery state on PostgreSQL and SQLite, each test rolled back at the end."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from classifier.store import read_all_meta
from db.jobs import cancel_job, create_job, get_job
from db.models import Job
from db.notifications import (
    INTERRUPTED,
    claim_attempt,
    due_notifications,
    end_exhausted,
    record_delivered,
    record_failed,
    url_without_query,
)
from db.registry import register_missing

URL = "https://hooks.example.com/catsdogs?token=t"


def _job(session: Session, model_store: Path, notify_url: str | None = URL) -> int:
    register_missing(session=session, metas=read_all_meta(model_store))
    return create_job(session=session, folder="/photos", model_version="v1", batch_size=4, notify_url=notify_url).id


def _due(session: Session, job_id: int, max_attempts: int = 3) -> bool:
    return job_id in due_notifications(session=session, max_attempts=max_attempts, limit=10_000)


def _state(session: Session, job_id: int) -> Job:
    session.expire_all()
    job = get_job(session=session, job_id=job_id)
    assert job is not None
    return job


def test_a_delivery_is_due_once_the_job_has_ended(session: Session, model_store: Path) -> None:
    job_id, silent = _job(session, model_store), _job(session, model_store, notify_url=None)
    assert not _due(session, job_id)  # queued: not yet
    assert claim_attempt(session=session, job_id=job_id, max_attempts=3, lease_seconds=60) is None
    cancel_job(session=session, job_id=job_id)
    cancel_job(session=session, job_id=silent)
    assert _due(session, job_id) and not _due(session, silent)
    job = claim_attempt(session=session, job_id=job_id, max_attempts=3, lease_seconds=60)
    assert job is not None and job.notify_attempts == 1
    assert not _due(session, job_id)  # held by its lease
    assert claim_attempt(session=session, job_id=job_id, max_attempts=3, lease_seconds=60) is None
    record_delivered(session=session, job_id=job_id)
    job = _state(session, job_id)
    assert job.notified_at is not None and job.notify_next_at is None and not _due(session, job_id)


def test_a_failed_attempt_is_retried_and_a_stale_outcome_is_ignored(session: Session, model_store: Path) -> None:
    job_id = _job(session, model_store)
    cancel_job(session=session, job_id=job_id)
    assert claim_attempt(session=session, job_id=job_id, max_attempts=3, lease_seconds=0) is not None
    # Its sender died: the lease has lapsed, so the delivery is claimed again (at least once).
    assert claim_attempt(session=session, job_id=job_id, max_attempts=3, lease_seconds=60) is not None
    record_failed(session=session, job_id=job_id, attempt=1, error="late", retry_after=0)  # overtaken: no effect
    assert _state(session, job_id).notify_error is None and not _due(session, job_id)
    record_failed(session=session, job_id=job_id, attempt=2, error="answered HTTP 503", retry_after=0)
    assert _due(session, job_id) and _state(session, job_id).notify_error == "answered HTTP 503"
    assert claim_attempt(session=session, job_id=job_id, max_attempts=3, lease_seconds=60) is not None
    record_failed(session=session, job_id=job_id, attempt=3, error="answered HTTP 404", retry_after=None)
    job = _state(session, job_id)
    assert (job.notify_attempts, job.notify_next_at, job.notified_at) == (3, None, None)


def test_a_last_attempt_that_never_finished_is_ended(session: Session, model_store: Path) -> None:
    job_id = _job(session, model_store)
    cancel_job(session=session, job_id=job_id)
    assert claim_attempt(session=session, job_id=job_id, max_attempts=1, lease_seconds=0) is not None
    assert not _due(session, job_id, max_attempts=1)
    assert job_id in end_exhausted(session=session, max_attempts=1)
    job = _state(session, job_id)
    assert (job.notify_next_at, job.notify_error) == (None, INTERRUPTED)
    assert job_id not in end_exhausted(session=session, max_attempts=1)


def test_the_url_shown_has_no_query_string() -> None:
    assert url_without_query(URL + "#frag") == "https://hooks.example.com/catsdogs"
    assert url_without_query("http://h:8080/a/b") == "http://h:8080/a/b"
