"""SQLAlchemy 2.0 typed models.

The database is the source of truth: a job's images are recorded in its
batches before any task is sent, and a result row exists once per image.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Now, in UTC: every timestamp the queries write."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every backend (SQLite hands back naive UTC values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


# Ids are 64-bit: PostgreSQL's BIGINT; SQLite's INTEGER PRIMARY KEY is already 64-bit, and must stay
# INTEGER to remain the rowid alias that numbers new rows (migration 0004).
Id = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e])


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIALLY_FAILED = "partially_failed"
    CANCELLED = "cancelled"


FINAL_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PARTIALLY_FAILED, JobStatus.CANCELLED})


class BatchStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ResultStatus(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"


class ModelVersion(Base):
    __tablename__ = "model_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    architecture: Mapped[str] = mapped_column(String(64))
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    registered_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Job(Base):
    __tablename__ = "job"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    folder: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(ForeignKey("model_version.version"))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.QUEUED, index=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    planned: Mapped[bool] = mapped_column(default=False)  # every image of the folder is in a batch
    # The listing's lease and cursor: the process listing the folder ("host:pid"), renewed while it
    # lists, and the last path recorded in a batch; a planner that takes over continues after it.
    planner: Mapped[str | None] = mapped_column(String(255))
    planner_heartbeat_at: Mapped[datetime | None]
    plan_cursor: Mapped[str | None] = mapped_column(Text)
    # The folders its files may be opened in (resolved, as text); None: any (development mode).
    roots: Mapped[list[str] | None] = mapped_column(JSON)
    skipped: Mapped[int] = mapped_column(Integer, default=0)  # files of the folder left out of the job
    # Give a file whose bytes and model match an earlier result that result (counted in `reused`, and in `done`).
    reuse: Mapped[bool] = mapped_column(default=True, server_default=true())
    reused: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # {"counts": {reason: n}, "examples": {reason: [path, ...]}} (classifier.files.SKIP_REASONS)
    skipped_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The completion webhook (migration 0008; db.notifications): where the control plane POSTs the job once it
    # ends, when that was answered with a 2xx, attempts so far, when the next is due (None: none will be) and why
    # the last one failed.
    notify_url: Mapped[str | None] = mapped_column(Text)
    notified_at: Mapped[datetime | None]
    notify_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    notify_next_at: Mapped[datetime | None] = mapped_column(index=True)
    notify_error: Mapped[str | None] = mapped_column(Text)

    batches: Mapped[list[Batch]] = relationship(back_populates="job", cascade="all, delete-orphan")


class Batch(Base):
    __tablename__ = "batch"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[int] = mapped_column(Id, ForeignKey("job.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    paths: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[BatchStatus] = mapped_column(_enum(BatchStatus), default=BatchStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]  # last time a task for it was sent to the broker
    holder: Mapped[str | None] = mapped_column(String(255))  # "host:pid" of the process running it
    heartbeat_at: Mapped[datetime | None]  # the holder's lease is renewed while it runs
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="batches")


class Result(Base):
    __tablename__ = "result"
    # (job_id, confidence, id): the pages of a job's results least confident first (migration 0006).
    __table_args__ = (
        Index("ix_result_job_id_id", "job_id", "id"),
        Index("ix_result_job_id_confidence_id", "job_id", "confidence", "id"),
        Index(
            "ix_result_content_hash",
            "content_hash",
            postgresql_using="hash",
            postgresql_where=text("content_hash IS NOT NULL"),
            sqlite_where=text("content_hash IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # No foreign key and no unique (job_id, path): a row per image holds by construction (a batch's
    # results are written by the one transaction that closes it), and both checks cost every insert
    # (migration 0005).
    job_id: Mapped[int] = mapped_column(Id)
    # The batch that recorded it. No index and no foreign key: nothing looks results up by batch,
    # a job's deletion reaches them through job_id, and both cost every insert (migration 0003).
    batch_id: Mapped[int] = mapped_column(Id)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[ResultStatus] = mapped_column(_enum(ResultStatus))
    label: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the file's bytes as the worker read them (None where it could not read them): a later job
    # of the same model reuses this result for a file of the same bytes (migration 0007).
    content_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


CORRECTION_LABELS = ("cat", "dog", "neither")  # "neither": neither animal, or not a usable photo


class Correction(Base):
    """A person's label for one result; the result's own label (the model's) is never changed.

    A result's current label is its latest correction's new_label, else the model's; undoing deletes
    the latest correction (db.corrections owns this table).
    """

    __tablename__ = "correction"
    __table_args__ = (
        Index("ix_correction_job_id_result_id_id", "job_id", "result_id", "id"),
        CheckConstraint(f"new_label IN {CORRECTION_LABELS}", name="ck_correction_new_label"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # Deleting a job deletes its corrections; result_id has no foreign key, as result rows have none.
    job_id: Mapped[int] = mapped_column(Id, ForeignKey("job.id", ondelete="CASCADE"))
    result_id: Mapped[int] = mapped_column(Id)
    old_label: Mapped[str | None] = mapped_column(String(32))  # the label shown before: the model's or a correction's
    new_label: Mapped[str] = mapped_column(String(32))
    who: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


# The Core tables of the rows each worker writes on every batch: statements on them skip the ORM's
# bulk-update bookkeeping, which cost more than the statements themselves (docs/performance.md).
BATCH: Table = Batch.__table__  # type: ignore[assignment]
JOB: Table = Job.__table__  # type: ignore[assignment]
