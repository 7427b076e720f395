"""Completion webhooks, sent by the real control plane loop to a real HTTP receiver, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from classifier.store import read_all_meta
from control.notify import retry_delay, sign, verify
from db.jobs import add_batch, count_results, create_job, finish_planning
from db.models import Job, JobStatus
from db.registry import register_missing
from settings import Settings
from tests.conftest import REDIS_URL, control_plane, sessions_for
from tests.factories import copy_photos
from tests.webhook_receiver import Receiver, receivers

SECRET = "test-webhook-secret"


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    with receivers() as start:
        yield start


@pytest.fixture(params=["postgresql", "sqlite"])
def own_db_url(request: pytest.FixtureRequest) -> str:
    """A database of the test's own (a sweeper acts on every job in it), on PostgreSQL and on SQLite."""
    url: str = request.getfixturevalue("fresh_pg_url" if request.param == "postgresql" else "sqlite_url")
    return url


def _settings(url: str, queue_name: str, **webhook: Any) -> Settings:
    return Settings(database_url=url, broker_url=REDIS_URL, queue_name=queue_name, sweep_interval=0.2,
                    webhook_secret=SecretStr(SECRET), **webhook)  # fmt: skip


def _ended_job(sessions: sessionmaker[Session], model_store: Path, notify_url: str | None) -> int:
    """A job of three images that a worker has just ended, partially failed; its id."""
    with sessions.begin() as session:
        register_missing(session=session, metas=read_all_meta(model_store))
        job_id = create_job(
            session=session, folder="/photos", model_version="v1", batch_size=3, notify_url=notify_url
        ).id
        add_batch(session=session, job_id=job_id, seq=0, paths=["/photos/a.jpg", "/photos/b.jpg", "/photos/c.jpg"])
        finish_planning(session=session, job_id=job_id)
    with sessions.begin() as session:
        count_results(session, job_id, done=2, failed=1)
    return job_id


def _job(sessions: sessionmaker[Session], job_id: int) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _wait_for(sessions: sessionmaker[Session], job_id: int, settled: Callable[[Job], bool], timeout: float = 30) -> Job:
    deadline = time.monotonic() + timeout
    while not settled(job := _job(sessions, job_id)):
        assert time.monotonic() < deadline, f"job {job_id}: webhook not settled: {job.__dict__}"
        time.sleep(0.05)
    return job


def test_the_signature_covers_timestamp_and_body_and_expires() -> None:
    body, secret = b'{"job_id":1}', SECRET.encode()
    signature = sign(secret, "1000", body)
    assert verify(secret, "1000", signature, body, now=1000 + 299)
    assert not verify(secret, "1000", signature, body, now=1000 + 301)  # replayed later
    assert not verify(secret, "1001", signature, body, now=1000)  # another timestamp
    assert not verify(secret, "1000", signature, body + b" ", now=1000)
    assert not verify(b"another secret", "1000", signature, body, now=1000)
    assert not verify(secret, "soon", signature, body, now=1000)


def test_retry_delays_double_with_bounded_jitter() -> None:
    for attempts in range(1, 9):
        delays = [retry_delay(attempts, 30) for _ in range(200)]
        assert 0.75 * 30 * 2 ** (attempts - 1) <= min(delays) <= max(delays) <= 1.25 * 30 * 2 ** (attempts - 1)
    assert len({retry_delay(1, 30) for _ in range(20)}) > 1
    assert sum(30 * 2 ** (n - 1) for n in range(1, 8)) / 60 == pytest.approx(63.5)  # 8 attempts: about an hour


