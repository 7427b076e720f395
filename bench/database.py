"""The database side of throughput: bulk result writes, result queries on a huge job, submitting a huge folder.

    python -m bench.database [--rows 200000] [--query-rows 1000000] [--folder-files 100000]
                             [--json var/bench/database.json]

1. writes   rows/s of db.results.record_batch_results (the workers' one transaction per batch:
            results upsert + counters), on PostgreSQL and SQLite, batches of 64 and 1,000
2. queries  GET /jobs/{id}/results through the real API on PostgreSQL, on a job of --query-rows
            result rows: p50/p95 ms per kind of request (first page, deep page, filters, page walk)
3. submit   POST /jobs of a folder of --folder-files photos (hard links): time to answer, and to
            the end of the control plane's listing, on SQLite and PostgreSQL

Uses BENCH_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/catsdogs_bench; the
database is dropped and created) and a private Redis.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from bench.common import (
    PG_URL,
    SHARED_DATA,
    WORK_DIR,
    environment,
    fresh_postgres,
    fresh_sqlite,
    median,
    migrate_fresh,
    percentile,
    print_table,
    write_json,
)
from classifier.outcomes import Outcome
from db.batches import start_batch
from db.jobs import add_batch, create_job
from db.models import Job
from db.results import BatchWork, record_batch_results
from db.session import make_engine, make_session_factory

MODEL = "v1"


# --- 1. bulk result writes ------------------------------------------------------


def write_rate(url: str, rows: int, batch_size: int) -> dict[str, Any]:
    """Record `rows` results in batches of `batch_size` with the workers' function; rows/s of the writes alone,
    and on PostgreSQL the WAL bytes per row of the whole: the batches planned, claimed and written."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    wal_start = _wal_position(engine)
    with sessions.begin() as session:
        job_id = create_job(session=session, folder="/bench", model_version=MODEL, batch_size=batch_size).id
    claims = []
    for seq in range(rows // batch_size):
        paths = [f"/bench/{seq}/{i}.jpg" for i in range(batch_size)]
        with sessions.begin() as session:
            batch_id = add_batch(session=session, job_id=job_id, seq=seq, paths=paths)
        with sessions.begin() as session:
            claim = start_batch(session=session, batch_id=batch_id)
        assert isinstance(claim, BatchWork)
        claims.append(claim)
    batches = [[_outcome(path) for path in claim.paths] for claim in claims]
    start = time.perf_counter()
    for claim, outcomes in zip(claims, batches, strict=True):
        with sessions.begin() as session:
            record_batch_results(session=session, work=claim, outcomes=outcomes)
    seconds = time.perf_counter() - start
    wal_end = _wal_position(engine)
    with sessions() as session:
        done = session.scalars(select(Job.done).where(Job.id == job_id)).one()
    engine.dispose()
    report = {"rows": done, "batch_size": batch_size, "rows_per_second": done / seconds}
    if wal_start is not None and wal_end is not None:
        report["wal_bytes_per_row"] = (wal_end - wal_start) / done
    return report


def _outcome(path: str) -> Outcome:
    return Outcome(path=path, label="cat", confidence=0.9, content_hash=hashlib.sha256(path.encode()).digest())


def _wal_position(engine: Engine) -> int | None:
    """PostgreSQL's current WAL position in bytes (None on SQLite)."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_current_wal_lsn() - '0/0'")))


# --- 2. result queries on a huge job --------------------------------------------


def fill_results(url: str, rows: int, analyze: bool = True) -> int:
    """A finished job of `rows` results (1% failed, confidences spread over 0.5-1, each with a distinct
    content hash as the workers write), inserted server-side;
    with `analyze`, the table vacuumed and analyzed after."""
    engine = make_engine(url)
    sessions: sessionmaker[Session] = make_session_factory(engine)
    with sessions.begin() as session:
        job_id = create_job(session=session, folder="/bench", model_version=MODEL, batch_size=1000).id
        batch_id = add_batch(session=session, job_id=job_id, seq=0, paths=["/bench/0.jpg"])  # results come below
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO result (job_id, batch_id, path, status, label, confidence, model_version, error,
                                    content_hash)
                SELECT :job, :batch, '/photos/' || (g / 1000) || '/img' || g || '.jpg',
                       CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'ok' END,
                       CASE WHEN g % 100 = 0 THEN NULL WHEN g % 3 = 0 THEN 'cat' ELSE 'dog' END,
                       CASE WHEN g % 100 = 0 THEN NULL ELSE 0.5 + 0.5 * random() END,
                       :model, CASE WHEN g % 100 = 0 THEN 'cannot decode: truncated' END,
                       sha256(int8send(CAST(:job AS bigint) * 4294967296 + g))
                FROM generate_series(1, :rows) AS g
                """
            ),
            {"job": job_id, "batch": batch_id, "model": MODEL, "rows": rows},
        )
        conn.execute(
            text("UPDATE job SET total = :rows, done = :rows - :rows / 100, failed = :rows / 100, planned = true, "
                 "status = 'partially_failed' WHERE id = :job"),
            {"rows": rows, "job": job_id},
        )  # fmt: skip
    if analyze:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE result"))
    engine.dispose()
    return job_id


