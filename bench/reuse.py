"""What a re-run costs: a second job over an unchanged folder, whose files' bytes and model match the first's.

    python -m bench.reuse                                   # the 20,000 labelled photos, PostgreSQL, 2 workers
    python -m bench.reuse --folder ../shared/data/catsdogs-fullres --database sqlite

The same stack as bench.fleet (a private PostgreSQL and Redis, the API, the control plane, `--workers`
solo-pool workers), with real serving. Three jobs over the folder: the first classifies every file, the
second reuses every result (each file is read and hashed, nothing is decoded or run through the network),
the third (`"reuse": false`) classifies every file again. For each: the time from `POST /jobs` to the job's
end as the database recorded it, and the CPU time of every process of the stack (from /proc).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import SHARED_DATA, WORK_DIR, environment, print_table, write_json
from bench.fleet import TOKEN, _wait_until_ended, cpu_seconds, stack


def run_job(running: dict[str, Any], folder: Path, reuse: bool) -> dict[str, Any]:
    before = sum(cpu_seconds(pid) for pids in running["pids"].values() for pid in pids)
    with httpx.Client(base_url=running["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        job_id = http.post("/jobs", json={"folder": str(folder), "reuse": reuse}).json()["id"]
        _wait_until_ended(running["database_url"], job_id)
        job = http.get(f"/jobs/{job_id}").json()
    cpu = sum(cpu_seconds(pid) for pids in running["pids"].values() for pid in pids) - before
    assert job["status"] == "succeeded", job
    created, finished = (datetime.fromisoformat(job[key]) for key in ("created_at", "finished_at"))
    return {"job": job_id, "reuse": reuse, "images": job["counts"]["done"], "reused": job["counts"]["reused"],
            "seconds": (finished - created).total_seconds(), "cpu_seconds": cpu}  # fmt: skip


COLUMNS = [("job", "job", "d"), ("reuse", "reuse", ""), ("images", "images", ",d"), ("reused", "reused", ",d"),
           ("seconds", "seconds", ".2f"), ("cpu_seconds", "CPU s (all processes)", ".1f"),
           ("time_ratio", "time / first", ".3f"), ("cpu_ratio", "CPU / first", ".3f")]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=SHARED_DATA / "catsdogs")
    parser.add_argument("--database", default="postgresql", choices=["postgresql", "sqlite"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", type=Path, default=WORK_DIR / "reuse.json")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    with stack(args.database, args.batch_size, args.workers, 0, folder) as running:
        rows = [run_job(running, folder, reuse) for reuse in (True, True, False)]
    first = rows[0]
    for row in rows:
        row["time_ratio"] = row["seconds"] / first["seconds"]
        row["cpu_ratio"] = row["cpu_seconds"] / first["cpu_seconds"]
    print(f"\nenvironment: {environment()}")
    print(f"{folder}: {args.database}, {args.workers} workers, BATCH_SIZE {args.batch_size}")
    print_table(rows, COLUMNS)
    write_json(args.json, {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()},
                           "runs": rows})  # fmt: skip


if __name__ == "__main__":
    main()