def test_an_ended_job_is_posted_once_signed_and_a_job_without_url_sends_nothing(
    own_db_url: str, model_store: Path, queue_name: str, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver, sessions = receiver_factory(), sessions_for(own_db_url)
    with control_plane(_settings(own_db_url, queue_name)):
        silent = _ended_job(sessions, model_store, None)
        job_id = _ended_job(sessions, model_store, receiver.url)
        job = _wait_for(sessions, job_id, lambda j: j.notified_at is not None)
        time.sleep(0.6)  # a few more looks: nothing more is sent
    assert len(receiver.requests) == 1
    (request,) = receiver.requests
    headers = request.headers
    assert verify(SECRET.encode(), headers["X-Catsdogs-Timestamp"], headers["X-Catsdogs-Signature"], request.body)
    assert headers["X-Catsdogs-Delivery"] == f"{job_id}.1" and headers["X-Catsdogs-Event"] == "job.ended"
    assert headers["Content-Type"] == "application/json"
    event = json.loads(request.body)
    assert event["job_id"] == job_id and event["status"] == "partially_failed" and event["folder"] == "/photos"
    assert event["counts"] == {"total": 3, "done": 2, "failed": 1, "skipped": 0} and event["model_version"] == "v1"
    assert job.finished_at is not None and event["finished_at"] == job.finished_at.isoformat()
    assert (job.notify_attempts, job.notify_next_at, job.notify_error) == (1, None, None)
    untouched = _job(sessions, silent)
    assert (untouched.notify_url, untouched.notify_attempts, untouched.notified_at) == (None, 0, None)


def test_500s_are_retried_with_growing_delays_until_one_succeeds(
    own_db_url: str, model_store: Path, queue_name: str, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver, sessions, backoff = receiver_factory(fail_first=3), sessions_for(own_db_url), 0.3
    with control_plane(_settings(own_db_url, queue_name, webhook_backoff=backoff)):
        job_id = _ended_job(sessions, model_store, receiver.url)
        job = _wait_for(sessions, job_id, lambda j: j.notified_at is not None)
        time.sleep(1.0)
    assert [r.answered for r in receiver.requests] == [500, 500, 500, 200]  # exactly one success
    assert [r.headers["X-Catsdogs-Delivery"] for r in receiver.requests] == [f"{job_id}.{n}" for n in range(1, 5)]
    assert len({r.body for r in receiver.requests}) == 1  # the same event every time
    gaps = [later.at - earlier.at for earlier, later in zip(receiver.requests, receiver.requests[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        assert gap >= 0.75 * backoff * 2 ** (n - 1) - 0.02, gaps
    assert (job.notify_attempts, job.notify_next_at, job.notify_error) == (4, None, None)


def test_a_receiver_that_never_answers_is_given_up_and_blocks_nothing(
    own_db_url: str,
    model_store: Path,
    queue_name: str,
    receiver_factory: Callable[..., Receiver],
    tmp_path: Path,
    photos: list[Path],
) -> None:
    receiver, sessions = receiver_factory(hang=True), sessions_for(own_db_url)
    settings = _settings(own_db_url, queue_name, webhook_timeout=3, webhook_max_attempts=2, webhook_backoff=0.1)
    copy_photos(photos[:3], tmp_path / "photos")
    with control_plane(settings):
        job_id = _ended_job(sessions, model_store, receiver.url)
        while not receiver.requests:
            time.sleep(0.02)
        with sessions.begin() as session:  # submitted while the first attempt waits for its answer
            other = create_job(session=session, folder=str(tmp_path / "photos"), model_version="v1", batch_size=3).id
        assert _wait_for(sessions, other, lambda j: j.planned, timeout=2.5).total == 3  # listed meanwhile
        waiting = _job(sessions, job_id)
        assert (waiting.notify_attempts, waiting.notify_error) == (1, None)  # the first attempt is still waiting
        job = _wait_for(sessions, job_id, lambda j: j.notify_next_at is None and j.notify_attempts == 2)
    assert len(receiver.requests) == 2 and job.notified_at is None
    assert job.notify_error is not None and "timeout" in job.notify_error
    assert (job.status, job.total, job.done, job.failed) == (JobStatus.PARTIALLY_FAILED, 3, 2, 1)  # unaffected


def test_a_4xx_answer_ends_the_delivery_at_once(
    sqlite_url: str, model_store: Path, queue_name: str, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver, sessions = receiver_factory(fail_first=5, fail_code=410), sessions_for(sqlite_url)
    with control_plane(_settings(sqlite_url, queue_name, webhook_backoff=0.1)):
        job_id = _ended_job(sessions, model_store, receiver.url)
        job = _wait_for(sessions, job_id, lambda j: j.notify_attempts == 1 and j.notify_next_at is None)
        time.sleep(0.6)
    assert [r.answered for r in receiver.requests] == [410]
    assert (job.notified_at, job.notify_error) == (None, "answered HTTP 410")
