"""Prometheus metrics scraped from the real processes during and after a real job, held against the database.

The API (uvicorn), the control plane (`catsdogs sweeper`) and a worker of two pool processes (multiprocess
mode, served by its main process), over PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from cli import services
from db.models import Batch, BatchStatus, Job, JobStatus, Result, ResultStatus
from tests.conftest import API_TOKEN, AUTH, CATSDOGS, ROOT, service_env, sessions_for
from tests.factories import corrupt_files
from workers import metrics as worker_metrics

pytestmark = pytest.mark.slow
PHOTOS = 400


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by (name, sorted labels)."""
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (n, got), value in samples.items() if n == name and wanted <= set(got))


class Stack:
    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.worker_port, self.control_port = services.free_port(), services.free_port()
        self.procs = []
        self.api, self.url = services.start_api(env, tmp_path / "api.log")
        self.procs.append(self.api)
        control_env = {**env, "CONTROL_METRICS_PORT": str(self.control_port)}
        self.procs.append(services.start_sweeper(control_env, tmp_path / "sweeper.log"))
        worker_env = {**env, "WORKER_METRICS_PORT": str(self.worker_port), "TORCH_THREADS": "1",
                      "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker-metrics")}  # fmt: skip
        self.procs.append(services.start_worker(worker_env, tmp_path / "worker.log", env["QUEUE_NAME"], 2))
        self.gets = 0

    def job(self, job_id: int) -> dict[str, Any]:
        self.gets += 1
        return dict(httpx.get(f"{self.url}/jobs/{job_id}", headers=AUTH, timeout=30).json())

    def metrics(self, which: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        port = {"worker": self.worker_port, "control": self.control_port}.get(which)
        return scrape(f"{self.url}/metrics" if port is None else f"http://127.0.0.1:{port}/metrics")

    def stop(self) -> None:
        for proc in self.procs:
            services.stop(proc)


@pytest.fixture
def stack(fresh_pg_url: str, model_store: Path, queue_name: str, tmp_path: Path) -> Iterator[Stack]:
    roots = f"{tmp_path},{CATSDOGS}"
    env = service_env(fresh_pg_url, model_store, queue_name, API_TOKEN=API_TOKEN, ALLOWED_ROOTS=roots, BATCH_SIZE="16",
                      SWEEP_INTERVAL="1")  # fmt: skip
    running = Stack(env, tmp_path)
    yield running
    running.stop()


def _live_batches(url: str, job_id: int) -> int:
    with sessions_for(url)() as session:
        return int(session.scalar(select(func.count()).select_from(Batch).where(
            Batch.job_id == job_id, Batch.status.in_([BatchStatus.QUEUED, BatchStatus.RUNNING])
        )) or 0)  # fmt: skip


def test_the_metrics_of_every_process_agree_with_the_database(
    stack: Stack, fresh_pg_url: str, tmp_path: Path, wait: Callable[..., Any]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted((CATSDOGS / "test" / "dog").glob("*.jpg"))[:PHOTOS]:
        (folder / photo.name).symlink_to(photo)
    corrupt_files(folder / "broken", next(folder.iterdir()))
    answer = httpx.post(f"{stack.url}/jobs", json={"folder": str(folder)}, headers=AUTH, timeout=30)
    assert answer.status_code == 201
    job_id = answer.json()["id"]

    # Mid-job: the control plane's backlog lies between the database's before and after the scrape.
    wait(lambda: stack.job(job_id)["listing_complete"] and _live_batches(fresh_pg_url, job_id) > 0)
    before = _live_batches(fresh_pg_url, job_id)
    control = stack.metrics("control")
    after = _live_batches(fresh_pg_url, job_id)
    backlog = total(control, "catsdogs_batches", status="queued") + total(control, "catsdogs_batches", status="running")
    assert after <= backlog <= before and backlog > 0, (after, backlog, before)
    assert total(control, "catsdogs_jobs", status="running") + total(control, "catsdogs_jobs", status="queued") == 1

    job = wait(lambda: (j := stack.job(job_id))["status"] not in ("queued", "running") and j)
    worker, control, api = stack.metrics("worker"), stack.metrics("control"), stack.metrics("api")
    with sessions_for(fresh_pg_url)() as session:
        by_status = dict(session.execute(
            select(Result.status, func.count()).where(Result.job_id == job_id).group_by(Result.status)
        ).tuples().all())  # fmt: skip
        batches = session.scalar(select(func.count()).select_from(Batch).where(Batch.job_id == job_id))
        state = session.scalar(select(Job.status).where(Job.id == job_id))
    assert by_status[ResultStatus.OK] == PHOTOS and by_status[ResultStatus.FAILED] > 0
    assert total(worker, "catsdogs_images_total", model_version="v1", outcome="ok") == by_status[ResultStatus.OK]
    assert total(worker, "catsdogs_images_total", outcome="failed") == by_status[ResultStatus.FAILED]
    for stage in ("decode", "forward", "write"):
        assert total(worker, "catsdogs_batch_stage_seconds_count", stage=stage) == batches, stage
    assert 1 <= total(worker, "catsdogs_model_load_seconds_count", model_version="v1") <= 2
    assert total(worker, "catsdogs_worker_processes", device="cpu") >= 1

    assert total(control, "catsdogs_batches", status="queued") == total(control, "catsdogs_batches", status="running")
    assert total(control, "catsdogs_batches", status="queued") == 0
    assert total(control, "catsdogs_jobs", status=state.value) == 1 and state == JobStatus.PARTIALLY_FAILED
    assert total(control, "catsdogs_database_up") == 1
    assert total(control, "catsdogs_listings_started_total") == 1

    assert total(api, "catsdogs_http_requests_total", method="POST", route="/jobs", status="201") == 1
    assert total(api, "catsdogs_http_requests_total", method="GET", route="/jobs/{job_id}") == stack.gets
    assert total(api, "catsdogs_http_request_seconds_count", route="/jobs/{job_id}") == stack.gets
    assert job["counts"]["done"] == PHOTOS
    # A worker exports a labelled metric once it has a value (a retry, CUDA memory): the rest by its definition.
    defined = {m._name for m in vars(worker_metrics).values() if isinstance(m, MetricWrapperBase)}
    exported = {re.sub(SUFFIX, "", name) for samples in (worker, control, api) for name, _ in samples} | defined
    assert _dashboard_metrics() <= exported, _dashboard_metrics() - exported


SUFFIX = r"_(bucket|count|sum|total|created)$"


def _dashboard_metrics() -> set[str]:
    """The metric families the Grafana dashboard queries."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "catsdogs.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {re.sub(SUFFIX, "", name) for expr in exprs for name in re.findall(r"catsdogs_\w+", expr)}


@pytest.fixture
def wait() -> Callable[..., Any]:
    def until(check: Callable[[], Any], timeout: float = 240) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if got := check():
                return got
            time.sleep(0.05)
        raise AssertionError("not reached in time")

    return until
