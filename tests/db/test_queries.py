"""Query functions on PostgreSQL and SQLite, each test rolled back at the end."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from classifier import store
from classifier.outcomes import Outcome
from classifier.store import read_all_meta
from db.batches import Busy, Lease, lost_batch_ids, start_batch, unfinished_batch_ids
from db.jobs import add_batch, cancel_job, create_job, finish_planning, get_job
from db.models import BatchStatus, JobStatus, ResultStatus
from db.registry import latest_model_version, list_models, register_missing, register_model
from db.results import (
    BatchWork,
    ResultFilter,
    earlier_results,
    failure_reasons,
    label_counts,
    list_results,
    lookup_engine,
    record_batch_results,
)
from tests.conftest import sessions_for


@pytest.fixture
def version(session: Session, model_store: Path) -> str:
    register_missing(session=session, metas=read_all_meta(model_store))
    latest = latest_model_version(session=session)
    assert latest == store.latest_version(model_store)
    return latest


def _job_with_batches(session: Session, version: str, batches: list[list[str]]) -> tuple[int, list[int]]:
    job = create_job(session=session, folder="/photos", model_version=version, batch_size=2)
    ids = [add_batch(session=session, job_id=job.id, seq=i, paths=p) for i, p in enumerate(batches)]
    finish_planning(session=session, job_id=job.id)
    return job.id, ids


def _run(session: Session, batch_id: int, outcomes: list[Outcome]) -> bool:
    work = start_batch(session=session, batch_id=batch_id)
    assert work is not None
    return record_batch_results(session=session, work=work, outcomes=outcomes)


def test_registering_a_model_twice_is_a_no_op(session: Session, model_store: Path, version: str) -> None:
    assert register_missing(session=session, metas=read_all_meta(model_store)) == []
    assert [m.version for m in list_models(session=session)] == [version]


def test_job_succeeds_when_every_batch_is_recorded(session: Session, version: str) -> None:
    job_id, (b1, b2) = _job_with_batches(session, version, [["/a.jpg", "/b.jpg"], ["/c.jpg"]])
    assert _run(session, b1, [Outcome("/a.jpg", "cat", 0.9), Outcome("/b.jpg", "dog", 0.8)])
    job = get_job(session=session, job_id=job_id)
    assert job is not None and job.status == JobStatus.RUNNING and job.done == 2 and job.total == 3
    assert _run(session, b2, [Outcome("/c.jpg", "cat", 0.7)])
    session.refresh(job)
    assert (job.status, job.done, job.failed, job.finished_at is not None) == (JobStatus.SUCCEEDED, 3, 0, True)


def test_failed_images_make_a_partial_failure(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg", "/b.jpg"]])
    _run(session, b1, [Outcome("/a.jpg", "cat", 0.9), Outcome("/b.jpg", error="empty file (0 bytes)")])
    job = get_job(session=session, job_id=job_id)
    assert job is not None and (job.status, job.done, job.failed) == (JobStatus.PARTIALLY_FAILED, 1, 1)
    assert failure_reasons(session=session, job_id=job_id) == {"empty file (0 bytes)": 1}


def test_results_are_stored_exactly_as_given(session: Session, version: str) -> None:
    paths = ['/p/{a,b} "q".jpg', "/p/NULL", "/p/é\\n.jpg", "/p/last.jpg"]
    job_id, (b1,) = _job_with_batches(session, version, [paths])
    outcomes = [Outcome(paths[0], "cat", 0.123456789), Outcome(paths[1], error="x, {y}"),
                Outcome(paths[2], "dog", 1.0), Outcome(paths[3], "cat", 0.1 + 0.2)]  # fmt: skip
    assert _run(session, b1, outcomes)
    stored = list_results(session=session, job_id=job_id, filters=ResultFilter())
    got = [(r.path, r.status, r.label, r.confidence, r.error, r.model_version) for r in stored]
    assert got == [
        (paths[0], ResultStatus.OK, "cat", 0.123456789, None, version),
        (paths[1], ResultStatus.FAILED, None, None, "x, {y}", version),
        (paths[2], ResultStatus.OK, "dog", 1.0, None, version),
        (paths[3], ResultStatus.OK, "cat", 0.1 + 0.2, None, version),  # every bit of a float kept
    ]


def test_earlier_results_are_found_by_hash_and_model_and_counted_as_reused(session: Session, version: str) -> None:
    h1, h2, h3 = (bytes([n]) * 32 for n in (1, 2, 3))
    first, (b1,) = _job_with_batches(session, version, [["/a.jpg", "/b.jpg", "/c.jpg"]])
    outcomes = [Outcome("/a.jpg", "cat", 0.9, content_hash=h1), Outcome("/b.jpg", error="bad", content_hash=h2),
                Outcome("/c.jpg", "dog", 0.6)]  # fmt: skip
    assert _run(session, b1, outcomes)
    stored = list_results(session=session, job_id=first, filters=ResultFilter())
    assert [r.content_hash for r in stored] == [h1, h2, None]
    found = earlier_results(session=session, model_version=version, hashes=[h1, h2, h3])
    assert found == {h1: ("cat", 0.9)}  # a failed result is never reused
    assert earlier_results(session=session, model_version="v999", hashes=[h1]) == {}
    second, (b2,) = _job_with_batches(session, version, [["/a.jpg", "/d.jpg"]])
    reused = [Outcome("/a.jpg", "cat", 0.9, content_hash=h1, reused=True), Outcome("/d.jpg", "dog", 0.7)]
    assert _run(session, b2, reused)
    job = get_job(session=session, job_id=second)
    assert job is not None and (job.status, job.done, job.reused) == (JobStatus.SUCCEEDED, 2, 1)


def test_earlier_results_are_found_by_hash_across_folders_and_only_for_their_model(
    session: Session, version: str, model_store: Path
) -> None:
    other = f"v-other-{uuid.uuid4().hex[:8]}"
    register_model(session=session, meta={**read_all_meta(model_store)[0], "version": other})
    mine, theirs, unseen = (os.urandom(32) for _ in range(3))  # the session's database holds other tests' hashes
    top = f"/reruns-{uuid.uuid4().hex}"
    _record_one(session, version, f"{top}/2024", Outcome(f"{top}/2024/a.jpg", "cat", 0.9, content_hash=mine))
    _record_one(session, other, f"{top}/old", Outcome(f"{top}/old/b.jpg", "dog", 0.8, content_hash=theirs))
    # A job over any folder (a copy of these files in a new one) looks up by hash and model version, never by folder.
    found = earlier_results(session=session, model_version=version, hashes=[mine, theirs, unseen])
    assert found == {mine: ("cat", 0.9)}  # `theirs` is known to another model only
    assert earlier_results(session=session, model_version=other, hashes=[mine, theirs]) == {theirs: ("dog", 0.8)}


def _record_one(session: Session, model_version: str, folder: str, outcome: Outcome) -> None:
    job = create_job(session=session, folder=folder, model_version=model_version, batch_size=2)
    batch = add_batch(session=session, job_id=job.id, seq=0, paths=[outcome.path])
    finish_planning(session=session, job_id=job.id)
    assert _run(session, batch, [outcome])


def test_a_batch_recorded_twice_counts_once(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    work = start_batch(session=session, batch_id=b1)
    assert work is not None
    outcome = [Outcome("/a.jpg", "cat", 0.9)]
    assert record_batch_results(session=session, work=work, outcomes=outcome)
    assert not record_batch_results(session=session, work=work, outcomes=outcome)
    assert start_batch(session=session, batch_id=b1) is None
    job = get_job(session=session, job_id=job_id)
    assert job is not None and job.done == 1
    assert len(list_results(session=session, job_id=job_id, filters=ResultFilter())) == 1


def test_start_batch_counts_attempts(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    start_batch(session=session, batch_id=b1)
    start_batch(session=session, batch_id=b1)
    job = get_job(session=session, job_id=job_id)
    assert job is not None
    assert [(b.status, b.attempts) for b in job.batches] == [(BatchStatus.RUNNING, 2)]


def test_results_filter_and_paginate_stably(session: Session, version: str) -> None:
    paths = [f"/{i}.jpg" for i in range(10)]
    job_id, (b1,) = _job_with_batches(session, version, [paths])
    outcomes = [Outcome(p, "cat" if i % 2 else "dog", i / 10) for i, p in enumerate(paths)]
    _run(session, b1, outcomes)
    cats = ResultFilter(label="cat", min_confidence=0.3)
    first = list_results(session=session, job_id=job_id, filters=cats, limit=2)
    rest = list_results(session=session, job_id=job_id, filters=cats, after_id=first[-1].id, limit=10)
    assert [r.path for r in [*first, *rest]] == ["/3.jpg", "/5.jpg", "/7.jpg", "/9.jpg"]
    assert all(r.status == ResultStatus.OK and r.model_version == version for r in first)
    assert label_counts(session=session, job_id=job_id) == {"cat": 5, "dog": 5}


def test_empty_listing_fails_the_job_instead_of_hanging(session: Session, version: str) -> None:
    job_id, _ = _job_with_batches(session, version, [])
    job = get_job(session=session, job_id=job_id)
    assert job is not None and job.status == JobStatus.FAILED


def test_cancelling_skips_batches_not_yet_run(session: Session, version: str) -> None:
    job_id, (b1, b2) = _job_with_batches(session, version, [["/a.jpg"], ["/b.jpg"]])
    _run(session, b1, [Outcome("/a.jpg", "cat", 0.9)])
    assert unfinished_batch_ids(session=session, job_id=job_id) == [b2]
    assert cancel_job(session=session, job_id=job_id)
    assert not cancel_job(session=session, job_id=job_id)
    assert start_batch(session=session, batch_id=b2) is None
    assert unfinished_batch_ids(session=session, job_id=job_id) == []
    job = get_job(session=session, job_id=job_id)
    assert job is not None and (job.status, job.done) == (JobStatus.CANCELLED, 1)


def test_a_live_holder_keeps_its_batch(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    first = start_batch(session=session, batch_id=b1, holder="host:1")
    assert isinstance(first, BatchWork) and first.attempt == 1
    again = start_batch(session=session, batch_id=b1, holder="host:2")
    assert isinstance(again, Busy) and 0 < again.retry_in <= 31


def test_a_dead_holders_batch_is_taken_over(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    start_batch(session=session, batch_id=b1, holder="host:1")
    taken = start_batch(session=session, batch_id=b1, holder="host:2", holder_gone=lambda h: h == "host:1")
    assert isinstance(taken, BatchWork) and taken.attempt == 2


def test_a_silent_holders_lease_lapses(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    short = Lease(seconds=0.0)
    start_batch(session=session, batch_id=b1, holder="host:1", lease=short)
    assert b1 in lost_batch_ids(session=session, lease=short, resend_after=60, queue_is_empty=False)
    assert isinstance(start_batch(session=session, batch_id=b1, holder="host:2", lease=short), BatchWork)


def test_a_batch_that_never_finishes_is_failed_after_max_attempts(session: Session, version: str) -> None:
    job_id, (b1,) = _job_with_batches(session, version, [["/a.jpg", "/b.jpg"]])
    lease = Lease(seconds=30, max_attempts=2)
    for pid in (1, 2):
        start_batch(session=session, batch_id=b1, holder=f"host:{pid}", lease=lease, holder_gone=lambda _: True)
    assert start_batch(session=session, batch_id=b1, holder="host:3", lease=lease, holder_gone=lambda _: True) is None
    job = get_job(session=session, job_id=job_id)
    assert job is not None and (job.status, job.failed) == (JobStatus.FAILED, 2)
    assert list(failure_reasons(session=session, job_id=job_id)) == [
        "gave up after 2 attempts: its worker died or hung each time"
    ]


def test_queued_batches_count_as_lost_only_when_the_queue_is_empty(session: Session, version: str) -> None:
    _, (b1,) = _job_with_batches(session, version, [["/a.jpg"]])
    lease = Lease()

    def lost(**kwargs: Any) -> bool:  # other tests' committed jobs may share this database
        return b1 in lost_batch_ids(session=session, lease=lease, **kwargs)

    assert not lost(resend_after=0, queue_is_empty=False)
    assert lost(resend_after=0, queue_is_empty=True)
    assert not lost(resend_after=3600, queue_is_empty=True)


def test_the_lookup_engine_answers_in_one_statement_under_its_planner_settings(pg_url: str, model_store: Path) -> None:
    mine = os.urandom(32)
    with sessions_for(pg_url).begin() as session:  # committed: the lookup runs on a connection of its own
        register_missing(session=session, metas=read_all_meta(model_store))
        version = latest_model_version(session=session)
        assert version is not None
        outcome = Outcome("/x/a.jpg", "dog", 0.75, content_hash=mine)
        _record_one(session, version, f"/lookup-{uuid.uuid4().hex}", outcome)
    engine = lookup_engine(pg_url)
    with Session(engine) as session:
        settings = session.execute(text("SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan')"))
        assert tuple(settings.one()) == ("force_generic_plan", "off")
        assert session.connection().connection.driver_connection.autocommit  # type: ignore[union-attr]
        for _ in range(7):  # past psycopg's prepare threshold: the prepared generic plan gives the same answer
            assert earlier_results(session=session, model_version=version, hashes=[mine, os.urandom(32)]) == {
                mine: ("dog", 0.75)
            }
    engine.dispose()
