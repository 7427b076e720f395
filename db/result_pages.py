"""Pages of a job's results for review: in id order or least confident first, filtered, with corrections.

Each page is a keyset page: a range of row values over an index that leads with job_id, as in
db.results.list_results (read its comment), so that a deep page costs what the first one does:
(job_id, id) in id order, (job_id, confidence, id) in confidence order (migration 0006). On PostgreSQL,
for a job of 1,000,000 results among 3,000,000, EXPLAIN ANALYZE shows an index scan of that index for
the first and a deep page in either order, with a label or confidence filter, and with corrected=false
(an anti-join probing the correction index per row): 0.05-0.4 ms a page. corrected=true starts from the
job's corrections instead (1,000 of them: 4.7 ms), so it costs what the job's corrections number.
Each function takes a keyword-only `session` and never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, Float, Select, and_, exists, literal, select, tuple_
from sqlalchemy.orm import Session

from db.models import MAX_ID, Correction, Job, Result
from db.results import ResultFilter, uncertain_condition

Order = Literal["id", "confidence"]
INFINITY = float("inf")


@dataclass(frozen=True)
class ResultFile:
    path: str  # as recorded (classifier.files.path_to_text)
    roots: list[str] | None  # its job's: where it may be opened (None: anywhere)


def get_result_file(*, session: Session, result_id: int) -> ResultFile | None:
    """A result's file and where it may be opened; None if there is no such result."""
    row = session.execute(
        select(Result.path, Job.roots).join(Job, Job.id == Result.job_id).where(Result.id == result_id)
    ).one_or_none()
    return None if row is None else ResultFile(row.path, row.roots)


@dataclass(frozen=True)
class After:
    """Where a page starts: after this id, or in confidence order after this (confidence, id)."""

    id: int = 0
    confidence: float | None = None


def list_page(
    *,
    session: Session,
    job_id: int,
    filters: ResultFilter,
    corrected: bool | None = None,
    order: Order = "id",
    after: After = After(),
    limit: int = 100,
) -> Sequence[Result]:
    """The next `limit` results of the job after `after`, by id or by (confidence, id).

    `corrected`: only results with (True) or without (False) a correction. In confidence order the
    results without a confidence (those that failed) are left out.
    """
    job = literal(job_id, BigInteger())
    ordering: tuple[Any, ...]
    if order == "confidence":
        within, ordering = _confidence_range(job, filters, after), (Result.job_id, Result.confidence, Result.id)
    else:
        within, ordering = _id_range(job, after.id), (Result.job_id, Result.id)
    query: Select[Result] = select(Result).where(within, *_conditions(job, filters, corrected))
    return session.scalars(query.order_by(*ordering).limit(limit)).all()


def _id_range(job: ColumnElement[Any], after_id: int) -> ColumnElement[bool]:
    key = tuple_(Result.job_id, Result.id)
    return and_(key > tuple_(job, _id(after_id)), key <= tuple_(job, _id(MAX_ID)))


def _confidence_range(job: ColumnElement[Any], filters: ResultFilter, after: After) -> ColumnElement[bool]:
    """(job_id, confidence, id) between the page's start and the job's end: the (job_id, confidence, id) index's
    own range. A confidence bound narrows the range itself, so the index skips what is below it."""
    start = (-INFINITY, 0) if after.confidence is None else (after.confidence, after.id)
    if filters.min_confidence is not None:
        start = max(start, (filters.min_confidence, 0))  # ids start at 1: (c, 0) is below every row at c
    high = INFINITY if filters.max_confidence is None else filters.max_confidence
    key = tuple_(Result.job_id, Result.confidence, Result.id)
    return and_(
        key > tuple_(job, _confidence(start[0]), _id(start[1])),
        key <= tuple_(job, _confidence(high), _id(MAX_ID)),
    )


def _conditions(job: ColumnElement[Any], filters: ResultFilter, corrected: bool | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.label is not None:
        conditions.append(Result.label == filters.label)
    if filters.status is not None:
        conditions.append(Result.status == filters.status)
    if filters.min_confidence is not None:
        conditions.append(Result.confidence >= filters.min_confidence)
    if filters.max_confidence is not None:
        conditions.append(Result.confidence <= filters.max_confidence)
    if (uncertain := uncertain_condition(filters)) is not None:
        conditions.append(uncertain)
    if corrected is not None:
        # job_id first: the correction table's (job_id, result_id, id) index answers it per row.
        has = exists().where(Correction.job_id == job, Correction.result_id == Result.id)
        conditions.append(has if corrected else ~has)
    return conditions


def _id(value: int) -> ColumnElement[int]:
    return literal(value, BigInteger())


def _confidence(value: float) -> ColumnElement[float]:
    return literal(value, Float())
