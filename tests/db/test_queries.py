"""Query functions on PostgreSQL and SQLite, each test rolled back at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from classifier import store
from classifier.outcomes import Outcome
from control.registry import sync_model_store
from db import queries
from db.models import BatchStatus, JobStatus, ResultStatus


@pytest.fixture
def version(session: Session, model_store: Path) -> str:
    sync_model_store(session=session, store=model_store)
    latest = queries.latest_model_version(session=session)
    assert latest == store.latest_version(model_store)
    return latest


def _job_with_batches(session: Session, version: str, batches: list[list[str]]) -> tuple[int, list[int]]:
    job = queries.create_job(session=session, folder="/photos", model_version=version, batch_size=2)
    ids = [queries.add_batch(session=session, job_id=job.id, seq=i, paths=p) for i, p in enumerate(batches)]
    queries.finish_planning(session=session, job_id=job.id)
    return job.id, ids


def _run(session: Session, batch_id: int, outcomes: list[queries.Outcome]) -> bool:
    work = queries.start_batch(session=session, batch_id=batch_id)
    assert work is not None
    return queries.record_batch_results(session=session, work=work, outcomes=outcomes)


def test_registering_a_model_twice_is_a_no_op(session: Session, model_store: Path, version: str) -> None:
    assert sync_model_store(session=session, store=model_store) == []
    assert [m.version for m in queries.list_models(session=session)] == [version]


def test_job_succeeds_when_every_batch_is_recorded(session: Session, version: str) -> None:
    job_id, (b1, b2) = _job_with_batches(session, version, [["/a.jpg", "/b.jpg"], ["/c.jpg"]])
    assert _run(session, b1, [Outcome("/a.jpg", "cat", 0.9), Outcome("/b.jpg", "dog", 0.8)])
    job = queries.get_job(session=session, job_id=job_id)
    assert job is not None and job.status == JobStatus.RUNNING and job.done == 2 and job.total == 3
    assert _run(session, b2, [Outcome("/c.jpg", "cat", 0.7)])
    session.refresh(job)
    assert (job.status, job.done, job.failed, job.finished_at is not None) == (JobStatus.SUCCEEDED, 3, 0, True)


def test_failed_images_make_a_partial_failure(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg", "/b.jpg"]])
    _run(session, b1, [Outcome("/a.jpg", "cat", 0.9), Outcome("/b.jpg", error="empty file (0 bytes)")])
    job = queries.get_job(session=session, job_id=job_id)
    assert job is not None and (job.status, job.done, job.failed) == (JobStatus.PARTIALLY_FAILED, 1, 1)
    assert queries.failure_reasons(session=session, job_id=job_id) == {"empty file (0 bytes)": 1}


def test_results_are_stored_exactly_as_given(session: Session, version: str) -> None:
    paths = ['/p/{a,b} "q".jpg', "/p/NULL", "/p/é\\n.jpg"]
    job_id, (b1,) = _job_with_batches(session, version, [paths])
    outcomes = [Outcome(paths[0], "cat", 0.123456789), Outcome(paths[1], error="x, {y}"),
                Outcome(paths[2], "dog", 1.0)]  # fmt: skip
    assert _run(session, b1, outcomes)
    stored = queries.list_results(session=session, job_id=job_id, filters=queries.ResultFilter())
    got = [(r.path, r.status, r.label, r.confidence, r.error, r.model_version) for r in stored]
    assert got == [
        (paths[0], ResultStatus.OK, "cat", 0.123456789, None, version),
        (paths[1], ResultStatus.FAILED, None, None, "x, {y}", version),
        (paths[2], ResultStatus.OK, "dog", 1.0, None, version),
    ]


def test_a_batch_recorded_twice_counts_once(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    work = queries.start_batch(session=session, batch_id=b1)
    assert work is not None
    outcome = [Outcome("/a.jpg", "cat", 0.9)]
    assert queries.record_batch_results(session=session, work=work, outcomes=outcome)
    assert not queries.record_batch_results(session=session, work=work, outcomes=outcome)
    assert queries.start_batch(session=session, batch_id=b1) is None
    job = queries.get_job(session=session, job_id=job_id)
    assert job is not None and job.done == 1
    assert len(queries.list_results(session=session, job_id=job_id, filters=queries.ResultFilter())) == 1


def test_start_batch_counts_attempts(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    queries.start_batch(session=session, batch_id=b1)
    queries.start_batch(session=session, batch_id=b1)
    job = queries.get_job(session=session, job_id=job_id)
    assert job is not None
    assert [(b.status, b.attempts) for b in job.batches] == [(BatchStatus.RUNNING, 2)]


def test_results_filter_and_paginate_stably(session: Session, version: str) -> None:
    paths = [f"/{i}.jpg" for i in range(10)]
    job_id, (b1,) = _job_with_batches(session, version, [paths])
    outcomes = [Outcome(p, "cat" if i % 2 else "dog", i / 10) for i, p in enumerate(paths)]
    _run(session, b1, outcomes)
    cats = queries.ResultFilter(label="cat", min_confidence=0.3)
    first = queries.list_results(session=session, job_id=job_id, filters=cats, limit=2)
    rest = queries.list_results(session=session, job_id=job_id, filters=cats, after_id=first[-1].id, limit=10)
    assert [r.path for r in [*first, *rest]] == ["/3.jpg", "/5.jpg", "/7.jpg", "/9.jpg"]
    assert all(r.status == ResultStatus.OK and r.model_version == version for r in first)
    assert queries.label_counts(session=session, job_id=job_id) == {"cat": 5, "dog": 5}


def test_empty_listing_fails_the_job_instead_of_hanging(session: Session, version: str) -> None:
    job_id, _ = _job_with_batches(session, version, [])
    job = queries.get_job(session=session, job_id=job_id)
    assert job is not None and job.status == JobStatus.FAILED


def test_cancelling_skips_batches_not_yet_run(session: Session, version: str) -> None:
    job_id, (b1, b2) = _job_with_batches(session, version, [["/a.jpg"], ["/b.jpg"]])
    _run(session, b1, [Outcome("/a.jpg", "cat", 0.9)])
    assert queries.unfinished_batch_ids(session=session, job_id=job_id) == [b2]
    assert queries.cancel_job(session=session, job_id=job_id)
    assert not queries.cancel_job(session=session, job_id=job_id)
    assert queries.start_batch(session=session, batch_id=b2) is None
    assert queries.unfinished_batch_ids(session=session, job_id=job_id) == []
    job = queries.get_job(session=session, job_id=job_id)
    assert job is not None and (job.status, job.done) == (JobStatus.CANCELLED, 1)


def test_a_live_holder_keeps_its_batch(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    first = queries.start_batch(session=session, batch_id=b1, holder="host:1")
    assert isinstance(first, queries.BatchWork) and first.attempt == 1
    again = queries.start_batch(session=session, batch_id=b1, holder="host:2")
    assert isinstance(again, queries.Busy) and 0 < again.retry_in <= 31


def test_a_dead_holders_batch_is_taken_over(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    queries.start_batch(session=session, batch_id=b1, holder="host:1")
    taken = queries.start_batch(session=session, batch_id=b1, holder="host:2", holder_gone=lambda h: h == "host:1")
    assert isinstance(taken, queries.BatchWork) and taken.attempt == 2


def test_a_silent_holders_lease_lapses(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    short = queries.Lease(seconds=0.0)
    queries.start_batch(session=session, batch_id=b1, holder="host:1", lease=short)
    assert b1 in queries.lost_batch_ids(session=session, lease=short, resend_after=60, queue_is_empty=False)
    assert isinstance(
        queries.start_batch(session=session, batch_id=b1, holder="host:2", lease=short), queries.BatchWork
    )


def test_a_batch_that_never_finishes_is_failed_after_max_attempts(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg", "/b.jpg"]])
    lease = queries.Lease(seconds=30, max_attempts=2)
    for pid in (1, 2):
        queries.start_batch(session=session, batch_id=b1, holder=f"host:{pid}", lease=lease, holder_gone=lambda _: True)
    assert (
        queries.start_batch(session=session, batch_id=b1, holder="host:3", lease=lease, holder_gone=lambda _: True)
        is None
    )
    job = queries.get_job(session=session, job_id=job_id)
    assert job is not None and (job.status, job.failed) == (JobStatus.FAILED, 2)
    assert list(queries.failure_reasons(session=session, job_id=job_id)) == [
        "gave up after 2 attempts: its worker died or hung each time"
    ]


def test_queued_batches_count_as_lost_only_when_the_queue_is_empty(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    lease = queries.Lease()

    def lost(**kwargs: Any) -> bool:  # other tests' committed jobs may share this database
        return b1 in queries.lost_batch_ids(session=session, lease=lease, **kwargs)

    assert not lost(resend_after=0, queue_is_empty=False)
    assert lost(resend_after=0, queue_is_empty=True)
    assert not lost(resend_after=3600, queue_is_empty=True)
