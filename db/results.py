"""Results: one batch's outcomes written in bulk, once, and the queries that read them.

Each function takes a keyword-only `session` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    LargeBinary,
    Select,
    and_,
    bindparam,
    func,
    insert,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from classifier.outcomes import Outcome
from db.jobs import count_results
from db.models import BATCH, MAX_ID, BatchStatus, Result, ResultStatus, utcnow
from db.session import Float8Array, make_engine


@dataclass(frozen=True)
class BatchWork:
    batch_id: int
    job_id: int
    model_version: str
    paths: list[str]
    attempt: int = 1
    roots: list[str] | None = None  # where its files may be opened (None: anywhere)
    reuse: bool = False  # whether its job takes earlier results of the same bytes and model (earlier_results)


def record_batch_results(
    *, session: Session, work: BatchWork, outcomes: Iterable[Outcome], batch_status: BatchStatus = BatchStatus.DONE
) -> bool:
    """Write a batch's results in bulk and advance its job; False if the batch was already recorded.

    Closing the batch and writing its rows are one transaction, and a batch closes once: so every
    image of a batch gets exactly one row, however often the batch is delivered or started.
    """
    ordered = _in_batch_order(work, outcomes)
    failed = sum(1 for o in ordered if o.error is not None)
    if session.get_bind().dialect.name == "postgresql":
        return _record_at_once(session, work, ordered, failed, batch_status)
    closed = session.execute(_CLOSE_BATCH, {"batch": work.batch_id, "closing": batch_status, "closed_at": utcnow()})
    if closed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if ordered:
        session.execute(insert(Result), [_result_row(work, outcome) for outcome in ordered])
    count_results(session, work.job_id, len(ordered) - failed, failed, sum(1 for o in ordered if o.reused))
    return True


def earlier_results(*, session: Session, model_version: str, hashes: list[bytes]) -> dict[bytes, tuple[str, float]]:
    """The label and confidence of an earlier successful result of `model_version`, by content hash.

    On PostgreSQL, run it on a connection of `lookup_engine`: one round trip under the planner settings
    the query needs to stay fast (any other connection gives the same answer, with the planner's risks).
    """
    found = dict[bytes, tuple[str, float]]()
    if not hashes:
        return found
    if session.get_bind().dialect.name == "postgresql":
        if any(len(h) != HASH_BYTES for h in hashes):
            raise ValueError(f"content hashes are SHA-256 digests of {HASH_BYTES} bytes")
        params = {"hashes": b"".join(hashes), "version": model_version, "ok": ResultStatus.OK.value}
        return {row.content_hash: (row.label, row.confidence) for row in session.execute(_LOOKUP, params)}
    for start in range(0, len(hashes), _LOOKUP_CHUNK):
        query = select(Result.content_hash, Result.label, Result.confidence).where(
            Result.content_hash.in_(hashes[start : start + _LOOKUP_CHUNK]),
            Result.model_version == model_version,
            Result.status == ResultStatus.OK,
        )
        found.update((row.content_hash, (row.label, row.confidence)) for row in session.execute(query))
    return found


def lookup_engine(url: str) -> Engine:
    """The engine for earlier_results. On PostgreSQL: autocommit (a lookup is one statement, one round
    trip) and, set once per connection, a generic plan without sequential scans (see _LOOKUP)."""
    if make_url(url).get_backend_name() != "postgresql":
        return make_engine(url, ping=False)
    options = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off"
    return make_engine(url, ping=False, isolation_level="AUTOCOMMIT", connect_args={"options": options})


_LOOKUP_CHUNK = 4096  # hashes per query: SQLite allows 32,766 parameters

HASH_BYTES = 32

# A batch's hashes sent as one string of bytes and split by the server, looked up through the hash index
# under a generic plan (lookup_engine). A list of 1,024 constants is planned constant by constant (7 µs of
# PostgreSQL per hash, paid by every first run), an array parameter costs the worker 3 µs per hash to
# encode, and a plan made while the table was small scans the whole table (docs/performance.md, "Re-runs").
_LOOKUP = text(
    "SELECT content_hash, label, confidence FROM result WHERE content_hash = ANY(ARRAY("
    f"SELECT substring(:hashes FROM i * {HASH_BYTES} + 1 FOR {HASH_BYTES}) "
    f"FROM generate_series(0, length(:hashes) / {HASH_BYTES} - 1) AS i)) "
    "AND model_version = :version AND status = :ok"
).bindparams(bindparam("hashes", type_=LargeBinary))


# Built once, as the workers run it on every batch.
_CLOSE_BATCH = (
    update(BATCH)
    .where(BATCH.c.id == bindparam("batch"), BATCH.c.status.not_in([BatchStatus.DONE, BatchStatus.FAILED]))
    .values(
        status=bindparam("closing", type_=BATCH.c.status.type),
        finished_at=bindparam("closed_at", type_=BATCH.c.finished_at.type),
        holder=None,
    )
)


def _in_batch_order(work: BatchWork, outcomes: Iterable[Outcome]) -> list[Outcome]:
    """One outcome per path of the batch, in the batch's order (ValueError if one is missing)."""
    given = list(outcomes)
    if len(given) == len(work.paths) and all(o.path == p for o, p in zip(given, work.paths, strict=True)):
        return given  # serving keeps the order: the usual case, checked without a dict
    by_path = {outcome.path: outcome for outcome in given}
    if len(by_path) != len(work.paths) or not all(path in by_path for path in work.paths):
        raise ValueError(f"batch {work.batch_id}: the outcomes do not match its {len(work.paths)} paths")
    return [by_path[path] for path in work.paths]


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
        "content_hash": outcome.content_hash,
    }


