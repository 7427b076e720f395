"""Corrections and review pages on PostgreSQL and SQLite, each test rolled back at the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from classifier.outcomes import Outcome
from classifier.store import read_all_meta
from db.corrections import corrected_labels, count_corrections, record_correction, undo_correction
from db.jobs import list_jobs
from db.models import Correction, JobStatus, Result, ResultStatus
from db.registry import register_missing
from db.result_pages import After, get_result_file, list_page
from db.results import ResultFilter
from tests.factories import recorded_job

CONFIDENCES = [0.9, 0.55, 0.7, 0.55, 0.99, 0.6]


@pytest.fixture
def version(session: Session, model_store: Path) -> str:
    register_missing(session=session, metas=read_all_meta(model_store))
    return "v1"


@pytest.fixture
def job_id(session: Session, version: str) -> int:
    """A job of six classified photos and one that failed, with another job's results on either side."""
    recorded_job(session, version, [Outcome("/other/a.jpg", "cat", 0.5)])
    outcomes = [Outcome(f"/photos/{i}.jpg", ("cat", "dog")[i % 2], c) for i, c in enumerate(CONFIDENCES)]
    job = recorded_job(session, version, [*outcomes, Outcome("/photos/bad.jpg", error="empty file (0 bytes)")])
    recorded_job(session, version, [Outcome("/other/b.jpg", "dog", 0.51)])
    return job


def _ids(session: Session, job_id: int) -> list[int]:
    return list(session.scalars(select(Result.id).where(Result.job_id == job_id).order_by(Result.id)))


def test_a_correction_keeps_the_models_label_and_records_the_label_shown_before(session: Session, job_id: int) -> None:
    first = _ids(session, job_id)[0]  # the model said cat
    one = record_correction(session=session, result_id=first, label="dog", who="ann")
    two = record_correction(session=session, result_id=first, label="neither", who="bob")
    assert one is not None and two is not None
    assert (one.job_id, one.old_label, one.new_label, one.who) == (job_id, "cat", "dog", "ann")
    assert (two.old_label, two.new_label) == ("dog", "neither")
    assert session.get(Result, first).label == "cat"  # type: ignore[union-attr]
    assert corrected_labels(session=session, job_id=job_id, result_ids=_ids(session, job_id)) == {first: "neither"}


def test_undo_deletes_the_latest_so_the_one_before_applies_again(session: Session, job_id: int) -> None:
    first = _ids(session, job_id)[0]
    record_correction(session=session, result_id=first, label="dog", who="ann")
    record_correction(session=session, result_id=first, label="neither", who="ann")
    undone = undo_correction(session=session, result_id=first)
    assert undone is not None and undone.new_label == "neither"
    assert corrected_labels(session=session, job_id=job_id, result_ids=[first]) == {first: "dog"}
    assert undo_correction(session=session, result_id=first) is not None
    assert corrected_labels(session=session, job_id=job_id, result_ids=[first]) == {}
    assert undo_correction(session=session, result_id=first) is None  # nothing left: the model's label applies
    assert session.scalars(select(Correction).where(Correction.job_id == job_id)).all() == []


def test_unknown_results_and_labels_are_refused(session: Session, job_id: int) -> None:
    assert record_correction(session=session, result_id=10**12, label="cat", who="ann") is None
    assert undo_correction(session=session, result_id=10**12) is None
    with pytest.raises(ValueError, match="one of cat, dog, neither"):
        record_correction(session=session, result_id=_ids(session, job_id)[0], label="horse", who="ann")


def test_the_database_itself_refuses_another_label(session: Session, job_id: int) -> None:
    first = _ids(session, job_id)[0]
    session.add(Correction(job_id=job_id, result_id=first, old_label="cat", new_label="horse", who="sql"))
    with pytest.raises(IntegrityError):
        session.flush()


