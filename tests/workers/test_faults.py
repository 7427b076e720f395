"""Faults injected into a running job: the database stays the source of truth.

Every test ends with the same check: each image of the job has exactly one
result row, and nothing is marked failed because of the fault. Each fault runs on
one backend (the lease and counter logic is shared; tests/db runs it on both).
Each test records what it did and what became of the images (reliability_report in
tests/conftest.py): the table at the end of `pytest -m reliability`.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select, text

from db.models import Result
from settings import Settings
from tests.conftest import (
    API_TOKEN,
    BATCH_SIZE,
    CATSDOGS,
    REDIS_URL,
    ControlledClient,
    RedisServer,
    service_env,
    sessions_for,
    wait_listed,
)
from tests.factories import bad_inputs, copy_photos
from tests.workers.test_end_to_end import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
IMAGES = 1000


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 real photos (the first 500 of each class of the test split), as symlinks."""
    folder = tmp_path_factory.mktemp("photos")
    for label in ("cat", "dog"):
        (folder / label).mkdir()
        for photo in sorted((CATSDOGS / "test" / label).glob("*.jpg"))[: IMAGES // 2]:
            (folder / label / photo.name).symlink_to(photo)
    return folder


@pytest.fixture
def api_client(allowed_roots: list[Path]) -> Callable[..., TestClient]:
    """Call with (db_url, model_store, queue_name, broker=REDIS_URL) for an API with a short sweep interval."""

    def make(db_url: str, model_store: Path, queue_name: str, broker: str = REDIS_URL) -> TestClient:
        settings = Settings(
            database_url=db_url, broker_url=broker, model_store=model_store, queue_name=queue_name,
            batch_size=BATCH_SIZE, sweep_interval=1.0, resend_after=3.0, lease_seconds=10.0,
            api_token=SecretStr(API_TOKEN), allowed_roots=allowed_roots,
        )  # fmt: skip
        return ControlledClient(settings)

    return make


def _record_and_check(
    record: Callable[..., None], db_url: str, job_id: int, job: dict[str, Any], expected: int = IMAGES, **faults: int
) -> None:
    """Record the faults tried and what became of the images; then check that each has exactly one result."""
    rows, distinct = _result_rows(db_url, job_id)
    record(images=distinct, lost=expected - distinct, duplicated=rows - distinct, **faults)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {
        "total": expected,
        "done": expected,
        "failed": 0,
        "remaining": 0,
        "skipped": 0,
        "reused": 0,
    }
    assert rows == distinct == expected


def _result_rows(db_url: str, job_id: int) -> tuple[int, int]:
    """The job's result rows, and how many distinct paths they are for."""
    with sessions_for(db_url)() as session:
        rows, distinct = session.execute(
            select(func.count(), func.count(func.distinct(Result.path))).where(Result.job_id == job_id)
        ).one()
    return int(rows), int(distinct)


def _progress(client: TestClient, job_id: int) -> int:
    counts = client.get(f"/jobs/{job_id}").json()["counts"]
    return int(counts["done"] + counts["failed"])


def test_pool_processes_killed_again_and_again(
    start_worker: Callable[..., Any],
    pg_url: str,
    model_store: Path,
    queue_name: str,
    job_folder: Path,
    api_client: Callable[..., TestClient],
    reliability_report: Callable[..., None],
) -> None:
    worker = start_worker(service_env(pg_url, model_store, queue_name, TORCH_THREADS="1"), concurrency=2)
    with api_client(pg_url, model_store, queue_name) as client:
        job_id = client.post("/jobs", json={"folder": str(job_folder)}).json()["id"]
        # A kill each time the job has moved on by an eighth, however fast the machine classifies,
        # and never twice before other batches have finished.
        kills, killed_at = 0, -IMAGES
        while client.get(f"/jobs/{job_id}").json()["status"] in ("queued", "running") and kills < 6:
            time.sleep(0.1)
            done, children = _progress(client, job_id), psutil.Process(worker.proc.pid).children()
            if children and done > 0 and done >= killed_at + IMAGES // 8:
                with contextlib.suppress(ProcessLookupError):  # it may have just been replaced
                    os.kill(random.choice(children).pid, signal.SIGKILL)
                    kills, killed_at = kills + 1, done
        job = wait_for(client, job_id)
    _record_and_check(reliability_report, pg_url, job_id, job, kills=kills)
    assert kills >= 3


def test_redis_restarted_and_emptied_mid_job(
    start_worker: Callable[..., Any],
    sqlite_url: str,
    model_store: Path,
    queue_name: str,
    private_redis: RedisServer,
    job_folder: Path,
    api_client: Callable[..., TestClient],
    reliability_report: Callable[..., None],
) -> None:
    broker = private_redis.url
    start_worker({**service_env(sqlite_url, model_store, queue_name), "BROKER_URL": broker})
    with api_client(sqlite_url, model_store, queue_name, broker) as client:
        job_id = client.post("/jobs", json={"folder": str(job_folder)}).json()["id"]
        _wait(lambda: _progress(client, job_id) >= 128)
        private_redis.restart()  # every queued task is gone
        assert _progress(client, job_id) < IMAGES
        job = wait_for(client, job_id, timeout=240)
    _record_and_check(reliability_report, sqlite_url, job_id, job, broker_restarts=private_redis.restarts)


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None or os.geteuid() != 0, reason="needs to restart PostgreSQL")
def test_postgres_restarted_mid_job(
    start_worker: Callable[..., Any],
    pg_url: str,
    model_store: Path,
    queue_name: str,
    job_folder: Path,
    api_client: Callable[..., TestClient],
    reliability_report: Callable[..., None],
) -> None:
    start_worker(service_env(pg_url, model_store, queue_name))
    with api_client(pg_url, model_store, queue_name) as client:
        job_id = client.post("/jobs", json={"folder": str(job_folder)}).json()["id"]
        _wait(lambda: _progress(client, job_id) >= 128)
        started = _postgres_started_at(pg_url)
        version = sorted(os.listdir("/etc/postgresql"))[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True)
        job = _wait_through_outage(client, job_id)
    restarts = int(_postgres_started_at(pg_url) > started)
    _record_and_check(reliability_report, pg_url, job_id, job, database_restarts=restarts)
    assert restarts == 1


