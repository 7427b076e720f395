"""catsdogs run's supervisor: a worker that exits, or is killed, is started again."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from cli import services
from tests.conftest import service_env

pytestmark = pytest.mark.slow


def _wait(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def supervised(
    sqlite_url: str, model_store: Path, queue_name: str, tmp_path: Path
) -> Iterator[tuple[services.Supervisor, Path]]:
    log = tmp_path / "worker.log"
    env = service_env(sqlite_url, model_store, queue_name)
    supervisor = services.Supervisor(interval=0.2)
    supervisor.add("worker", lambda: services.start_worker(env, log, queue_name))
    yield supervisor, log
    supervisor.stop()


def _readies(log: Path) -> int:
    return log.read_text(errors="replace").count(" ready.") if log.exists() else 0


def test_a_worker_killed_whole_is_started_again(supervised: tuple[services.Supervisor, Path]) -> None:
    supervisor, log = supervised
    _wait(lambda: _readies(log) == 1)
    first = supervisor.procs["worker"]
    first.send_signal(signal.SIGKILL)
    _wait(lambda: _readies(log) == 2)
    assert supervisor.restarts == 1 and supervisor.procs["worker"].pid != first.pid


def test_a_pool_process_killed_while_its_worker_starts_does_not_leave_it_down(
    supervised: tuple[services.Supervisor, Path],
) -> None:
    """Celery gives up when a pool process dies during its start ("Could not start worker processes")."""
    supervisor, log = supervised
    first = supervisor.procs["worker"]
    main = psutil.Process(first.pid)
    _wait(lambda: bool(main.children()))
    for child in main.children():
        child.send_signal(signal.SIGKILL)
    try:
        first.wait(30)
    except subprocess.TimeoutExpired:  # this time Celery replaced the pool process itself
        _wait(lambda: _readies(log) >= 1)
        return
    assert "Could not start worker processes" in log.read_text(errors="replace")
    _wait(lambda: _readies(log) >= 2 and supervisor.restarts >= 1)  # exited for good, and started again
    assert supervisor.procs["worker"].poll() is None
