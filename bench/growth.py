"""The result table as it grows: the API's result queries (p50, p95) and the workers' insert rate at 10 M and
100 M rows, with the table's and each index's size.

    python -m bench.growth                          # 10,000,000 then 100,000,000 rows, jobs of 5,000,000
    python -m bench.growth --sizes 1000000 --job-rows 500000      # a quick look

A private PostgreSQL (initdb) under var/bench, filled server-side with generate_series, a job of
`--job-rows` rows at a time (1% failed, two labels, confidences spread over 0.5-1), never through the
workers. At each size: the real API's GET /jobs/{id}/results on the newest job (first page, deep pages,
filters, a walk of 100 pages), then the workers' own write (db.results.record_batch_results, batches of
1,024) into a new job. Needs about 25 GB of disk for 100 M rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import WORK_DIR, environment, migrate_fresh, print_table, write_json
from bench.database import api_only, fill_results, query_latencies, write_rate
from db.session import make_engine


class LocalPostgres:
    """A cluster of the benchmark's own under var/bench (room for 100 M rows), on a free port."""

    def __init__(self, folder: Path) -> None:
        from cli.services import free_port

        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.chown(folder, "postgres", "postgres")
        for parent in folder.parents:  # the postgres user must reach its data
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o711)
        bindir = Path(os.path.realpath(shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb")).parent
        self.port, self.folder = free_port(), folder
        run = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*run, str(bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres",
                        "-E", "UTF8"], check=True, capture_output=True)  # fmt: skip
        self.proc = subprocess.Popen(
            [*run, str(bindir / "postgres"), "-D", str(folder / "data"), "-p", str(self.port), "-c",
             "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}", "-c", "shared_buffers=2GB",
             "-c", "max_wal_size=8GB", "-c", "maintenance_work_mem=1GB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True).returncode:
            time.sleep(0.1)
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c",
                        "CREATE DATABASE catsdogs"], check=True, capture_output=True)  # fmt: skip
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/catsdogs"

    def stop(self) -> None:
        from cli.services import stop

        stop(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)


def add_job(url: str, rows: int) -> tuple[int, float]:
    """A finished job of `rows` results inserted server-side; its id and the seconds it took."""
    start = time.perf_counter()
    job_id = fill_results(url, rows, analyze=False)
    return job_id, time.perf_counter() - start


def sizes(url: str) -> dict[str, float]:
    """The result table's heap and each of its indexes, in GiB."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c WHERE c.relname = 'result' "
            "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'result'::regclass)"
        )).all()  # fmt: skip
    engine.dispose()
    return {name: size / 2**30 for name, size in rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--job-rows", type=int, default=5_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path, default=WORK_DIR / "growth.json")
    args = parser.parse_args(argv)
    pg = LocalPostgres(WORK_DIR / "growth-pg")
    steps: list[dict[str, Any]] = []
    try:
        migrate_fresh(pg.url, WORK_DIR / "growth-models")
        filled, fill_seconds, job_id = 0, 0.0, 0
        for size in args.sizes:
            while filled < size:
                job_id, seconds = add_job(pg.url, min(args.job_rows, size - filled))
                filled, fill_seconds = filled + min(args.job_rows, size - filled), fill_seconds + seconds
                print(f"{filled:,} rows ({fill_seconds:.0f} s of inserts)", flush=True)
            engine = make_engine(pg.url)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE result"))
            engine.dispose()
            with api_only(pg.url, WORK_DIR / "growth") as (api, token):
                rows = min(args.job_rows, size)
                queries = query_latencies(api, token, job_id, rows, args.requests, first_id=filled - rows + 1)
            writes = write_rate(pg.url, 100 * 1024, 1024)
            steps.append({"rows": size, "fill_rows_per_second": filled / fill_seconds, "queries": queries,
                          "insert_rows_per_second": writes["rows_per_second"],
                          "wal_bytes_per_row": writes["wal_bytes_per_row"], "sizes_gib": sizes(pg.url)})  # fmt: skip
            _print(steps[-1])
    finally:
        pg.stop()
    print(f"\nenvironment: {environment()}")
    for step in steps:
        _print(step)
    write_json(args.json, {"environment": environment(), "steps": steps})


def _print(step: dict[str, Any]) -> None:
    print(f"\n{step['rows']:,} result rows: the workers' insert {step['insert_rows_per_second']:,.0f} rows/s "
          f"(batches of 1,024; {step['wal_bytes_per_row']:,.0f} bytes of WAL per row, its batch's planning "
          f"and claim included); filled server-side at {step['fill_rows_per_second']:,.0f} rows/s")  # fmt: skip
    print("sizes (GiB): " + ", ".join(f"{name} {gib:.2f}" for name, gib in step["sizes_gib"].items()))
    print_table(step["queries"], [("request", "GET /jobs/{id}/results", ""), ("requests", "n", "d"),
                                  ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f")])  # fmt: skip


if __name__ == "__main__":
    main()
