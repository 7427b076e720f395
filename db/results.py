"""Results: one batch's outcomes written in bulk, once, and the queries that read them.

Each function takes a keyword-only `session` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Float, Select, Text, bindparam, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from classifier.outcomes import Outcome
from db.jobs import finalize_if_complete
from db.models import Batch, BatchStatus, Job, Result, ResultStatus, utcnow


@dataclass(frozen=True)
class BatchWork:
    batch_id: int
    job_id: int
    model_version: str
    paths: list[str]
    attempt: int = 1
    roots: list[str] | None = None  # where its files may be opened (None: anywhere)


def record_batch_results(
    *, session: Session, work: BatchWork, outcomes: Iterable[Outcome], batch_status: BatchStatus = BatchStatus.DONE
) -> bool:
    """Write a batch's results in bulk and advance its job; False if the batch was already recorded."""
    closed = session.execute(
        update(Batch)
        .where(Batch.id == work.batch_id, Batch.status.not_in([BatchStatus.DONE, BatchStatus.FAILED]))
        .values(status=batch_status, finished_at=utcnow(), holder=None)
    )
    if closed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    rows = [_result_row(work, o) for o in outcomes]
    if rows:
        _insert_ignoring_duplicates(session, work, rows)
    failed = sum(1 for r in rows if r["status"] == ResultStatus.FAILED)
    session.execute(
        update(Job).where(Job.id == work.job_id).values(done=Job.done + len(rows) - failed, failed=Job.failed + failed)
    )
    finalize_if_complete(session, work.job_id)
    return True


def _result_row(work: BatchWork, outcome: Outcome) -> dict[str, Any]:
    return {
        "job_id": work.job_id,
        "batch_id": work.batch_id,
        "path": outcome.path,
        "status": ResultStatus.FAILED if outcome.error else ResultStatus.OK,
        "label": outcome.label,
        "confidence": outcome.confidence,
        "model_version": work.model_version,
        "error": outcome.error,
    }


def _insert_ignoring_duplicates(session: Session, work: BatchWork, rows: list[dict[str, Any]]) -> None:
    if session.get_bind().dialect.name != "postgresql":
        session.execute(sqlite.insert(Result).on_conflict_do_nothing(index_elements=["job_id", "path"]), rows)
        return
    arrays = {name: [r[name] for r in rows] for name in _RESULT_ARRAYS}
    arrays["status"] = [status.value for status in arrays["status"]]
    session.execute(
        _POSTGRES_RESULTS_INSERT,
        {"job_id": work.job_id, "batch_id": work.batch_id, "model_version": work.model_version, **arrays},
    )


_RESULT_ARRAYS: dict[str, TypeEngine[Any]] = {
    "path": Text(), "status": Text(), "label": Text(), "confidence": Float(), "error": Text(),
}  # fmt: skip


def _postgres_results_insert() -> postgresql.Insert:
    """One INSERT ... SELECT FROM unnest(arrays): five array parameters instead of eight per row,
    which PostgreSQL parses and plans far faster than a many-row VALUES list. Built once: building it
    for every batch added about 1.7 ms to a batch of 256 rows, a fifth of the whole write."""
    arrays = [cast(bindparam(name), postgresql.ARRAY(kind)) for name, kind in _RESULT_ARRAYS.items()]
    unnested = func.unnest(*arrays).table_valued(*_RESULT_ARRAYS).render_derived(name="u")
    source = select(
        bindparam("job_id", type_=BigInteger()), bindparam("batch_id", type_=BigInteger()),
        *(unnested.c[name] for name in _RESULT_ARRAYS), bindparam("model_version", type_=Text()),
    )  # fmt: skip
    names = ["job_id", "batch_id", *_RESULT_ARRAYS, "model_version"]
    table = Result.metadata.tables[Result.__tablename__]  # the Core table: a dict of arrays is not an ORM bulk insert
    return postgresql.insert(table).from_select(names, source).on_conflict_do_nothing(index_elements=["job_id", "path"])


_POSTGRES_RESULTS_INSERT = _postgres_results_insert()


@dataclass(frozen=True)
class ResultFilter:
    label: str | None = None
    status: ResultStatus | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None


def list_results(
    *, session: Session, job_id: int, filters: ResultFilter, after_id: int = 0, limit: int = 100
) -> Sequence[Result]:
    """Return results in id order after `after_id` (keyset pagination: stable while rows are added)."""
    query: Select[Result] = select(Result).where(Result.job_id == job_id, Result.id > after_id)
    if filters.label is not None:
        query = query.where(Result.label == filters.label)
    if filters.status is not None:
        query = query.where(Result.status == filters.status)
    if filters.min_confidence is not None:
        query = query.where(Result.confidence >= filters.min_confidence)
    if filters.max_confidence is not None:
        query = query.where(Result.confidence <= filters.max_confidence)
    return session.scalars(query.order_by(Result.id).limit(limit)).all()


def label_counts(*, session: Session, job_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Result.label, func.count())
        .where(Result.job_id == job_id, Result.label.is_not(None))
        .group_by(Result.label)
    )
    return {str(label): count for label, count in rows}


def failure_reasons(*, session: Session, job_id: int, limit: int = 10) -> dict[str, int]:
    rows = session.execute(
        select(Result.error, func.count().label("n"))
        .where(Result.job_id == job_id, Result.status == ResultStatus.FAILED)
        .group_by(Result.error)
        .order_by(func.count().desc())
        .limit(limit)
    )
    return {str(error): n for error, n in rows}
