"""One job's batches on a timeline: when each was sent, claimed and finished, from the database.

    python -m bench.timeline [--data test] [--database postgresql] [--processes 2] [--jobs 3]
                             [--json var/bench/timeline.json]

Runs the system as bench.throughput does (private Redis, the API, one Celery worker with a pool of
--processes, a warm-up job first), then --jobs jobs of one data set. For each job it prints every
batch's times in seconds after POST /jobs, and sums up where the time between batches went:
the job row's creation, the first claim, and each pause between a batch's end and the next claim
(a process's results transaction, the acknowledgement and the next message).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from bench.common import DATA_SETS, WORK_DIR, median, print_table, repeated_folder, write_json
from bench.throughput import running_system
from db.models import Batch, Job


def job_timeline(database_url: str, posted: float) -> dict[str, Any]:
    """The last job's batches, with times relative to `posted` (the epoch time POST /jobs was sent)."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        job = conn.execute(select(Job.id, Job.created_at, Job.finished_at).order_by(Job.id.desc()).limit(1)).one()
        batches = conn.execute(
            select(Batch.seq, Batch.paths, Batch.sent_at, Batch.started_at, Batch.finished_at)
            .where(Batch.job_id == job.id)
            .order_by(Batch.started_at)
        ).all()
    engine.dispose()
    rows = [
        {"seq": b.seq, "images": len(b.paths), "sent": b.sent_at.timestamp() - posted,
         "claimed": b.started_at.timestamp() - posted, "finished": b.finished_at.timestamp() - posted}
        for b in batches
    ]  # fmt: skip
    return {
        "job_created": job.created_at.timestamp() - posted,
        "job_finished": job.finished_at.timestamp() - posted,
        "batches": rows,
        "pauses": pauses(rows),
    }


def pauses(batches: list[dict[str, Any]]) -> list[float]:
    """Each claim after the first round, less the earliest unmatched finish before it: a process's pause."""
    finishes = sorted(b["finished"] for b in batches)
    claims = sorted(b["claimed"] for b in batches)
    waits, used = [], 0
    for claim in claims:
        if used < len(finishes) and finishes[used] <= claim:
            waits.append(claim - finishes[used])
            used += 1
    return waits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", choices=tuple(DATA_SETS), default="test")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=WORK_DIR / "timeline.json")
    args = parser.parse_args(argv)
    folder = DATA_SETS[args.data]
    folder = repeated_folder(folder, 5000) if args.data == "fullres" else folder
    jobs = []
    with running_system(args.database, args.processes, WORK_DIR / f"timeline-{args.database}") as system:
        for _ in range(args.jobs):
            posted = time.time()
            run = system.run_job(folder)
            jobs.append(job_timeline(system.database_url, posted) | {"images_per_second": run.rate})
    for k, job in enumerate(jobs, 1):
        print(f"\njob {k}: {job['images_per_second']:.0f} images/s, job row {job['job_created'] * 1000:.0f} ms "
              f"after POST, finished at {job['job_finished']:.3f} s")  # fmt: skip
        print_table(job["batches"], [("seq", "seq", "d"), ("images", "images", "d"), ("sent", "sent s", ".3f"),
                                     ("claimed", "claimed s", ".3f"), ("finished", "finished s", ".3f")])  # fmt: skip
    waits = [1000 * w for job in jobs for w in job["pauses"]]
    first = [1000 * min(b["claimed"] for b in job["batches"]) for job in jobs]
    print(f"\nfirst claim {median(first):.0f} ms after POST (median of {len(first)} jobs); "
          f"pause between a batch's end and the next claim: median {median(waits):.0f} ms, "
          f"{min(waits):.0f}-{max(waits):.0f} ms over {len(waits)}")  # fmt: skip
    write_json(args.json, {"args": vars(args) | {"json": str(args.json)}, "jobs": jobs})


if __name__ == "__main__":
    main()
