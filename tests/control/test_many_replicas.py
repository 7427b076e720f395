"""Two API processes and two sweeper services on one database and broker: one sweeper acts at a time,
and a job still survives its broker being emptied mid-job, with every image once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from cli import services
from control.sweep import ADVISORY_LOCK_KEY
from db.models import Result
from tests.conftest import API_TOKEN, AUTH, CATSDOGS, RedisServer, service_env, sessions_for

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
IMAGES = 600


def _lock_holders(url: str) -> int:
    with sessions_for(url)() as session:
        return int(session.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :key"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ), {"key": ADVISORY_LOCK_KEY}) or 0)  # fmt: skip


def test_two_apis_and_two_sweepers_keep_one_sweeper_acting(
    start_worker: Callable[..., Any],
    fresh_pg_url: str,
    model_store: Path,
    queue_name: str,
    private_redis: RedisServer,
    tmp_path: Path,
    reliability_report: Callable[..., None],
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted((CATSDOGS / "test" / "cat").glob("*.jpg"))[:IMAGES]:
        (folder / photo.name).symlink_to(photo)
    env = {**service_env(fresh_pg_url, model_store, queue_name, API_TOKEN=API_TOKEN,
                         ALLOWED_ROOTS=f"{tmp_path},{CATSDOGS}", BATCH_SIZE="16", SWEEP_INTERVAL="0.3",
                         RESEND_AFTER="2", LEASE_SECONDS="10"), "BROKER_URL": private_redis.url}  # fmt: skip
    procs = []
    try:
        apis = [services.start_api(env, tmp_path / f"api-{i}.log") for i in range(2)]  # each sweeps too
        procs += [proc for proc, _ in apis]
        procs += [services.start_sweeper(env, tmp_path / f"sweeper-{i}.log") for i in range(2)]
        start_worker({**env, "TORCH_THREADS": "1"}, concurrency=2)
        url = apis[1][1]
        job_id = httpx.post(f"{apis[0][1]}/jobs", json={"folder": str(folder)}, headers=AUTH, timeout=30).json()["id"]
        samples, emptied = [], False
        while (job := httpx.get(f"{url}/jobs/{job_id}", headers=AUTH, timeout=30).json())["status"] == "queued" or (
            job["status"] == "running"
        ):
            samples.append(_lock_holders(fresh_pg_url))
            if not emptied and job["counts"]["done"] >= 64:
                private_redis.restart()  # every queued task is gone: the one acting sweeper sends them again
                emptied = True
            time.sleep(0.05)
    finally:
        for proc in procs:
            services.stop(proc)
    with sessions_for(fresh_pg_url)() as session:
        rows, distinct = session.execute(
            select(func.count(), func.count(func.distinct(Result.path))).where(Result.job_id == job_id)
        ).one()
    reliability_report(images=distinct, broker_restarts=private_redis.restarts, lost=IMAGES - distinct,
                       duplicated=rows - distinct)  # fmt: skip
    assert job["status"] == "succeeded" and rows == distinct == IMAGES, job
    assert emptied and max(samples) == 1, samples  # never two sweepers acting at once
    assert samples.count(1) >= len(samples) * 0.9, samples  # and nearly always one
