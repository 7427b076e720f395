"""Corrections as training data, the uncertain filter and model cards that change: PostgreSQL and SQLite, each
test rolled back at the end."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from classifier.outcomes import Outcome
from classifier.uncertainty import FALLBACK_THRESHOLD
from db.corrections import CorrectedResult, count_latest_labels, latest_corrections, record_correction, undo_correction
from db.models import ModelVersion, Result
from db.registry import register_missing, register_model, uncertainty_thresholds
from db.result_pages import list_page
from db.results import ResultFilter, list_results
from tests.factories import recorded_job

CONFIDENCES = [0.5, 0.79, 0.8, 0.95, 0.6]


def card(version: str, threshold: float | None = None, weights: str = "ab" * 32, **more: Any) -> dict[str, Any]:
    """A model card as the store writes it, reduced to what the registry reads."""
    uncertainty = {} if threshold is None else {"uncertainty": {"threshold": threshold, "target_accuracy": 0.97}}
    return {"version": version, "architecture": "resnet18", "weights_sha256": weights,
            "created_at": "2026-12-01T00:00:00+00:00", "metrics": {}, **uncertainty, **more}  # fmt: skip


@pytest.fixture
def job_id(session: Session) -> int:
    """A job of model v900 (threshold 0.8) of five classified photos and one that failed."""
    register_model(session=session, meta=card("v900", 0.8))
    outcomes = [Outcome(f"/photos/{i}.jpg", ("cat", "dog")[i % 2], c) for i, c in enumerate(CONFIDENCES)]
    return recorded_job(session, "v900", [*outcomes, Outcome("/photos/bad.jpg", error="empty file (0 bytes)")])


def _ids(session: Session, job_id: int) -> list[int]:
    return list(session.scalars(select(Result.id).where(Result.job_id == job_id).order_by(Result.id)))


def test_the_latest_correction_of_each_result_is_exported_and_neither_is_left_out(
    session: Session, job_id: int
) -> None:
    ids = _ids(session, job_id)
    other = recorded_job(session, "v900", [Outcome("/other/x.jpg", "dog", 0.9)])
    for result_id, label in [(ids[0], "dog"), (ids[0], "cat"), (ids[1], "neither"), (ids[2], "dog"), (ids[3], "cat")]:
        record_correction(session=session, result_id=result_id, label=label, who="ann")
    undo_correction(session=session, result_id=ids[3])  # back to the model's label: not a correction any more
    record_correction(session=session, result_id=_ids(session, other)[0], label="cat", who="bob")

    usable = latest_corrections(session=session, labels=("cat", "dog"))
    mine = [r for r in usable if r.job_id in (job_id, other)]  # PostgreSQL's database is shared by the session
    assert mine == [
        CorrectedResult(job_id, ids[0], "/photos/0.jpg", "cat"),
        CorrectedResult(job_id, ids[2], "/photos/2.jpg", "dog"),
        CorrectedResult(other, _ids(session, other)[0], "/other/x.jpg", "cat"),
    ]
    assert latest_corrections(session=session, job_ids=[other], labels=("cat", "dog")) == mine[2:]
    assert [r.label for r in latest_corrections(session=session, job_ids=[job_id])] == ["cat", "neither", "dog"]
    assert count_latest_labels(session=session, job_ids=[job_id]) == {"cat": 1, "dog": 1, "neither": 1}
    assert count_latest_labels(session=session, job_ids=[job_id, other]) == {"cat": 2, "dog": 1, "neither": 1}
    assert count_latest_labels(session=session, job_ids=[10**12]) == {"cat": 0, "dog": 0, "neither": 0}


def test_keyset_pages_of_corrections_cover_each_once(session: Session, job_id: int) -> None:
    ids = _ids(session, job_id)
    for result_id in reversed(ids[:5]):  # recorded out of result order
        record_correction(session=session, result_id=result_id, label="dog", who="ann")
    seen: list[CorrectedResult] = []
    after = (0, 0)
    while page := latest_corrections(session=session, job_ids=[job_id], after=after, limit=2):
        seen += page
        after = (page[-1].job_id, page[-1].result_id)
    assert [r.result_id for r in seen] == ids[:5]


def test_the_uncertain_filter_takes_classified_results_below_the_threshold(session: Session, job_id: int) -> None:
    def confidences(uncertain: bool, order: str = "id") -> list[float | None]:
        filters = ResultFilter(uncertain=uncertain, threshold=0.8)
        if order == "list_results":
            return [r.confidence for r in list_results(session=session, job_id=job_id, filters=filters)]
        page = list_page(session=session, job_id=job_id, filters=filters, order=order)  # type: ignore[arg-type]
        return [r.confidence for r in page]

    assert confidences(True) == [0.5, 0.79, 0.6] == confidences(True, "list_results")  # 0.8 itself is certain
    assert confidences(True, "confidence") == [0.5, 0.6, 0.79]
    assert confidences(False) == [0.8, 0.95, None] == confidences(False, "list_results")  # the failed one too
    assert confidences(False, "confidence") == [0.8, 0.95]  # confidence order leaves the failed out anyway
    with pytest.raises(ValueError, match="threshold"):
        list_results(session=session, job_id=job_id, filters=ResultFilter(uncertain=True))


def test_a_changed_model_card_is_registered_again_and_its_threshold_read(session: Session, job_id: int) -> None:
    register_model(session=session, meta=card("v901"))
    assert uncertainty_thresholds(session=session, versions=["v900", "v901", "v999"]) == {
        "v900": 0.8, "v901": FALLBACK_THRESHOLD, "v999": FALLBACK_THRESHOLD,
    }  # fmt: skip
    assert uncertainty_thresholds(session=session, versions=[]) == {}
    # calibrate-uncertainty wrote v901's card; v900's card names other weights: not the registered model's.
    added = register_missing(session=session, metas=[card("v900", 0.5, weights="cd" * 32), card("v901", 0.93)])
    assert added == []
    assert uncertainty_thresholds(session=session, versions=["v900", "v901"]) == {"v900": 0.8, "v901": 0.93}
    register_model(session=session, meta=card("v901", 0.94, note="again"))
    session.flush()
    session.expire_all()
    row = session.scalars(select(ModelVersion).where(ModelVersion.version == "v901")).one()
    assert row.meta["uncertainty"]["threshold"] == 0.94 and row.meta["note"] == "again"
