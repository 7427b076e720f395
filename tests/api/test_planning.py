"""plan_job on a real database: every image is recorded even when the broker fails mid-listing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from api.planning import plan_job
from db import queries
from db.models import Batch, Job
from tests.conftest import sessions_for


def test_a_broker_failure_mid_listing_loses_no_image(
    tmp_path: Path, db_url: str, model_store: Path, photos: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):
        (folder / f"p{i}.jpg").symlink_to(photos[i % len(photos)])
    sessions = sessions_for(db_url)
    with sessions.begin() as session:
        queries.sync_model_store(session=session, store=model_store)
        job_id = queries.create_job(session=session, folder=str(folder), model_version="v1", batch_size=2).id
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