def _record_at_once(
    session: Session, work: BatchWork, ordered: list[Outcome], failed: int, closing: BatchStatus
) -> bool:
    labels = sorted({o.label for o in ordered if o.label is not None})
    code: dict[str | None, int] = {None: 0, **{label: n for n, label in enumerate(labels, start=1)}}
    params = {
        "batch": work.batch_id,
        "job": work.job_id,
        "model_version": work.model_version,
        "labels": labels,
        "label_codes": bytes([code[o.label] for o in ordered]),
        "confidences": Float8Array([o.confidence for o in ordered]),
        "errors": json.dumps({n: o.error for n, o in enumerate(ordered, start=1) if o.error is not None}),
        "hashes": b"".join(o.content_hash or _NO_HASH for o in ordered),
        "no_hash": _NO_HASH,
        "closing": closing.value,
        "closed_at": utcnow(),
        "done_now": len(ordered) - failed,
        "failed_now": failed,
        "reused_now": sum(1 for o in ordered if o.reused),
    }
    return bool(session.execute(_POSTGRES_RECORD, params).scalar_one())


_NO_HASH = bytes(32)  # a file that could not be read: its row gets no hash


# Closing the batch, writing its rows and counting them on the job: one statement, one round trip, as every
# worker runs it on every batch. The rows are written only if this statement closed the batch (a batch
# closes once), and the job's counters move only then. The paths come from the batch's own row; the
# outcomes travel by position, each column packed as the cheapest thing for the worker to make: labels as
# one byte each (an index into :labels, 0 for none), confidences as a binary float8[] (Float8Array), the
# errors as a JSON object of the failed positions only, and the content hashes as one string of 32 bytes
# each. The worker sends no path back, and spells out no float (docs/performance.md, "Fleet scale").
# The job's counters and end are those of db.jobs.count_results, as increments, so that concurrent
# batches of one job add up (the UPDATE re-reads a row another one changed).
_POSTGRES_RECORD = text(
    """
    WITH closed AS (
        UPDATE batch SET status = :closing, finished_at = :closed_at, holder = NULL
        WHERE id = :batch AND status NOT IN ('done', 'failed')
        RETURNING paths
    ), written AS (
        INSERT INTO result (job_id, batch_id, path, status, label, confidence, model_version, error, content_hash)
        SELECT :job, :batch, p.path, CASE WHEN e.error IS NULL THEN 'ok' ELSE 'failed' END,
               (CAST(:labels AS text[]))[get_byte(:label_codes, CAST(p.n AS integer) - 1)],
               NULLIF(c.v, 'NaN'), :model_version, e.error,
               NULLIF(substring(:hashes FROM CAST(p.n AS integer) * 32 - 31 FOR 32), :no_hash)
        FROM closed
        CROSS JOIN LATERAL json_array_elements_text(closed.paths) WITH ORDINALITY AS p(path, n)
        JOIN unnest(CAST(:confidences AS float8[])) WITH ORDINALITY AS c(v, n) ON c.n = p.n
        LEFT JOIN json_each_text(CAST(:errors AS json)) AS e(n, error) ON CAST(e.n AS bigint) = p.n
        ORDER BY p.n
    ), counted AS (
        UPDATE job SET done = done + :done_now, failed = failed + :failed_now, reused = reused + :reused_now,
            status = CASE WHEN NOT (planned AND done + failed + :done_now + :failed_now >= total
                                    AND status IN ('queued', 'running')) THEN status
                          WHEN done + :done_now = 0 THEN 'failed'
                          WHEN failed + :failed_now = 0 THEN 'succeeded' ELSE 'partially_failed' END,
            finished_at = CASE WHEN planned AND done + failed + :done_now + :failed_now >= total
                                    AND status IN ('queued', 'running') THEN :closed_at ELSE finished_at END
        WHERE id = :job AND EXISTS (SELECT FROM closed)
    )
    SELECT count(*) FROM closed
    """
)


