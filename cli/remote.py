"""The commands that ask a running API (`--api URL`, the token from API_TOKEN): jobs, status, cancel, models, results.

catsdogs jobs --status running                   # the newest jobs first, as a table
catsdogs status 7                                # one job's state
catsdogs cancel 7                                # skip its batches not yet run
catsdogs models                                  # the published model versions
catsdogs results 7 --format parquet --output r.parquet   # download its results (csv, jsonl or parquet)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from cli.progress import counts_text, duration_text, plain_line
from settings import Settings

EXPORT_FORMATS = ("csv", "jsonl", "parquet")


def add_commands(sub: Any) -> None:
    """Add this module's commands to the `catsdogs` parser's subparsers."""
    jobs = _command(sub, "jobs", "list jobs, newest first", cmd_jobs)
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "partially_failed", "cancelled"])
    jobs.add_argument("--limit", type=int, default=20, help="how many (default: 20)")
    jobs.add_argument("--before", type=int, help="only jobs with an id below this one (the next page)")
    _command(sub, "status", "show a job's state", cmd_status).add_argument("job_id", type=int)
    _command(sub, "cancel", "cancel a job: its batches not yet run are skipped", cmd_cancel).add_argument(
        "job_id", type=int
    )
    _command(sub, "models", "list the published model versions", cmd_models)
    results = _command(sub, "results", "download a job's results (to stdout, or to --output)", cmd_results)
    results.add_argument("job_id", type=int)
    results.add_argument("--format", choices=EXPORT_FORMATS, default="csv")
    results.add_argument("--output", type=Path, help="write to this file (default: stdout; parquet needs a file)")
    results.add_argument(
        "--database", action="store_true",
        help="read DATABASE_URL directly instead of asking the API (e.g. after `catsdogs run`, whose API has stopped)",
    )  # fmt: skip


def _command(sub: Any, name: str, help_text: str, command: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=f"{help_text} (through the API)")
    parser.add_argument("--api", default=None, help="API base URL (default: from API_HOST and API_PORT)")
    parser.set_defaults(command=command)
    return parser


def connect(args: argparse.Namespace, settings: Settings, command: str) -> httpx.Client:
    """A client for the API at --api (default: API_HOST and API_PORT), sending the token in API_TOKEN."""
    url = args.api or f"http://{settings.api_host}:{settings.api_port}"
    token = settings.api_token.get_secret_value() if settings.api_token else None
    if token is None and not settings.dev_mode:
        raise SystemExit(
            f"catsdogs {command}: API_TOKEN is not set; set it to the token the API was started with "
            f"(environment or .env), e.g. `API_TOKEN=... catsdogs {command} ...`"
        )
    return api_client(url, token)


def api_client(api_url: str, token: str | None) -> httpx.Client:
    """An HTTP client for the API at `api_url` that sends `token` as a bearer token (none: DEV_MODE)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api_url, headers=headers, timeout=30)


def answer(response: httpx.Response, what: str) -> Any:
    """The response's JSON body; SystemExit with the API's reason when it is an error."""
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        raise SystemExit(f"{what} ({response.status_code}): {detail}")
    return response.json()


# --- commands -----------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    params = {k: v for k, v in {"limit": args.limit, "status": args.status, "before": args.before}.items() if v}
    with connect(args, settings, "jobs") as client:
        page = answer(client.get("/jobs", params=params), "cannot list jobs")
    rows = [(j["id"], j["status"], _percent(j), counts_text(j), j["model_version"], j["created_at"][:19])
            for j in page["items"]]  # fmt: skip
    _print_table(("ID", "STATUS", "PROGRESS", "IMAGES", "MODEL", "CREATED"), rows)
    if page.get("next_before") is not None:
        print(f"more: catsdogs jobs --before {page['next_before']}")
    return 0


def _percent(job: dict[str, Any]) -> str:
    c = job["counts"]
    return f"{100 * (c['done'] + c['failed']) / c['total']:.0f}%" if c["total"] else "-"


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with connect(args, settings, "status") as client:
        job = answer(client.get(f"/jobs/{args.job_id}"), f"cannot read job {args.job_id}")
    print(plain_line(job))
    print(f"  folder: {job['folder']}\n  model:  {job['model_version']}\n  created: {job['created_at']}")
    if job["elapsed_seconds"] is not None:
        print(f"  elapsed: {duration_text(job['elapsed_seconds'])}")
    if job["error"]:
        print(f"  error: {job['error']}")
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with connect(args, settings, "cancel") as client:
        job = answer(client.post(f"/jobs/{args.job_id}/cancel"), f"cannot cancel job {args.job_id}")
    print(plain_line(job))
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    with connect(args, settings, "models") as client:
        models = answer(client.get("/models"), "cannot list models")
    rows = [(m["version"], m["architecture"], _accuracy(m["val_accuracy"]), _accuracy(m["test_accuracy"]),
             m["created_at"][:19]) for m in models]  # fmt: skip
    _print_table(("VERSION", "ARCHITECTURE", "VAL ACC", "TEST ACC", "CREATED"), rows)
    return 0


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _print_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [tuple(map(str, row)) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    if args.output is None and args.format == "parquet" and sys.stdout.isatty():
        raise SystemExit("catsdogs results: parquet is binary; give --output FILE, or redirect stdout")
    try:
        _write(args.output, _database_export(args, settings) if args.database else _api_export(args, settings))
    except BrokenPipeError:  # the reader stopped early, as `| head` does
        sys.stderr.close()
    return 0


def _api_export(args: argparse.Namespace, settings: Settings) -> Iterator[bytes]:
    with connect(args, settings, "results") as client:
        params = {"format": args.format}
        with client.stream("GET", f"/jobs/{args.job_id}/export", params=params) as response:
            if response.status_code >= 400:
                response.read()
                answer(response, f"cannot export job {args.job_id}")
            yield from response.iter_bytes()


def _database_export(args: argparse.Namespace, settings: Settings) -> Iterator[bytes]:
    from api.exports import PAGE_SIZE, encode
    from db.exports import result_pages
    from db.jobs import get_job
    from db.session import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session:
            if get_job(session=session, job_id=args.job_id) is None:
                raise SystemExit(f"catsdogs results: no job {args.job_id} in the database")
        yield from encode(args.format, result_pages(sessions, args.job_id, PAGE_SIZE))
    finally:
        engine.dispose()


def _write(output: Path | None, chunks: Iterable[bytes]) -> None:
    """Write to stdout, or to `output` through a temporary file beside it: a failed download leaves no file."""
    if output is None:
        _copy(chunks, sys.stdout.buffer)
        return
    partial = output.with_name(f".{output.name}.part")
    try:
        with partial.open("wb") as file:
            _copy(chunks, file)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _copy(chunks: Iterable[bytes], out: BinaryIO) -> None:
    for chunk in chunks:
        out.write(chunk)
    out.flush()
