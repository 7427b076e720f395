"""Real Celery worker processes over real Redis, the real API and a real database, on real photos."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from classifier import store
from classifier.files import path_to_text, text_to_path
from classifier.serving import classify
from db.models import Result, ResultStatus
from settings import Settings
from tests.conftest import (
    API_TOKEN,
    BATCH_SIZE,
    CATSDOGS,
    REDIS_URL,
    ControlledClient,
    service_env,
    sessions_for,
    wait_listed,
)
from tests.factories import copy_photos, corrupt_files

pytestmark = pytest.mark.slow
FINAL = {"succeeded", "failed", "partially_failed", "cancelled"}


@pytest.fixture
def client(db_url: str, model_store: Path, queue_name: str, allowed_roots: list[Path]) -> Iterator[TestClient]:
    with api_client(db_url, model_store, queue_name, allowed_roots) as test_client:
        yield test_client


def api_client(db_url: str, model_store: Path, queue_name: str, allowed_roots: list[Path]) -> TestClient:
    settings = Settings(
        database_url=db_url, broker_url=REDIS_URL, model_store=model_store, queue_name=queue_name,
        batch_size=BATCH_SIZE, api_token=SecretStr(API_TOKEN), allowed_roots=allowed_roots,
    )  # fmt: skip
    return ControlledClient(settings)


def wait_for(client: TestClient, job_id: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}")


@pytest.mark.parametrize("workers", [1, 2])
def test_test_split_yields_one_result_per_photo(
    client: TestClient, start_worker: Callable[..., Any], db_url: str, model_store: Path, queue_name: str, workers: int
) -> None:
    env = service_env(db_url, model_store, queue_name, TORCH_THREADS=str(2 // workers))
    started = [start_worker(env) for _ in range(workers)]
    job_id = client.post("/jobs", json={"folder": str(CATSDOGS / "test")}).json()["id"]
    job = wait_for(client, job_id)
    assert job["status"] == "succeeded"
    assert job["counts"] == {"total": 2000, "done": 2000, "failed": 0, "remaining": 0, "skipped": 0, "reused": 0}
    with sessions_for(db_url)() as session:
        rows = session.execute(
            select(
                func.count(),
                func.count(func.distinct(Result.path)),
                func.count(Result.label),
                func.min(Result.confidence),
            ).where(Result.job_id == job_id, Result.model_version == "v1", Result.status == ResultStatus.OK)
        ).one()
    assert rows[0] == rows[1] == rows[2] == 2000
    assert rows[3] >= 0.5
    _assert_pages_cover_every_result(client, job_id, 2000)
    for worker in started:  # each worker process loaded the model once, not once per task
        assert worker.log_path.read_text().count("loaded model v1 on cpu") == 1


def _assert_pages_cover_every_result(client: TestClient, job_id: int, expected: int) -> None:
    seen, after = [], 0
    while True:
        page = client.get(f"/jobs/{job_id}/results", params={"after": after, "limit": 500}).json()
        seen += [item["path"] for item in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert len(seen) == len(set(seen)) == expected


def test_undecodable_files_are_reported_and_the_job_ends(
    client: TestClient,
    start_worker: Callable[..., Any],
    db_url: str,
    model_store: Path,
    queue_name: str,
    tmp_path: Path,
    photos: list[Path],
) -> None:
    folder = tmp_path / "mixed"
    copy_photos(photos, folder)
    bad = corrupt_files(folder / "broken", photos[0])
    start_worker(service_env(db_url, model_store, queue_name))
    job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
    job = wait_for(client, job_id)
    assert job["status"] == "partially_failed"
    assert job["counts"]["failed"] == len(bad) and job["counts"]["done"] == len(photos)
    failed = client.get(f"/jobs/{job_id}/results", params={"status": "failed"}).json()["items"]
    reasons = {Path(item["path"]).name: item["error"] for item in failed}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["truncated.jpg"].startswith("cannot decode")
    cats = client.get(f"/jobs/{job_id}/results", params={"label": "cat", "min_confidence": 0.5}).json()["items"]
    assert all(item["label"] == "cat" and item["confidence"] >= 0.5 for item in cats)


def test_cancel_and_resume(
    client: TestClient,
    start_worker: Callable[..., Any],
    db_url: str,
    model_store: Path,
    queue_name: str,
    tmp_path: Path,
    photos: list[Path],
) -> None:
    folder = tmp_path / "photos"
    copy_photos(photos, folder)
    resumed = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
    cancelled = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
    wait_listed(client, resumed), wait_listed(client, cancelled)
    # No worker yet, so both batches wait in Redis. Resume sends the first a second
    # time (the database records its results once); cancel skips the other.
    assert client.post(f"/jobs/{resumed}/resume").json()["batches_sent"] == 1
    assert client.post(f"/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
    start_worker(service_env(db_url, model_store, queue_name))
    job = wait_for(client, resumed)
    assert job["status"] == "succeeded" and job["counts"]["done"] == len(photos)
    assert len(client.get(f"/jobs/{resumed}/results").json()["items"]) == len(photos)
    assert client.post(f"/jobs/{resumed}/resume").status_code == 409
    assert client.post(f"/jobs/{resumed}/cancel").status_code == 409
    job = client.get(f"/jobs/{cancelled}").json()
    assert job["status"] == "cancelled" and job["counts"]["done"] == 0
    assert client.get(f"/jobs/{cancelled}/results").json()["items"] == []


ODD_NAMES = [
    b"a cat with spaces.jpg",
    b"two\nlines.jpg",
    b"cat\xff.jpg",  # not UTF-8
    b"cat\\xff.jpg",  # a real backslash: its text must differ from the name above's
    b"caf\xc3\xa9.jpg",  # NFC
    b"cafe\xcc\x81.jpg",  # NFD: a different file with the same name once normalised
]


def test_file_names_of_any_bytes_get_one_correct_result_each(
    start_worker: Callable[..., Any],
    db_url: str,
    reference_store: Path,
    queue_name: str,
    allowed_roots: list[Path],
    tmp_path: Path,
    photos: list[Path],
) -> None:
    folder = os.fsencode(tmp_path) + b"/odd names \xfe"  # the folder's own name is not UTF-8 either
    os.mkdir(folder)
    sources = photos[::2]  # three cats, then three dogs
    # The label the model gives each photo under its plain name: the odd name must not change it.
    plain = classify([str(p) for p in sources], store.load(reference_store), torch.device("cpu"))
    expected = {}  # every file, by its real bytes, and its label
    for name, photo, outcome in zip(ODD_NAMES, sources, plain, strict=True):
        shutil.copyfile(photo, folder + b"/" + name)
        expected[folder + b"/" + name] = outcome.label
    start_worker(service_env(db_url, reference_store, queue_name))
    with api_client(db_url, reference_store, queue_name, allowed_roots) as client:
        job = client.post("/jobs", json={"folder": path_to_text(os.fsdecode(folder))}).json()
        assert job["folder"] == path_to_text(os.fsdecode(folder)) and job["folder"].endswith("/odd names \\xfe")
        job = wait_for(client, job["id"], timeout=120)
        items = client.get(f"/jobs/{job['id']}/results").json()["items"]
    assert job["status"] == "succeeded" and job["counts"]["done"] == len(ODD_NAMES)
    assert f"{job['folder']}/cat\\xff.jpg" in [item["path"] for item in items]
    labels = {os.fsencode(text_to_path(item["path"])): item["label"] for item in items}
    assert len(items) == len(labels) and labels == expected
    with sessions_for(db_url)() as session:
        rows, distinct = session.execute(
            select(func.count(), func.count(func.distinct(Result.path))).where(Result.job_id == job["id"])
        ).one()
    assert rows == distinct == len(ODD_NAMES)


def test_compiled_backend_worker_gives_the_plain_networks_results(
    start_worker: Callable[..., Any],
    sqlite_url: str,
    reference_store: Path,
    queue_name: str,
    allowed_roots: list[Path],
    tmp_path: Path,
) -> None:
    test_split = CATSDOGS / "test"
    photos = sorted((test_split / "cat").glob("*.jpg"))[:75] + sorted((test_split / "dog").glob("*.jpg"))[:75]
    copies = copy_photos(photos, tmp_path / "photos")  # batches of 64, 43 and 43: the last two are padded
    plain = classify([str(p) for p in copies], store.load(reference_store), torch.device("cpu"))
    worker = start_worker(
        service_env(sqlite_url, reference_store, queue_name, INFERENCE_BACKEND="compiled", INFERENCE_PRECISION="fp32")
    )
    with api_client(sqlite_url, reference_store, queue_name, allowed_roots) as client:
        job = wait_for(client, client.post("/jobs", json={"folder": str(tmp_path / "photos")}).json()["id"])
        items = client.get(f"/jobs/{job['id']}/results", params={"limit": 200}).json()["items"]
    assert job["status"] == "succeeded" and len(items) == len(copies)
    served = {item["path"]: item for item in items}
    for outcome in plain:
        assert served[outcome.path]["label"] == outcome.label
        assert served[outcome.path]["confidence"] == pytest.approx(outcome.confidence, abs=1e-4)
    assert "(compiled backend, fp32" in worker.log_path.read_text()
