"""A folder of 100,000 images, submitted to the real API served by uvicorn, on PostgreSQL and SQLite.

The control plane (`catsdogs sweeper`) runs in a thread of this process, so that its listing's memory
is measured. No worker runs; the batches stay queued.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from api.main import create_app
from cli.services import free_port
from db.jobs import cancel_job
from db.models import Batch
from settings import Settings
from tests.conftest import AUTH, REDIS_URL, control_plane, sessions_for, wait_listed

pytestmark = pytest.mark.slow
IMAGES = 100_000
# Measured: 13.5-16 MiB alone, the most of it the listing's list of one directory's 100,000 names
# (~7 MiB) and CPython's table of interned strings (~7 MiB, whatever the folder's size); up to 24 MiB
# in the whole suite, where this process holds what earlier tests left. Holding a Path for every
# image at once would add ~30 MiB.
MAX_PLANNING_PEAK = 32 * 2**20


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> Path:
    """100,000 hard links to four real photos, in one directory (ext4 allows 65,000 links per file)."""
    root = tmp_path_factory.mktemp("big")
    sources = [Path(shutil.copyfile(p, root / p.name)) for p in photos[:4]]
    folder = root / "photos"
    folder.mkdir()
    for i in range(IMAGES):
        os.link(sources[i % len(sources)], folder / f"{i:06d}.jpg")
    return folder


@contextlib.contextmanager
def serving(app: FastAPI, log_level: str = "warning") -> Iterator[str]:
    """Serve `app` with uvicorn in a thread; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    _wait(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_100k_images_are_answered_at_once_and_listed_in_flat_memory(
    api_settings: Settings, big_folder: Path, db_url: str, queue_name: str
) -> None:
    settings = api_settings.model_copy(update={"batch_size": Settings.model_fields["batch_size"].default})
    job_id = None
    tracemalloc.start()  # every thread of this process: the server's, and the control plane's listing
    try:
        with (
            control_plane(settings),
            serving(create_app(settings)) as url,
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as http,
        ):
            response = http.post("/jobs", json={"folder": str(big_folder)})
            job_id = response.json()["id"]
            first = http.get(f"/jobs/{job_id}").json()
            job = wait_listed(http, job_id, timeout=600)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        _leave_nothing_queued(db_url, queue_name, job_id)
    assert response.status_code == 201
    assert response.json()["counts"]["total"] == 0 and not response.json()["listing_complete"]
    assert not first["listing_complete"] and first["counts"]["total"] < IMAGES  # answered during the listing
    assert job["counts"]["total"] == IMAGES and job["error"] is None and job["status"] == "queued"
    with sessions_for(db_url)() as session:
        paths = [p for batch in session.scalars(select(Batch.paths).where(Batch.job_id == job_id)) for p in batch]
    assert len(paths) == len(set(paths)) == IMAGES
    assert peak < MAX_PLANNING_PEAK, f"{peak / 2**20:.1f} MiB"


def _leave_nothing_queued(db_url: str, queue_name: str, job_id: int | None) -> None:
    """Cancel the job and delete its ~1,600 messages: the database is shared by the session's tests,
    and a later test's worker would otherwise find the batches lost and run them all."""
    if job_id is not None:
        with sessions_for(db_url).begin() as session:
            cancel_job(session=session, job_id=job_id)
    client = redis.Redis.from_url(REDIS_URL)  # kombu keeps a list per priority, named after the queue
    for key in client.scan_iter(match=f"{queue_name}*"):
        client.delete(key)
    client.close()


def _wait(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
