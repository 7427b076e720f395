"""Engine and session factory for PostgreSQL or the embedded SQLite default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        return create_engine(url, pool_pre_ping=ping, **kwargs)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)
    _configure_sqlite(engine)
    return engine


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