@dataclass(frozen=True)
class ResultFilter:
    label: str | None = None
    status: ResultStatus | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    # Only uncertain results (True: status ok and confidence below `threshold`, the threshold of the job's
    # model, classifier.uncertainty) or only the others (False: the rest, failed results included).
    uncertain: bool | None = None
    threshold: float | None = None


def uncertain_condition(filters: ResultFilter) -> ColumnElement[bool] | None:
    """The filter's uncertainty condition, None when it has none (ValueError without a threshold)."""
    if filters.uncertain is None:
        return None
    if filters.threshold is None:
        raise ValueError("filtering on uncertain needs the model's threshold")
    uncertain = and_(Result.status == ResultStatus.OK, Result.confidence < filters.threshold)
    return uncertain if filters.uncertain else ~uncertain


def list_results(
    *, session: Session, job_id: int, filters: ResultFilter, after_id: int = 0, limit: int = 100
) -> Sequence[Result]:
    """Return results in id order after `after_id` (keyset pagination: stable while rows are added)."""
    # A range of (job_id, id) row values, and no "job_id = ?": only the job's (job_id, id) index serves it, so
    # PostgreSQL pages through the job's own rows. With "job_id = ? AND id > ?" it could walk the primary key
    # instead, through every other job's rows between, its estimate blind to jobs' ids being ranges
    # (1.7 s for a page at 85 M rows; 1 ms this way).
    key = tuple_(Result.job_id, Result.id)
    job = literal(job_id, BigInteger())
    within = and_(key > tuple_(job, literal(after_id, BigInteger())), key <= tuple_(job, literal(MAX_ID, BigInteger())))
    query: Select[Result] = select(Result).where(within)
    if filters.label is not None:
        query = query.where(Result.label == filters.label)
    if filters.status is not None:
        query = query.where(Result.status == filters.status)
    if filters.min_confidence is not None:
        query = query.where(Result.confidence >= filters.min_confidence)
    if filters.max_confidence is not None:
        query = query.where(Result.confidence <= filters.max_confidence)
    if (uncertain := uncertain_condition(filters)) is not None:
        query = query.where(uncertain)
    return session.scalars(query.order_by(Result.job_id, Result.id).limit(limit)).all()


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
