"""plan_job on a real database: every image is recorded even when the broker fails mid-listing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.planning import even_tail, plan_job
from db import queries
from db.models import Batch, Job
from tests.conftest import sessions_for


def test_a_broker_failure_mid_listing_loses_no_image(
    tmp_path: Path, db_url: str, model_store: Path, photos: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    folder, sessions, job_id = folder_and_job(tmp_path, db_url, model_store, photos, images=10, batch_size=2)
    sent: list[int] = []

    def enqueue(batch_id: int) -> None:
        if len(sent) == 2:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        sent.append(batch_id)

    assert plan_job(job_id, folder, 2, sessions, enqueue, 1000, None) == 10
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.planned and job.total == 10 and job.error is None
        batches = session.scalars(select(Batch).where(Batch.job_id == job_id).order_by(Batch.seq)).all()
    assert [len(b.paths) for b in batches] == [2] * 5
    assert sent == [batches[0].id, batches[1].id]  # tried once more, then only recorded
    assert "the sweeper sends it" in caplog.text


def test_the_last_full_batch_is_shared_with_the_rest(
    tmp_path: Path, db_url: str, model_store: Path, photos: list[Path]
) -> None:
    folder, sessions, job_id = folder_and_job(tmp_path, db_url, model_store, photos, images=9, batch_size=4)
    sent: list[int] = []
    assert plan_job(job_id, folder, 4, sessions, sent.append, 1000, None) == 9
    with sessions() as session:
        batches = session.scalars(select(Batch).where(Batch.job_id == job_id).order_by(Batch.seq)).all()
    assert [len(b.paths) for b in batches] == [4, 3, 2]  # not [4, 4, 1]
    assert sent == [b.id for b in batches]
    assert sorted(p for b in batches for p in b.paths) == sorted(str(folder / f"p{i}.jpg") for i in range(9))


@pytest.mark.parametrize(("count", "sizes"), [(0, []), (1, [1]), (4, [4]), (5, [3, 2]), (8, [4, 4]), (7, [4, 3])])
def test_even_tail(count: int, sizes: list[int]) -> None:
    assert [len(b) for b in even_tail([str(i) for i in range(count)], 4)] == sizes


def folder_and_job(
    tmp_path: Path, db_url: str, model_store: Path, photos: list[Path], images: int, batch_size: int
) -> tuple[Path, sessionmaker[Session], int]:
    """A folder of `images` links to real photos, and a job for it that is not planned yet."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(images):
        (folder / f"p{i}.jpg").symlink_to(photos[i % len(photos)])
    sessions = sessions_for(db_url)
    with sessions.begin() as session:
        queries.sync_model_store(session=session, store=model_store)
        job = queries.create_job(session=session, folder=str(folder), model_version="v1", batch_size=batch_size)
    return folder, sessions, job.id