def query_latencies(
    api: str, token: str, job_id: int, rows: int, requests: int, first_id: int = 1
) -> list[dict[str, Any]]:
    """p50/p95 of GET /jobs/{id}/results per kind of request, on a warm keep-alive connection; the job's
    result ids run from `first_id` for `rows`."""
    results = f"{api}/jobs/{job_id}/results"

    def deep() -> int:
        return random.randint(first_id, first_id + rows)

    kinds: dict[str, Callable[[], dict[str, Any]]] = {
        "first page (100)": lambda: {},
        "page of 1,000": lambda: {"limit": 1000},
        "deep page (random after)": lambda: {"after": deep()},
        "label=cat": lambda: {"label": "cat", "after": deep()},
        "min_confidence=0.95": lambda: {"min_confidence": 0.95, "after": deep()},
        "status=failed": lambda: {"status": "failed", "after": deep()},
    }
    out = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        for name, params in kinds.items():
            client.get(results, params=params()).raise_for_status()  # warm-up
            times = []
            for _ in range(requests):
                start = time.perf_counter()
                answer = client.get(results, params=params())
                times.append((time.perf_counter() - start) * 1000)
                answer.raise_for_status()
            out.append(_latency_row(name, times))
        out.append(_latency_row("walk 100 pages (per page)", _walk(client, results, 100)))
    return out


def _walk(client: httpx.Client, url: str, pages: int) -> list[float]:
    times, after = [], 0
    for _ in range(pages):
        start = time.perf_counter()
        page = client.get(url, params={"after": after, "limit": 100})
        times.append((time.perf_counter() - start) * 1000)
        after = page.json()["next_after"]
    return times


def _latency_row(name: str, times: list[float]) -> dict[str, Any]:
    return {"request": name, "requests": len(times), "p50_ms": median(times), "p95_ms": percentile(times, 95)}


# --- 3. submitting a huge folder --------------------------------------------------


def big_folder(files: int) -> Path:
    """One folder of `files` hard links to real photos (a worst case for listing: no subfolders)."""
    folder = WORK_DIR / f"folder-{files}"
    photos = sorted((SHARED_DATA / "catsdogs" / "test").glob("*/*.jpg"))  # a file takes at most ~65,000 links
    folder.mkdir(parents=True, exist_ok=True)
    present = {entry.name for entry in os.scandir(folder)}
    for i in range(files):
        name = f"img{i:06d}.jpg"
        if name not in present:
            os.link(photos[i % len(photos)], folder / name)
    return folder


def submit_times(api: str, token: str, url: str, folder: Path, files: int) -> dict[str, Any]:
    engine = create_engine(url)
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:  # made before timing
        start = time.perf_counter()
        answer = client.post(f"{api}/jobs", json={"folder": str(folder)})
        answered = time.perf_counter() - start
    answer.raise_for_status()
    job_id = answer.json()["id"]
    with engine.connect() as conn:
        while not conn.execute(select(Job.planned).where(Job.id == job_id)).scalar_one():
            conn.commit()
            time.sleep(0.05)
        total = conn.execute(select(Job.total).where(Job.id == job_id)).scalar_one()
    listed = time.perf_counter() - start
    engine.dispose()
    return {"files": files, "answer_seconds": answered, "listing_seconds": listed, "images_recorded": total}


