"""POST /jobs with a notify_url: checked, refused without WEBHOOK_SECRET, stored and shown on the job."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from settings import Settings
from tests.api.conftest import api_settings_for
from tests.conftest import AUTH, ControlledClient, service_env
from tests.factories import copy_photos
from tests.webhook_receiver import Receiver, receivers

SECRET = "test-webhook-secret"


@pytest.fixture
def folder(tmp_path: Path, photos: list[Path]) -> Path:
    copy_photos(photos[:5], tmp_path / "photos")
    return tmp_path / "photos"


@pytest.fixture
def signed_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"webhook_secret": SecretStr(SECRET)})


@pytest.fixture
def bare_client(sqlite_url: str, model_store: Path, queue_name: str, allowed_roots: list[Path]) -> Iterator[TestClient]:
    """The API alone (no control plane), with WEBHOOK_SECRET set."""
    settings = api_settings_for(sqlite_url, model_store, queue_name, allowed_roots)
    settings = settings.model_copy(update={"webhook_secret": SecretStr(SECRET)})
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "must be an http or https URL"),
        ("example.com/hook", "must be an http or https URL"),
        ("https://user:secret@example.com/hook", "must not hold credentials"),
        ("https://token@example.com/hook", "must not hold credentials"),
        ("https:///hook", "has no host"),
        ("https://example.com:99999/hook", "not a valid URL"),
        ("https://example.com/a hook", "must not hold spaces or control characters"),
        ("https://example.com/\nhook", "must not hold spaces or control characters"),
        ("https://example.com/" + "a" * 2048, "at most 2048 characters"),
    ],
)
def test_a_bad_notify_url_is_a_clear_422(bare_client: TestClient, folder: Path, url: str, message: str) -> None:
    response = bare_client.post("/jobs", json={"folder": str(folder), "notify_url": url})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("invalid request: body.notify_url: ")
    assert message in response.json()["detail"]


def test_without_a_secret_a_notify_url_is_refused(api_settings: Settings, folder: Path) -> None:
    with TestClient(create_app(api_settings), headers=AUTH) as client:
        response = client.post("/jobs", json={"folder": str(folder), "notify_url": "https://example.com/hook"})
        assert response.status_code == 422
        assert "WEBHOOK_SECRET" in response.json()["detail"]
        assert client.post("/jobs", json={"folder": str(folder)}).status_code == 201  # without one: as ever


def test_the_job_shows_its_webhook_without_the_query_string(signed_settings: Settings, folder: Path) -> None:
    with TestClient(create_app(signed_settings), headers=AUTH) as client:
        url = "https://hooks.example.com/catsdogs?token=receivers-secret#x"
        job = client.post("/jobs", json={"folder": str(folder), "notify_url": url}).json()
        shown = client.get(f"/jobs/{job['id']}").json()
        plain = client.post("/jobs", json={"folder": str(folder)}).json()
    expected = {"url": "https://hooks.example.com/catsdogs", "delivered_at": None, "attempts": 0,
                "next_attempt_at": None, "last_error": None}  # fmt: skip
    assert job["webhook"] == shown["webhook"] == expected
    assert "receivers-secret" not in str(shown)
    assert plain["webhook"] is None


@pytest.mark.slow
def test_a_job_run_by_a_worker_is_posted_once_when_it_succeeds(
    pg_url: str,
    model_store: Path,
    queue_name: str,
    allowed_roots: list[Path],
    folder: Path,
    start_worker: Callable[..., Any],
) -> None:
    """End to end: the API, a real worker process and the control plane, over PostgreSQL and Redis."""
    settings = api_settings_for(pg_url, model_store, queue_name, allowed_roots)
    settings = settings.model_copy(update={"webhook_secret": SecretStr(SECRET), "sweep_interval": 0.2})
    start_worker(service_env(pg_url, model_store, queue_name, TORCH_THREADS="1"))
    with receivers() as start, ControlledClient(settings) as client:
        receiver: Receiver = start()
        job_id = client.post("/jobs", json={"folder": str(folder), "notify_url": receiver.url}).json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/jobs/{job_id}").json())["webhook"]["delivered_at"] is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    assert job["status"] == "succeeded" and job["webhook"]["attempts"] == 1
    assert len(receiver.requests) == 1
    event = json.loads(receiver.requests[0].body)
    assert (event["job_id"], event["status"], event["counts"]["done"]) == (job_id, "succeeded", 5)
