"""Corrections: the labels people give results, kept beside the model's, which is never changed.

A result's current label is its latest correction's new_label, else the model's label. Undoing deletes
the latest correction, so the one before it (or the model's label) applies again. This module is the
correction table's only writer. Each function takes a keyword-only `session` and never commits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, Select, Subquery, and_, delete, func, literal, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from db.models import CORRECTION_LABELS, Correction, Result


def record_correction(*, session: Session, result_id: int, label: str, who: str) -> Correction | None:
    """Give result `result_id` the label `label` (one of CORRECTION_LABELS); None if there is no such result."""
    if label not in CORRECTION_LABELS:
        raise ValueError(f"not a correction label: {label!r} (one of {', '.join(CORRECTION_LABELS)})")
    result = session.execute(select(Result.job_id, Result.label).where(Result.id == result_id)).one_or_none()
    if result is None:
        return None
    latest = session.scalars(_latest(result.job_id, result_id)).first()
    shown = result.label if latest is None else latest.new_label
    correction = Correction(job_id=result.job_id, result_id=result_id, old_label=shown, new_label=label, who=who)
    session.add(correction)
    session.flush()
    return correction


def undo_correction(*, session: Session, result_id: int) -> Correction | None:
    """Delete the latest correction of result `result_id` and return it; None if it has none."""
    job_id = session.scalar(select(Result.job_id).where(Result.id == result_id))
    if job_id is None:
        return None
    latest = session.scalars(_latest(job_id, result_id).with_for_update()).first()
    if latest is None:
        return None
    session.execute(delete(Correction).where(Correction.id == latest.id))
    return latest


def _latest(job_id: int, result_id: int) -> Select[Correction]:
    # job_id first: the (job_id, result_id, id) index serves it, read backwards.
    return (
        select(Correction)
        .where(Correction.job_id == job_id, Correction.result_id == result_id)
        .order_by(Correction.id.desc())
        .limit(1)
    )


def corrected_labels(*, session: Session, job_id: int, result_ids: Sequence[int]) -> dict[int, str]:
    """The current label of each of these results of job `job_id` that has a correction (the others show the
    model's label)."""
    if not result_ids:
        return {}
    rows = session.execute(
        select(Correction.result_id, Correction.new_label)
        .where(Correction.job_id == job_id, Correction.result_id.in_(result_ids))
        .order_by(Correction.result_id, Correction.id)
    )
    return {result_id: label for result_id, label in rows}  # the latest of each result comes last


def count_corrections(*, session: Session, job_ids: Sequence[int]) -> dict[int, int]:
    """How many corrections each of these jobs has (0 where none)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Correction.job_id, func.count()).where(Correction.job_id.in_(job_ids)).group_by(Correction.job_id)
    )
    counts = dict(rows.tuples().all())
    return {job_id: counts.get(job_id, 0) for job_id in job_ids}


# --- corrections as training data ---------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectedResult:
    """A result with a correction: its file, its job and its current label (the latest correction's)."""

    job_id: int
    result_id: int
    path: str  # as recorded (classifier.files.path_to_text)
    label: str  # one of CORRECTION_LABELS


def latest_corrections(
    *,
    session: Session,
    job_ids: Sequence[int] | None = None,
    labels: Sequence[str] = CORRECTION_LABELS,
    after: tuple[int, int] = (0, 0),
    limit: int = 1000,
) -> list[CorrectedResult]:
    """The corrected results of these jobs (None: of every job) whose current label is one of `labels`, in
    (job_id, result_id) order after `after`: a keyset page."""
    latest = _latest_ids(job_ids)
    key = tuple_(Correction.job_id, Correction.result_id)
    query = (
        select(Correction.job_id, Correction.result_id, Result.path, Correction.new_label)
        .join(latest, Correction.id == latest.c.id)
        .join(Result, and_(Result.id == Correction.result_id, Result.job_id == Correction.job_id))
        .where(key > tuple_(*(literal(value, BigInteger()) for value in after)), Correction.new_label.in_(labels))
        .order_by(Correction.job_id, Correction.result_id)
        .limit(limit)
    )
    return [CorrectedResult(*row) for row in session.execute(query).tuples()]


def count_latest_labels(*, session: Session, job_ids: Sequence[int] | None = None) -> dict[str, int]:
    """How many corrected results of these jobs (None: of every job) have each current label (0 where none)."""
    latest = _latest_ids(job_ids)
    rows = session.execute(
        select(Correction.new_label, func.count())
        .join(latest, Correction.id == latest.c.id)
        .group_by(Correction.new_label)
    )
    counts = dict(rows.tuples().all())
    return {label: counts.get(label, 0) for label in CORRECTION_LABELS}


def _latest_ids(job_ids: Sequence[int] | None) -> Subquery:
    """The id of each corrected result's latest correction (the one that gives its current label)."""
    query = select(func.max(Correction.id).label("id")).group_by(Correction.job_id, Correction.result_id)
    if job_ids is not None:
        query = query.where(Correction.job_id.in_(job_ids))
    return query.subquery()


def corrected_result_pages(
    sessions: sessionmaker[Session], job_ids: Sequence[int] | None, labels: Sequence[str], page_size: int
) -> Iterator[list[CorrectedResult]]:
    """Every page of `latest_corrections`, each read in a short transaction of its own (as db.exports does)."""
    after = (0, 0)
    while True:
        with sessions() as session:
            page = latest_corrections(session=session, job_ids=job_ids, labels=labels, after=after, limit=page_size)
        if page:
            yield page
        if len(page) < page_size:
            return
        after = (page[-1].job_id, page[-1].result_id)