# --- driver -------------------------------------------------------------------------


@contextmanager
def api_only(url: str, work: Path) -> Iterator[tuple[str, str]]:
    """The API and the control plane (no worker) on a database at `url` with the reference model; yields
    (api url, token)."""
    from cli.services import private_redis, start_api, start_sweeper, stop

    work.mkdir(parents=True, exist_ok=True)
    migrate_fresh(url, work / "models")
    token = secrets.token_urlsafe(24)
    with ExitStack() as stack:
        broker = stack.enter_context(private_redis())
        env = {**os.environ, "DATABASE_URL": url, "BROKER_URL": broker, "MODEL_STORE": str(work / "models"),
               "API_TOKEN": token, "ALLOWED_ROOTS": f"{SHARED_DATA},{WORK_DIR}", "DEV_MODE": "false"}  # fmt: skip
        stack.callback(stop, start_sweeper(env, work / "sweeper.log"))
        api, api_url = start_api(env, work / "api.log")
        stack.callback(stop, api)
        yield api_url, token


def database_urls(work: Path) -> dict[str, Callable[[], str]]:
    return {"postgresql": lambda: fresh_postgres(PG_URL), "sqlite": lambda: fresh_sqlite(work / "bench.db")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="result rows written per write measurement")
    parser.add_argument("--query-rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="requests per kind of query")
    parser.add_argument("--folder-files", type=int, default=100_000)
    parser.add_argument("--parts", nargs="+", choices=("writes", "queries", "submit"),
                        default=["writes", "queries", "submit"])  # fmt: skip
    parser.add_argument("--json", type=Path, default=WORK_DIR / "database.json")
    args = parser.parse_args(argv)
    work = WORK_DIR / "database"
    report: dict[str, Any] = {"environment": environment(), "args": vars(args) | {"json": str(args.json)}}
    urls = database_urls(work)
    if "writes" in args.parts:
        report["writes"] = []
        for name, fresh in urls.items():
            for batch_size in (64, 256, 1000):  # 256: the default BATCH_SIZE
                url = fresh()
                migrate_fresh(url, work / "models")
                report["writes"].append({"database": name} | write_rate(url, args.rows, batch_size))
        print("\nresult writes (db.results.record_batch_results, one transaction per batch)")
        print_table(report["writes"], [("database", "database", ""), ("batch_size", "batch", "d"),
                                       ("rows", "rows", "d"),
                                       ("rows_per_second", "rows/s", ",.0f"),
                                       ("wal_bytes_per_row", "WAL B/row", ".0f")])  # fmt: skip
    if "queries" in args.parts:
        url = urls["postgresql"]()
        with api_only(url, work) as (api, token):
            job_id = fill_results(url, args.query_rows)
            report["queries"] = query_latencies(api, token, job_id, args.query_rows, args.requests)
        print(f"\nGET /jobs/{{id}}/results on a job of {args.query_rows:,} rows (PostgreSQL, HTTP, keep-alive)")
        print_table(report["queries"], [("request", "request", ""), ("requests", "n", "d"),
                                        ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f")])  # fmt: skip
    if "submit" in args.parts:
        folder, report["submit"] = big_folder(args.folder_files), []
        for name, fresh in urls.items():
            url = fresh()
            with api_only(url, work) as (api, token):
                report["submit"].append({"database": name} | submit_times(api, token, url, folder, args.folder_files))
        print(f"\nPOST /jobs of one folder of {args.folder_files:,} files (listing and enqueueing continue after)")
        print_table(report["submit"], [("database", "database", ""), ("files", "files", ",d"),
                                       ("answer_seconds", "answered s", ".2f"), ("listing_seconds", "listed s", ".1f"),
                                       ("images_recorded", "recorded", ",d")])  # fmt: skip
    write_json(args.json, report)


if __name__ == "__main__":
    main()
