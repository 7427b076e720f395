"""Re-runs: a job over files whose bytes and model match earlier results reuses them (real workers, real photos)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import CATSDOGS, service_env
from tests.factories import copy_photos
from tests.workers.test_end_to_end import api_client, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def client(fresh_pg_url: str, model_store: Path, queue_name: str, allowed_roots: list[Path]) -> Iterator[TestClient]:
    # A database of its own: other tests' jobs classified the same photos, whose results a job here would reuse.
    with api_client(fresh_pg_url, model_store, queue_name, allowed_roots) as test_client:
        yield test_client


@pytest.fixture
def root(
    start_worker: Callable[..., Any], fresh_pg_url: str, model_store: Path, queue_name: str, allowed_roots: list[Path]
) -> Path:
    """A running worker on the test's database; returns the folder jobs may read."""
    start_worker(service_env(fresh_pg_url, model_store, queue_name))
    return allowed_roots[0]


def _results(client: TestClient, job_id: int) -> dict[str, tuple[str, float]]:
    items = client.get(f"/jobs/{job_id}/results", params={"limit": 1000}).json()["items"]
    return {Path(item["path"]).name: (item["label"], round(item["confidence"], 4)) for item in items}


def _run(client: TestClient, folder: Path, **body: Any) -> dict[str, Any]:
    job_id = client.post("/jobs", json={"folder": str(folder), **body}).json()["id"]
    job = wait_for(client, job_id)
    assert job["status"] == "succeeded"
    return job


def test_a_rerun_reuses_unchanged_files_and_classifies_changed_and_new_ones(client: TestClient, root: Path) -> None:
    folder = root / "reruns"
    shutil.rmtree(folder, ignore_errors=True)
    photos = copy_photos(sorted((CATSDOGS / "test" / "cat").glob("*.jpg"))[100:120], folder)

    first = _run(client, folder, reuse=True)
    assert (first["counts"]["done"], first["counts"]["reused"]) == (20, 0)
    second = _run(client, folder, reuse=True)
    assert (second["counts"]["done"], second["counts"]["reused"]) == (20, 20)
    assert _results(client, second["id"]) == _results(client, first["id"])

    with Image.open(photos[0]) as img:  # the same picture, other bytes: classified again
        img.save(photos[0], quality=70)
    copy_photos(sorted((CATSDOGS / "test" / "dog").glob("*.jpg"))[100:103], folder)  # the folder grew
    third = _run(client, folder, reuse=True)
    assert (third["counts"]["done"], third["counts"]["reused"]) == (23, 19)

    fresh = _run(client, folder, reuse=False)
    assert (fresh["counts"]["done"], fresh["counts"]["reused"]) == (23, 0)
    assert _results(client, fresh["id"]) == _results(client, third["id"])


def test_copies_of_classified_photos_in_a_new_folder_are_reused(client: TestClient, root: Path) -> None:
    originals, copies = root / "originals", root / "copies"  # neither inside the other
    for folder in (originals, copies):
        shutil.rmtree(folder, ignore_errors=True)
    photos = sorted((CATSDOGS / "test" / "dog").glob("*.jpg"))[120:125]
    copy_photos(photos, originals)

    first = _run(client, originals, reuse=True)
    assert (first["counts"]["done"], first["counts"]["reused"]) == (5, 0)
    copy_photos(photos, copies)  # a folder no job has read: its files' bytes match the first job's results
    copied = _run(client, copies, reuse=True)
    assert (copied["counts"]["done"], copied["counts"]["reused"]) == (5, 5)
    assert _results(client, copied["id"]) == _results(client, first["id"])

    fresh = _run(client, copies, reuse=False)
    assert (fresh["counts"]["done"], fresh["counts"]["reused"]) == (5, 0)
    assert _results(client, fresh["id"]) == _results(client, first["id"])
