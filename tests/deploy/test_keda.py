"""The KEDA scaler's query, read from deploy/k8s/base/keda.yaml and run as it is against a real job on
PostgreSQL: positive while the job has work left, 0 once it has ended (and for a cancelled job's batches)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from tests.conftest import BATCH_SIZE, CATSDOGS, service_env, sessions_for, wait_listed
from tests.workers.test_end_to_end import api_client, wait_for

pytestmark = pytest.mark.slow
KEDA = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "keda.yaml"


def scaler_query() -> str:
    scaled = next(d for d in yaml.safe_load_all(KEDA.read_text()) if d and d["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "postgresql"
    return str(trigger["metadata"]["query"])


def test_the_scalers_query_counts_the_work_left(
    fresh_pg_url: str, model_store: Path, queue_name: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    query, sessions = text(scaler_query()), sessions_for(fresh_pg_url)

    def work_left() -> int:
        with sessions() as session:
            return int(session.execute(query).scalar_one())

    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted((CATSDOGS / "test" / "cat").glob("*.jpg"))[:300]:
        (folder / photo.name).symlink_to(photo)
    with api_client(fresh_pg_url, model_store, queue_name, [tmp_path, CATSDOGS]) as client:
        assert work_left() == 0
        cancelled = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        wait_listed(client, cancelled), wait_listed(client, job_id)
        batches = -(-300 // BATCH_SIZE)
        assert work_left() == 2 * batches  # no worker yet: everything waits
        client.post(f"/jobs/{cancelled}/cancel")
        assert work_left() == batches
        start_worker(service_env(fresh_pg_url, model_store, queue_name))
        seen = []
        while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            seen.append(work_left())
        wait_for(client, job_id)
    assert job["status"] == "succeeded" and work_left() == 0
    assert seen and all(n > 0 for n in seen[:-1])  # positive while work remained (the last look may race the end)
