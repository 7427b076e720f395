"""A job's results read for export: page after page of plain rows, each page in a short transaction of its own.

`result_page` takes a keyword-only `session` and never commits, like every query function.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import BigInteger, and_, literal, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from db.corrections import corrected_labels
from db.models import MAX_ID, Result

# corrected_label: the label a person gave it last (db.corrections), None where nobody has; label stays the model's.
COLUMNS = ("id", "path", "status", "label", "confidence", "model_version", "error", "corrected_label")
_SELECTED = [getattr(Result, name) for name in COLUMNS[:-1]]
ExportRow = tuple[Any, ...]


def result_page(*, session: Session, job_id: int, after_id: int, limit: int) -> list[ExportRow]:
    """Up to `limit` of the job's results after `after_id`, in id order, as tuples of COLUMNS."""
    # The (job_id, id) row-value range of db.results.list_results, for the same reason: only the job's
    # (job_id, id) index serves it, so PostgreSQL never walks other jobs' rows.
    key = tuple_(Result.job_id, Result.id)
    job = literal(job_id, BigInteger())
    within = and_(key > tuple_(job, literal(after_id, BigInteger())), key <= tuple_(job, literal(MAX_ID, BigInteger())))
    query = select(*_SELECTED).where(within).order_by(Result.job_id, Result.id).limit(limit)
    rows = session.execute(query).all()
    corrected = corrected_labels(session=session, job_id=job_id, result_ids=[row.id for row in rows])
    return [(*row, corrected.get(row.id)) for row in rows]


def result_pages(sessions: sessionmaker[Session], job_id: int, page_size: int) -> Iterator[list[ExportRow]]:
    """Every result of the job, a page at a time, each page read in its own short transaction.

    A download runs at the client's pace: one transaction held open across it would pin PostgreSQL's
    vacuum horizon, and on SQLite (db.session begins every transaction IMMEDIATE) hold the write lock.
    """
    after = 0
    while True:
        with sessions() as session:
            rows = result_page(session=session, job_id=job_id, after_id=after, limit=page_size)
        if rows:
            yield rows
        if len(rows) < page_size:
            return
        after = rows[-1][0]
