"""The API, and the control plane (planner and sweeper), SIGKILLed while a 20,000-file folder is listed: every
job still ends with every image exactly once, and nobody resumes anything by hand.

Real processes: the API (uvicorn), `catsdogs sweeper`, a Celery worker, PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cli import services
from db.models import Batch, Job, Result
from tests.conftest import API_TOKEN, AUTH, service_env, sessions_for

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
IMAGES = 20_000
FINAL = {"succeeded", "failed", "partially_failed", "cancelled"}


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> Path:
    """20,000 hard links to four real photos, in 20 folders of 1,000."""
    root = tmp_path_factory.mktemp("listing-faults")
    sources = [Path(shutil.copyfile(p, root / p.name)) for p in photos[:4]]
    folder = root / "photos"
    for i in range(IMAGES):
        sub = folder / f"d{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], sub / f"{i:06d}.jpg")
    return folder


class ControlPlane:
    """The API and the sweeper as processes of their own, to be SIGKILLed and started again."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.kills = env, logs, 0
        self.api, self.url = services.start_api(env, logs / "api.log")
        self.sweeper = services.start_sweeper(env, logs / "sweeper.log")

    def kill(self, name: str) -> None:
        proc: subprocess.Popen[bytes] = getattr(self, name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1
        if name == "api":
            self.api, self.url = services.start_api(self.env, self.logs / "api.log")
        else:
            self.sweeper = services.start_sweeper(self.env, self.logs / "sweeper.log")

    def stop(self) -> None:
        services.stop(self.api)
        services.stop(self.sweeper)


@pytest.fixture
def control_plane(fresh_pg_url: str, model_store: Path, queue_name: str, tmp_path: Path, big_folder: Path
                  ) -> Iterator[ControlPlane]:  # fmt: skip
    env = service_env(
        fresh_pg_url, model_store, queue_name, API_TOKEN=API_TOKEN, ALLOWED_ROOTS=str(big_folder.parent),
        BATCH_SIZE="32", SWEEP_INTERVAL="0.5", LEASE_SECONDS="10", RESEND_AFTER="2",
    )  # fmt: skip
    plane = ControlPlane(env, tmp_path)
    yield plane
    plane.stop()


def _listed(pg_url: str, job_id: int) -> tuple[int, bool]:
    with sessions_for(pg_url)() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.total, job.planned


def _kill_when(plane: ControlPlane, name: str, url: str, job_id: int, check: Callable[[int, bool], bool]) -> bool:
    """SIGKILL `name` as soon as the listing satisfies `check(total, planned)`; False if it ended first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        total, planned = _listed(url, job_id)
        if check(total, planned):
            plane.kill(name)
            return True
        if planned:
            return False
        time.sleep(0.002)
    raise AssertionError("the listing made no progress")


MOMENTS: dict[str, Callable[[int, bool], bool]] = {
    "right after the 201": lambda total, planned: True,
    "mid-listing": lambda total, planned: total >= IMAGES // 3,
    "after the last batch is recorded": lambda total, planned: total == IMAGES and not planned,
}


def test_the_api_killed_at_three_moments_of_a_listing(
    control_plane: ControlPlane,
    start_worker: Callable[..., Any],
    fresh_pg_url: str,
    model_store: Path,
    queue_name: str,
    big_folder: Path,
    reliability_report: Callable[..., None],
) -> None:
    start_worker(service_env(fresh_pg_url, model_store, queue_name, TORCH_THREADS="1"), concurrency=2)
    hit: dict[str, bool] = {}
    jobs = []
    for moment, check in MOMENTS.items():
        job = httpx.post(f"{control_plane.url}/jobs", json={"folder": str(big_folder)}, headers=AUTH, timeout=30).json()
        hit[moment] = _kill_when(control_plane, "api", fresh_pg_url, job["id"], check)
        jobs.append(job["id"])
    for job_id, killed in zip(jobs, hit.values(), strict=True):
        _assert_exactly_once(control_plane, fresh_pg_url, job_id, reliability_report, kills=int(killed))
    assert hit["right after the 201"] and hit["mid-listing"], hit  # the last moment is a window of milliseconds


def test_the_planner_and_the_sweeper_killed_mid_listing(
    control_plane: ControlPlane,
    start_worker: Callable[..., Any],
    fresh_pg_url: str,
    model_store: Path,
    queue_name: str,
    big_folder: Path,
    reliability_report: Callable[..., None],
) -> None:
    start_worker(service_env(fresh_pg_url, model_store, queue_name, TORCH_THREADS="1"), concurrency=2)
    job = httpx.post(f"{control_plane.url}/jobs", json={"folder": str(big_folder)}, headers=AUTH, timeout=30).json()
    # The control plane lists the job; kill it three times while it lists, then let the fourth one finish.
    kills = 0
    for listed in (2_000, 8_000, 14_000):
        kills += _kill_when(control_plane, "sweeper", fresh_pg_url, job["id"], lambda total, _, n=listed: total >= n)
    assert kills >= 2
    _assert_exactly_once(control_plane, fresh_pg_url, job["id"], reliability_report, kills=kills)


def _assert_exactly_once(
    plane: ControlPlane, fresh_pg_url: str, job_id: int, report: Callable[..., None], kills: int
) -> None:
    deadline, job = time.monotonic() + 300, None
    while time.monotonic() < deadline:
        job = httpx.get(f"{plane.url}/jobs/{job_id}", headers=AUTH, timeout=30).json()
        if job["status"] in FINAL:
            break
        time.sleep(0.5)
    with sessions_for(fresh_pg_url)() as session:
        rows, distinct = session.execute(
            select(func.count(), func.count(func.distinct(Result.path))).where(Result.job_id == job_id)
        ).one()
        paths = [p for batch in session.scalars(select(Batch.paths).where(Batch.job_id == job_id)) for p in batch]
    report(images=distinct, kills=kills, lost=IMAGES - distinct, duplicated=rows - distinct)
    assert job is not None and job["status"] == "succeeded", job
    assert len(paths) == len(set(paths)) == IMAGES  # listed into exactly one batch each
    assert rows == distinct == IMAGES and job["counts"]["total"] == job["counts"]["done"] == IMAGES
