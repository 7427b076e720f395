"""`catsdogs corrections export`: the corrected results as training data for `trainer fit --extra-data`.

catsdogs corrections export --output corrections.csv --api http://host:8000   # every job's (token in API_TOKEN)
catsdogs corrections export --job 7 --job 9 --database                        # read DATABASE_URL directly

The CSV is `path,label,job_id,result_id`: one row per result whose latest correction is cat or dog. Those
marked neither (not a usable photo) are left out; a summary line on stderr counts both.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cli.remote import answer, connect
from settings import Settings


def add_commands(sub: Any) -> None:
    """Add `corrections export` to the `catsdogs` parser's subparsers."""
    corrections = sub.add_parser("corrections", help="the corrections people made, as training data")
    commands = corrections.add_subparsers(required=True, metavar="{export}")
    export = commands.add_parser("export", help="write the corrected results as a CSV for `trainer fit --extra-data`")
    export.add_argument("--job", type=int, action="append", metavar="ID", help="only this job's (repeat it)")
    export.add_argument("--output", type=Path, default=Path("corrections.csv"), help="(default: corrections.csv)")
    export.add_argument("--api", default=None, help="API base URL (default: from API_HOST and API_PORT)")
    export.add_argument("--database", action="store_true", help="read DATABASE_URL directly instead of the API")
    export.set_defaults(command=cmd_export)


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    left_out: list[int] = []
    chunks = _database_export(args.job, settings, left_out) if args.database else _api_export(args, settings, left_out)
    _write(args.output, chunks)
    print(summary(args.output, left_out[0] if left_out else 0), file=sys.stderr)
    return 0


def _api_export(args: argparse.Namespace, settings: Settings, left_out: list[int]) -> Iterator[bytes]:
    from api.corrections import LEFT_OUT_HEADER

    with connect(args, settings, "corrections export") as client:
        with client.stream("GET", "/corrections/export", params={"job": args.job or []}) as response:
            if response.status_code >= 400:
                response.read()
                answer(response, "cannot export the corrections")
            left_out.append(int(response.headers.get(LEFT_OUT_HEADER, 0)))
            yield from response.iter_bytes()


def _database_export(job_ids: list[int] | None, settings: Settings, left_out: list[int]) -> Iterator[bytes]:
    from api.corrections import PAGE_SIZE, TRAINING_LABELS, encode_csv
    from db.corrections import corrected_result_pages, count_latest_labels
    from db.session import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session:
            left_out.append(count_latest_labels(session=session, job_ids=job_ids)["neither"])
        yield from encode_csv(corrected_result_pages(sessions, job_ids, TRAINING_LABELS, PAGE_SIZE))
    finally:
        engine.dispose()


def _write(output: Path, chunks: Iterable[bytes]) -> None:
    """Write through a temporary file beside `output`: a failed export leaves no file."""
    partial = output.with_name(f".{output.name}.part")
    try:
        with partial.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def summary(path: Path, left_out: int) -> str:
    """One line: how many corrected results the CSV at `path` holds, by label and job, and how many were left out."""
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as file:
        rows = list(csv.DictReader(file))
    labels = Counter(row["label"] for row in rows)
    jobs = sorted({int(row["job_id"]) for row in rows})
    shown = ", ".join(f"{label} {labels[label]}" for label in sorted(labels)) or "none"
    return (
        f"exported {len(rows)} corrected results ({shown}) from {len(jobs)} job(s) "
        f"{', '.join(map(str, jobs)) or '-'} to {path}; left out {left_out} marked neither (unusable)"
    )