def _postgres_started_at(url: str) -> datetime:
    with sessions_for(url)() as session:
        started: datetime = session.scalar(text("SELECT pg_postmaster_start_time()"))
    return started


def _wait_through_outage(client: TestClient, job_id: int, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return wait_for(client, job_id, timeout=deadline - time.monotonic())
        except Exception:  # the API's own connections were cut by the restart
            time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s")


def test_every_batch_delivered_twice_to_two_workers(
    start_worker: Callable[..., Any],
    pg_url: str,
    model_store: Path,
    queue_name: str,
    job_folder: Path,
    api_client: Callable[..., TestClient],
    reliability_report: Callable[..., None],
) -> None:
    with api_client(pg_url, model_store, queue_name) as client:
        job_id = client.post("/jobs", json={"folder": str(job_folder)}).json()["id"]
        wait_listed(client, job_id)
        sent_again = client.post(f"/jobs/{job_id}/resume").json()["batches_sent"]
        env = service_env(pg_url, model_store, queue_name, TORCH_THREADS="1")
        start_worker(env), start_worker(env)
        job = wait_for(client, job_id)
    _record_and_check(reliability_report, pg_url, job_id, job, duplicate_deliveries=sent_again)
    assert sent_again == IMAGES // BATCH_SIZE + 1


def test_a_batch_that_always_fails_ends_after_bounded_attempts(
    start_worker: Callable[..., Any],
    sqlite_url: str,
    model_store: Path,
    queue_name: str,
    tmp_path: Path,
    photos: list[Path],
    api_client: Callable[..., TestClient],
    reliability_report: Callable[..., None],
) -> None:
    broken_store = tmp_path / "models"
    shutil.copytree(model_store, broken_store)
    with open(broken_store / "v1" / "model.pt", "ab") as weights:
        weights.write(b"corrupt")  # every load of this model fails its checksum
    start_worker(service_env(sqlite_url, broken_store, queue_name))
    folder = tmp_path / "photos"
    copy_photos(photos[:3], folder)
    with api_client(sqlite_url, broken_store, queue_name) as client:
        job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        job = wait_for(client, job_id, timeout=120)
        failed = client.get(f"/jobs/{job_id}/results", params={"status": "failed"}).json()["items"]
    rows, distinct = _result_rows(sqlite_url, job_id)
    reliability_report(images=distinct, bad_inputs=1, lost=3 - distinct, duplicated=rows - distinct)
    assert job["status"] == "failed" and job["counts"]["failed"] == 3
    assert all(item["error"].startswith("failed 5 times: ValueError") for item in failed)
    assert all("sha256" in item["error"] for item in failed)


BAD_INPUT_REASONS = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "cannot decode",
    "notes.jpg": "not a recognised image",
    "garbage.png": "not a recognised image",
    "bomb.png": "refused",
    "icon.jpg": "format ICO is not allowed",
    "gone.jpg": "file not found",
}
BAD_INPUTS_SKIPPED = {"pipe.jpg": "not_regular_file"}  # left out by the listing, counted on the job


def test_bad_files_fail_one_by_one_and_spare_their_batch(
    start_worker: Callable[..., Any],
    sqlite_url: str,
    model_store: Path,
    queue_name: str,
    tmp_path: Path,
    photos: list[Path],
    api_client: Callable[..., TestClient],
    reliability_report: Callable[..., None],
) -> None:
    folder = tmp_path / "mixed"
    copy_photos(photos, folder)
    bad = bad_inputs(folder / "bad", photos[0])  # all in one batch with the photos
    start_worker(service_env(sqlite_url, model_store, queue_name))
    with api_client(sqlite_url, model_store, queue_name) as client:
        job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        job = wait_for(client, job_id, timeout=120)
        failed = client.get(f"/jobs/{job_id}/results", params={"status": "failed"}).json()["items"]
        summary = client.get(f"/jobs/{job_id}/summary").json()
    expected = len(photos) + len(bad) - len(BAD_INPUTS_SKIPPED)
    rows, distinct = _result_rows(sqlite_url, job_id)
    reliability_report(images=distinct, bad_inputs=len(bad), lost=expected - distinct, duplicated=rows - distinct)
    assert job["status"] == "partially_failed"
    assert job["counts"] == {"total": expected, "done": len(photos), "failed": expected - len(photos), "remaining": 0,
                             "skipped": len(BAD_INPUTS_SKIPPED), "reused": 0}  # fmt: skip
    assert summary["skipped"]["counts"] == {"not_regular_file": 1}
    assert [Path(p).name for p in summary["skipped"]["examples"]["not_regular_file"]] == ["pipe.jpg"]
    reasons = {Path(item["path"]).name: item["error"] for item in failed}
    assert reasons.keys() == BAD_INPUT_REASONS.keys()
    assert all(reasons[name].startswith(reason) for name, reason in BAD_INPUT_REASONS.items()), reasons
    assert rows == distinct == expected


def _wait(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")
