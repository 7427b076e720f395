"""The HTTP API against a real database and a real Redis broker (no worker: batches stay queued)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from db.models import Job
from settings import Settings
from tests.conftest import AUTH, wait_listed
from tests.factories import copy_photos


@pytest.fixture
def folder(tmp_path: Path, photos: list[Path]) -> Path:
    copy_photos(photos[:5], tmp_path / "photos" / "nested")
    copy_photos(photos[5:10], tmp_path / "photos")
    return tmp_path / "photos"


def test_submitting_a_folder_records_every_image_in_batches(client: TestClient, folder: Path) -> None:
    response = client.post("/jobs", json={"folder": str(folder)})
    assert response.status_code == 201, response.text
    job = wait_listed(client, response.json()["id"])
    assert job["status"] == "queued"
    assert job["model_version"] == "v1"
    assert job["counts"] == {"total": 10, "done": 0, "failed": 0, "remaining": 10, "skipped": 0, "reused": 0}
    assert job["listing_complete"] is True


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda p: p / "missing", 404, "does not exist"),
        (lambda p: _file(p / "one.jpg"), 422, "not a folder"),
        (lambda p: _mkdir(p / "empty"), 422, "no images in folder"),
        (lambda p: Path("relative/photos"), 422, "absolute path"),
    ],
)
def test_bad_folders_are_refused_and_create_no_job(
    client: TestClient, tmp_path: Path, make, status: int, message: str
) -> None:  # type: ignore[no-untyped-def]
    jobs_before = _count_jobs(client)
    response = client.post("/jobs", json={"folder": str(make(tmp_path))})
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert _count_jobs(client) == jobs_before


def test_a_folder_that_is_not_unicode_text_is_a_422(client: TestClient, tmp_path: Path) -> None:
    body = json.dumps({"folder": os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")})  # Python writes "caf\udce9"
    response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text  # not a 500 while echoing the input
    assert response.json()["errors"][0]["type"] == "string_unicode"
    assert response.json()["detail"].startswith("invalid request: body.folder: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_is_forbidden(client: TestClient, folder: Path) -> None:
    folder.chmod(0)
    try:
        assert client.post("/jobs", json={"folder": str(folder)}).status_code == 403
    finally:
        folder.chmod(0o755)


def test_unknown_model_version_names_the_existing_ones(client: TestClient, folder: Path) -> None:
    response = client.post("/jobs", json={"folder": str(folder), "model_version": "v42"})
    assert response.status_code == 404
    assert response.json()["detail"] == "unknown model version 'v42'; available: v1"


def test_no_published_model_is_a_clear_conflict(api_settings: Settings, tmp_path: Path, folder: Path) -> None:
    settings = api_settings.model_copy(
        update={"model_store": tmp_path / "no-models", "database_url": f"sqlite:///{tmp_path}/x.db"}
    )
    from db.migrate import upgrade

    upgrade(settings.database_url)
    with TestClient(create_app(settings), headers=AUTH) as fresh:
        response = fresh.post("/jobs", json={"folder": str(folder)})
    assert response.status_code == 409
    assert "trainer fit" in response.json()["detail"]


def test_models_lists_published_versions_with_metrics(client: TestClient) -> None:
    models = client.get("/models").json()
    assert [m["version"] for m in models] == ["v1"]
    assert models[0]["val_accuracy"] == 0.5
    assert models[0]["meta"]["classes"] == ["cat", "dog"]


def test_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/jobs/999999").status_code == 404
    assert client.get("/jobs/999999/results").status_code == 404


def test_page_size_is_limited(client: TestClient, folder: Path) -> None:
    job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
    assert client.get(f"/jobs/{job_id}/results", params={"limit": 100_000}).status_code == 422
    assert client.get(f"/jobs/{job_id}/results", params={"min_confidence": 2}).status_code == 422


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    assert "/jobs/{job_id}/results" in client.get("/openapi.json").json()["paths"]


def _count_jobs(client: TestClient) -> int:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _file(path: Path) -> Path:
    path.write_bytes(b"x")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    (path / "readme.txt").write_text("no photos here")
    return path