def test_corrections_are_counted_per_job(session: Session, job_id: int, version: str) -> None:
    other = recorded_job(session, version, [Outcome("/x/c.jpg", "cat", 0.8)])
    for result_id in _ids(session, job_id)[:3]:
        record_correction(session=session, result_id=result_id, label="dog", who="ann")
    record_correction(session=session, result_id=_ids(session, other)[0], label="dog", who="ann")
    assert count_corrections(session=session, job_ids=[job_id, other, 10**12]) == {job_id: 3, other: 1, 10**12: 0}
    assert count_corrections(session=session, job_ids=[]) == {}


def test_jobs_are_listed_newest_first_in_keyset_pages(session: Session, job_id: int, version: str) -> None:
    newest = recorded_job(session, version, [Outcome("/x/c.jpg", error="file not found")])
    page = list_jobs(session=session, limit=2)
    assert [j.id for j in page] == [newest, job_id + 1]
    assert [j.id for j in list_jobs(session=session, before_id=page[-1].id, limit=2)] == [job_id, job_id - 1]
    failed = list_jobs(session=session, status=JobStatus.FAILED, limit=1)
    assert [j.id for j in failed] == [newest]
    assert all(j.status == JobStatus.FAILED for j in list_jobs(session=session, status=JobStatus.FAILED))


def test_pages_least_confident_first_cover_every_classified_result_once(session: Session, job_id: int) -> None:
    seen: list[Result] = []
    after = After()
    while page := list_page(session=session, job_id=job_id, filters=ResultFilter(), order="confidence", after=after,
                            limit=2):  # fmt: skip
        seen += page
        after = After(page[-1].id, page[-1].confidence)
    assert [r.confidence for r in seen] == sorted(CONFIDENCES)  # the failed one has no confidence: left out
    ties = [r.id for r in seen if r.confidence == 0.55]
    assert ties == sorted(ties)  # ties in id order, so a page boundary between them loses neither
    assert {r.job_id for r in seen} == {job_id}


def test_confidence_bounds_and_labels_filter_the_confidence_order(session: Session, job_id: int) -> None:
    filters = ResultFilter(label="dog", min_confidence=0.55, max_confidence=0.6)
    page = list_page(session=session, job_id=job_id, filters=filters, order="confidence")
    assert [(r.label, r.confidence) for r in page] == [("dog", 0.55), ("dog", 0.55), ("dog", 0.6)]
    rest = list_page(session=session, job_id=job_id, filters=filters, order="confidence", after=After(page[0].id, 0.55))
    assert rest == page[1:]


def test_the_corrected_filter_in_both_orders(session: Session, job_id: int) -> None:
    ids = _ids(session, job_id)
    record_correction(session=session, result_id=ids[4], label="cat", who="ann")
    record_correction(session=session, result_id=ids[1], label="neither", who="ann")
    corrected = list_page(session=session, job_id=job_id, filters=ResultFilter(), corrected=True)
    assert [r.id for r in corrected] == [ids[1], ids[4]]
    by_confidence = list_page(
        session=session, job_id=job_id, filters=ResultFilter(), corrected=True, order="confidence"
    )
    assert [r.id for r in by_confidence] == [ids[1], ids[4]]  # 0.55, then 0.99
    others = list_page(session=session, job_id=job_id, filters=ResultFilter(), corrected=False)
    assert [r.id for r in others] == [i for i in ids if i not in (ids[1], ids[4])]
    failed = list_page(
        session=session, job_id=job_id, filters=ResultFilter(status=ResultStatus.FAILED), corrected=False
    )
    assert [r.path for r in failed] == ["/photos/bad.jpg"]


def test_a_results_file_comes_with_its_jobs_roots(session: Session, version: str) -> None:
    job = recorded_job(session, version, [Outcome("/photos/a.jpg", "cat", 0.9)], roots=["/photos"])
    found = get_result_file(session=session, result_id=_ids(session, job)[0])
    assert found is not None and (found.path, found.roots) == ("/photos/a.jpg", ["/photos"])
    assert get_result_file(session=session, result_id=10**12) is None
