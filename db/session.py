"""Engine and session factory for PostgreSQL or the embedded SQLite default."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 60_000


def make_engine(url: str, *, ping: bool = True, **kwargs: Any) -> Engine:
    """Return an engine; for SQLite, one that several processes can write through safely.

    `ping`: test each pooled connection with a round trip when it is taken, so that a request after a
    database restart does not fail. Processes that retry any database error themselves (the workers
    and the control plane) turn it off: it was a round trip on every transaction, 0.8 µs of
    worker CPU per image at BATCH_SIZE 1,024 (docs/performance.md, "Fleet scale").
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=ping, **kwargs)
        if parsed.get_backend_name() == "postgresql":
            event.listen(engine, "connect", _register_binary_dumpers)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)
    _configure_sqlite(engine)
    return engine


class Float8Array:
    """Floats sent to PostgreSQL as a float8[] parameter in its binary format, packed by numpy: psycopg's own
    array dumper makes a Python call per element, and JSON or text spells each float out (about 1.5 µs
    per confidence of a worker's CPU, docs/performance.md). None is sent as NaN (NULLIF(v, 'NaN') reads it back)."""

    __slots__ = ("data",)
    _HEADER = struct.Struct(">iiIii")  # dimensions, has-nulls flag, element type, length, lower bound
    _FLOAT8 = 701
    _ELEMENT = np.dtype([("size", ">i4"), ("value", ">f8")])  # each element: its byte length, then its value

    def __init__(self, values: Sequence[float | None]) -> None:
        if not values:
            self.data = struct.pack(">iiI", 0, 0, self._FLOAT8)
            return
        elements = np.empty(len(values), dtype=self._ELEMENT)
        elements["size"] = 8
        elements["value"] = [math.nan if v is None else v for v in values]
        self.data = self._HEADER.pack(1, 0, self._FLOAT8, len(values), 1) + elements.tobytes()


class _Float8ArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1022  # float8[]

    def dump(self, obj: Float8Array) -> bytes:
        return obj.data


def _register_binary_dumpers(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.adapters.register_dumper(Float8Array, _Float8ArrayDumper)


def _configure_sqlite(engine: Engine) -> None:
    # Take the write lock when a transaction begins: a deferred transaction that
    # later upgrades to a writer fails with "database is locked" instead of waiting.
    # https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def skip_flush_wait(session: Session) -> None:
    """Let this transaction's commit return before PostgreSQL has flushed it to disk.

    Only for writes that a database crash may lose without harm: a claim or a lease renewal
    lost that way leaves a batch that looks queued or stale, which is run again, and any later
    commit that waits for the flush (a batch's results) makes the earlier ones durable too.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
