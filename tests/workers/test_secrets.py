"""No secret in a log or an answer: the API token, the database's password, the broker's password.

The API runs in this process with every log record captured at DEBUG; a real worker logs at DEBUG
to a file. The URLs are really used: Redis checks its password; PostgreSQL trusts local connections,
so its password is carried but not checked. Failures are tried too, since errors are where
connection strings tend to be printed.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from cli.services import free_port
from dispatch import batch_sender, make_sender_app
from settings import Settings
from tests.conftest import API_TOKEN, BATCH_SIZE, ControlledClient, RedisServer, service_env
from tests.factories import copy_photos, corrupt_files
from tests.workers.test_end_to_end import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, password=f"redis-pw-{uuid.uuid4().hex}")
    yield server
    server.stop()


def test_no_secret_in_logs_or_answers(
    start_worker: Callable[..., Any],
    pg_url_with_password: str,
    redis_with_password: RedisServer,
    model_store: Path,
    queue_name: str,
    allowed_roots: list[Path],
    tmp_path: Path,
    photos: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    db_url, broker_url = pg_url_with_password, redis_with_password.url
    secrets = [API_TOKEN, make_url(db_url).password, urlparse(broker_url).password]
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "photos"
    copy_photos(photos[:4], folder)
    corrupt_files(folder / "broken", photos[0])  # failed results carry error messages
    env = {**service_env(db_url, model_store, queue_name), "BROKER_URL": broker_url, "API_TOKEN": API_TOKEN}
    worker = start_worker(env, extra=["--loglevel=DEBUG"])
    settings = Settings(
        database_url=db_url, broker_url=broker_url, model_store=model_store, queue_name=queue_name,
        batch_size=BATCH_SIZE, api_token=SecretStr(API_TOKEN), allowed_roots=allowed_roots, sweep_interval=0.5,
    )  # fmt: skip
    with ControlledClient(settings) as client:
        answers = _answers_of_every_kind(client, folder)
    said = [f"{a.status_code} {a.headers} {a.text}" for a in answers]
    said += _failures(settings, folder, start_worker, env)
    worker.stop()
    said += [caplog.text, worker.log_path.read_text(), repr(settings), str(settings)]
    assert {a.status_code for a in answers} == {200, 201, 401, 403, 404, 409, 413, 422}
    assert "loaded model v1" in worker.log_path.read_text()  # the worker did the job
    for secret in secrets:
        assert secret and not [text for text in said if secret in text]


def _answers_of_every_kind(client: TestClient, folder: Path) -> list[httpx.Response]:
    anonymous = TestClient(client.app)
    submitted = client.post("/jobs", json={"folder": str(folder)})
    job_id = submitted.json()["id"]
    job = wait_for(client, job_id, timeout=120)
    assert job["status"] == "partially_failed" and job["counts"]["failed"] == 4
    return [
        submitted,
        client.get("/health"),
        client.get(f"/jobs/{job_id}"),
        client.get(f"/jobs/{job_id}/results", params={"status": "failed"}),
        client.get(f"/jobs/{job_id}/summary"),
        client.get("/models"),
        client.get("/openapi.json"),
        client.get("/docs"),
        client.post(f"/jobs/{job_id}/resume"),  # 409: the job has ended
        client.get("/jobs/999999"),
        client.post("/jobs", json={"folder": str(folder), "model_version": "v9"}),  # 404
        client.post("/jobs", json={"folder": str(folder / "missing")}),  # 404
        client.post("/jobs", json={"folder": "/etc"}),  # 403
        client.post("/jobs", json={"folder": "relative/photos"}),  # 422
        client.get(f"/jobs/{job_id}/results", params={"limit": 10**6}),  # 422
        client.post("/jobs", json={"folder": "/" + "x" * 70_000}),  # 413
        anonymous.get("/models"),  # 401
        anonymous.get("/models", headers={"Authorization": "Bearer wrong"}),  # 401
    ]


def _failures(settings: Settings, folder: Path, start_worker: Callable[..., Any], env: dict[str, str]) -> list[str]:
    """What the API and a worker say when the database does not answer or the broker refuses the password."""
    dead_db = make_url(settings.database_url).set(port=free_port()).render_as_string(hide_password=False)
    wrong_broker = settings.broker_url.replace(":redis-pw-", ":wrong-redis-pw-")  # Redis refuses it
    said = []
    for update in ({"database_url": dead_db}, {"broker_url": wrong_broker}):
        try:
            with ControlledClient(settings.model_copy(update=update)) as client:
                time.sleep(1)  # a sweep or two fails meanwhile, and is logged
                response = client.post("/jobs", json={"folder": str(folder)})
                said.append(f"{response.status_code} {response.headers} {response.text}")
        except Exception as exc:  # what uvicorn would log: the traceback of the request's exception
            said.append("".join(traceback.format_exception(exc)))
    # A task that cannot reach the database: the worker logs the exception and retries it.
    queue = f"{env['QUEUE_NAME']}-dead"
    worker = start_worker({**env, "DATABASE_URL": dead_db, "QUEUE_NAME": queue})
    batch_sender(make_sender_app(settings), queue)(1)
    deadline = time.monotonic() + 60
    while "Retry in" not in worker.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.stop()
    assert "OperationalError" in worker.log_path.read_text()
    return said + [worker.log_path.read_text()]
