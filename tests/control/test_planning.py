"""plan_job on a real database: every image recorded once, when the broker fails and when a planner dies mid-listing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from classifier.store import read_all_meta
from control.planning import Listing, PlannerLease, even_tail, plan_job
from db.jobs import ListingLost, add_batch, claim_listing, create_job
from db.models import Batch, Job
from db.registry import register_missing
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

    assert plan_job(Listing(job_id, folder, 2, None, 1000), sessions, enqueue, lease("a:1")) == 10
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
    assert plan_job(Listing(job_id, folder, 4, None, 1000), sessions, sent.append, lease("a:1")) == 9
    with sessions() as session:
        batches = session.scalars(select(Batch).where(Batch.job_id == job_id).order_by(Batch.seq)).all()
    assert [len(b.paths) for b in batches] == [4, 3, 2]  # not [4, 4, 1]
    assert sent == [b.id for b in batches]
    assert sorted(p for b in batches for p in b.paths) == sorted(str(folder / f"p{i}.jpg") for i in range(9))


@pytest.mark.parametrize(("count", "sizes"), [(0, []), (1, [1]), (4, [4]), (5, [3, 2]), (8, [4, 4]), (7, [4, 3])])
def test_even_tail(count: int, sizes: list[int]) -> None:
    assert [len(b) for b in even_tail([str(i) for i in range(count)], 4)] == sizes


def lease(planner: str, gone: frozenset[str] = frozenset(), seconds: float = 30) -> PlannerLease:
    return PlannerLease(planner, seconds, lambda name: name in gone)


class Killed(BaseException):
    """What a SIGKILL does to a planner, as far as the database can tell: it stops between two statements."""


def _nested_folder(tmp_path: Path, photos: list[Path]) -> list[Path]:
    """23 images: some at the top, two levels of sub-folders, names that sort across the levels."""
    names = [f"z{i}.jpg" for i in range(5)] + [f"a/{i}.jpg" for i in range(7)] + [f"a/b/{i}.png" for i in range(4)]
    names += [f"b/{i}.jpg" for i in range(6)] + ["b/c/x.jpg"]
    paths = [tmp_path / "photos" / name for name in names]
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(photos[i % len(photos)])
    return paths


def _batches(sessions: sessionmaker[Session], job_id: int) -> list[Batch]:
    with sessions() as session:
        return list(session.scalars(select(Batch).where(Batch.job_id == job_id).order_by(Batch.seq)))


@pytest.mark.parametrize("killed_after", [0, 1, 3, 5])
def test_a_planner_killed_mid_listing_is_continued_after_its_cursor(
    tmp_path: Path, db_url: str, model_store: Path, photos: list[Path], killed_after: int
) -> None:
    folder, sessions, job_id = folder_and_job(tmp_path, db_url, model_store, photos, images=0, batch_size=3)
    files = _nested_folder(tmp_path, photos)
    sent: list[int] = []

    def send_then_die(batch_id: int) -> None:
        if len(sent) == killed_after:
            raise Killed
        sent.append(batch_id)

    listing = Listing(job_id, folder, 3, None, 1000)
    with pytest.raises(Killed):
        plan_job(listing, sessions, send_then_die, lease("host:1"))
    assert plan_job(listing, sessions, sent.append, lease("host:2")) is None  # its lease is fresh and it is alive
    assert plan_job(listing, sessions, sent.append, lease("host:2", gone=frozenset({"host:1"}))) == len(files)
    batches = _batches(sessions, job_id)
    paths = [p for b in batches for p in b.paths]
    assert sorted(paths) == sorted(map(str, files)) and len(paths) == len(set(paths))  # each image exactly once
    assert [b.seq for b in batches] == list(range(len(batches)))
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.planned and job.total == len(files) and job.planner == "host:2"
    assert sorted(set(sent)) == [b.id for b in batches]  # the batch recorded just before the kill is sent too


def test_a_planner_whose_listing_was_taken_over_records_nothing_more(
    tmp_path: Path, db_url: str, model_store: Path, photos: list[Path]
) -> None:
    folder, sessions, job_id = folder_and_job(tmp_path, db_url, model_store, photos, images=8, batch_size=2)
    listing = Listing(job_id, folder, 2, None, 1000)
    taken: list[int | None] = []

    def send(batch_id: int) -> None:  # while the first planner lists, a second one takes over
        if not taken:
            taken.append(plan_job(listing, sessions, lambda _: None, lease("host:2", gone=frozenset({"host:1"}))))

    assert plan_job(listing, sessions, send, lease("host:1")) is None  # it stopped: ListingLost
    assert taken == [8]
    paths = [p for b in _batches(sessions, job_id) for p in b.paths]
    assert sorted(paths) == sorted(str(folder / f"p{i}.jpg") for i in range(8))


def test_recording_under_a_lost_listing_raises(
    tmp_path: Path, db_url: str, model_store: Path, photos: list[Path]
) -> None:
    _, sessions, job_id = folder_and_job(tmp_path, db_url, model_store, photos, images=1, batch_size=2)
    with sessions.begin() as session:
        assert claim_listing(session=session, job_id=job_id, planner="h:1", lease_seconds=30,
                                     holder_gone=lambda _: False) is not None  # fmt: skip
    with pytest.raises(ListingLost), sessions.begin() as session:
        add_batch(session=session, job_id=job_id, seq=0, paths=["/x.jpg"], planner="h:2")
    assert _batches(sessions, job_id) == []


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
        register_missing(session=session, metas=read_all_meta(model_store))
        job = create_job(session=session, folder=str(folder), model_version="v1", batch_size=batch_size)
    return folder, sessions, job.id
