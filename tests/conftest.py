"""Shared fixtures: real PostgreSQL, SQLite, Redis, a published model, a real Celery worker process."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from classifier import store
from classifier.model import build_model
from cli.services import worker_command
from db.migrate import upgrade
from db.session import make_engine, make_session_factory

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CATSDOGS_DATA", ROOT.parent / "shared" / "data")).resolve()
CATSDOGS = DATA / "catsdogs"
FULLRES = DATA / "catsdogs-fullres"
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
API_TOKEN = f"test-token-{uuid.uuid4().hex}"  # the API's token in every test that starts one
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """A few real photos of each class from the test split."""
    return sorted((CATSDOGS / "test" / "cat").glob("*.jpg"))[:6] + sorted((CATSDOGS / "test" / "dog").glob("*.jpg"))[:6]


def _admin_execute(sql: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(sql))
    admin.dispose()


def _fresh_postgres_database() -> Iterator[str]:
    name = f"catsdogs_test_{uuid.uuid4().hex[:12]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new PostgreSQL database for this test session, migrated to head."""
    for url in _fresh_postgres_database():
        upgrade(url)
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catsdogs.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once on PostgreSQL and once on SQLite."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (SQLAlchemy's external-transaction recipe)."""
    engine = make_engine(db_url)
    with engine.connect() as conn:
        trans = conn.begin()
        with Session(bind=conn, join_transaction_mode="create_savepoint") as s:
            yield s
        trans.rollback()
    engine.dispose()


@pytest.fixture(scope="session")
def allowed_roots(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """ALLOWED_ROOTS for the tests' APIs: every test's tmp_path, and the shared photos."""
    return [tmp_path_factory.getbasetemp(), DATA]


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding one real, freshly initialised network as v1."""
    path = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    store.publish(build_model(), store.base_meta(metrics={"val_accuracy": 0.5, "test_accuracy": 0.5}), path)
    return path


@pytest.fixture
def queue_name() -> str:
    return f"gpu-test-{uuid.uuid4().hex[:8]}"


def service_env(database_url: str, model_store: Path, queue_name: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": REDIS_URL,
        "MODEL_STORE": str(model_store),
        "QUEUE_NAME": queue_name,
        "BATCH_SIZE": "64",
        **extra,
    }


class WorkerProcess:
    """A real `celery -A workers worker` process in the background."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 1) -> None:
        self.log_path = log_path
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        args = [*worker_command(env["QUEUE_NAME"], concurrency, self.name), "--without-mingle", "--without-gossip"]
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if " ready." in self.log_path.read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[object]:
    """Call with (env, concurrency=1) to start a worker process; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], concurrency: int = 1) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", concurrency)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def sessions_for(url: str):  # type: ignore[no-untyped-def]
    return make_session_factory(make_engine(url))
