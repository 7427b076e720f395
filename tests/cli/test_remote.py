"""`catsdogs jobs | status | cancel | models | results | submit` as a user runs them, against a real API process."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from cli import services
from db.migrate import upgrade
from db.models import JobStatus
from tests.conftest import API_TOKEN, AUTH, ROOT, service_env, sessions_for
from tests.factories import copy_photos, job_with_results


@dataclass(frozen=True)
class Stack:
    database_url: str
    api_url: str
    env: dict[str, str]  # the services'
    root: Path  # the folder jobs may read


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Stack]:
    """The API as a process of its own, on a SQLite database of this module's own (no worker, no sweeper)."""
    root = tmp_path_factory.mktemp("remote")
    database_url = f"sqlite:///{root / 'catsdogs.db'}"
    upgrade(database_url)
    queue = f"gpu-test-{uuid.uuid4().hex[:8]}"
    env = service_env(database_url, model_store, queue, API_TOKEN=API_TOKEN, ALLOWED_ROOTS=json.dumps([str(root)]))
    api, api_url = services.start_api(env, root / "api.log")
    try:
        yield Stack(database_url, api_url, env, root)
    finally:
        services.stop(api)


def catsdogs(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `catsdogs ARGS --api URL` with the token in API_TOKEN; stdout is a pipe, not a terminal. Its output
    is decoded as written (CSV's line ends are CR LF)."""
    env = {**os.environ, "API_TOKEN": API_TOKEN, **env}
    command = [sys.executable, "-m", "cli.main", *args, "--api", stack.api_url]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(command, done.returncode, done.stdout.decode(), done.stderr.decode())


def _job(stack: Stack, model_store: Path, rows: int, status: JobStatus = JobStatus.SUCCEEDED) -> int:
    with sessions_for(stack.database_url).begin() as session:
        return job_with_results(session=session, model_store=model_store, rows=rows, status=status)


def test_jobs_status_cancel_and_models(stack: Stack, model_store: Path) -> None:
    ended, queued = _job(stack, model_store, 30), _job(stack, model_store, 0, JobStatus.QUEUED)
    listed = catsdogs(stack, "jobs")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["ID", "STATUS", "PROGRESS", "IMAGES", "MODEL", "CREATED"]
    assert re.split(r"\s{2,}", lines[1])[:5] == [str(queued), "queued", "-", "0 / 0 images", "v1"]  # newest first
    assert re.split(r"\s{2,}", lines[2])[:5] == [str(ended), "succeeded", "100%", "30 / 30 images (3 failed)", "v1"]
    only_queued = catsdogs(stack, "jobs", "--status", "queued").stdout.splitlines()[1:]
    assert str(ended) not in " ".join(line.split()[0] for line in only_queued)

    status = catsdogs(stack, "status", str(ended))
    assert status.stdout.splitlines()[0] == f"job {ended} succeeded: 30 / 30 images (3 failed), -/s, ETA 0 s"

    cancelled = catsdogs(stack, "cancel", str(queued))
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"job {queued} cancelled: 0 / 0 images")
    again = catsdogs(stack, "cancel", str(queued))
    assert again.returncode == 1
    assert again.stderr.strip() == f"cannot cancel job {queued} (409): job {queued} has already ended (cancelled)"

    models = catsdogs(stack, "models").stdout.splitlines()
    assert models[0].split() == ["VERSION", "ARCHITECTURE", "VAL", "ACC", "TEST", "ACC", "CREATED"]
    assert models[1].split()[0] == "v1" and "50.00%" in models[1]

    assert catsdogs(stack, "status", "999999").stderr.strip() == "cannot read job 999999 (404): no job 999999"
    refused = catsdogs(stack, "jobs", API_TOKEN="")
    assert refused.returncode == 1 and "catsdogs jobs: API_TOKEN is not set" in refused.stderr


def test_results_download_in_every_format(stack: Stack, model_store: Path, tmp_path: Path) -> None:
    job_id = _job(stack, model_store, 1200)
    api = httpx.Client(base_url=stack.api_url, headers=AUTH)
    expected = api.get(f"/jobs/{job_id}/export", params={"format": "jsonl"}).text
    rows = [json.loads(line) for line in expected.splitlines()]
    assert len(rows) == 1200 and rows[0]["corrected_label"] == "neither"

    as_csv = catsdogs(stack, "results", str(job_id))  # csv to stdout, the default
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout == api.get(f"/jobs/{job_id}/export").text
    assert len(list(csv.DictReader(io.StringIO(as_csv.stdout, newline="")))) == 1200
    as_jsonl = catsdogs(stack, "results", str(job_id), "--format", "jsonl", "--output", str(tmp_path / "r.jsonl"))
    assert as_jsonl.returncode == 0 and (tmp_path / "r.jsonl").read_text() == expected
    catsdogs(stack, "results", str(job_id), "--format", "parquet", "--output", str(tmp_path / "r.parquet"))
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == rows

    # Without the API (after `catsdogs run`), from the database: the same file.
    direct = catsdogs(stack, "results", str(job_id), "--database", DATABASE_URL=stack.database_url)
    assert direct.returncode == 0 and direct.stdout == as_csv.stdout

    missing = catsdogs(stack, "results", "999999", "--output", str(tmp_path / "none.csv"))
    assert missing.returncode == 1 and "cannot export job 999999 (404): no job 999999" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.parquet"]  # nothing half-written left


@pytest.mark.slow
def test_submit_shows_progress_as_lines_or_as_a_bar(
    stack: Stack, photos: list[Path], start_worker: Any, tmp_path: Path
) -> None:
    folder = stack.root / "photos"
    copy_photos(photos, folder)
    start_worker(stack.env)
    sweeper = services.start_sweeper(stack.env, tmp_path / "sweeper.log")
    try:
        piped = catsdogs(stack, "submit", str(folder))
        assert piped.returncode == 0, piped.stdout + piped.stderr
        progress = [line for line in piped.stdout.splitlines() if re.match(r"job \d+ \w+: ", line)]
        assert re.fullmatch(r"job \d+ succeeded: 12 / 12 images, [\d,]+/s, ETA 0 s", progress[-1]), progress
        assert "\x1b[" not in piped.stdout and "\r" not in piped.stdout
        assert f"results: catsdogs results {progress[-1].split()[1]} --api {stack.api_url} --format csv" in piped.stdout

        on_terminal = _run_on_a_terminal([sys.executable, "-m", "cli.main", "submit", str(folder),
                                          "--api", stack.api_url], {**os.environ, "API_TOKEN": API_TOKEN})  # fmt: skip
        assert "━" in on_terminal and "12 / 12 images" in on_terminal and "ETA 0 s" in on_terminal
    finally:
        services.stop(sweeper)


def _run_on_a_terminal(command: list[str], env: dict[str, str]) -> str:
    """Run with stdout and stderr on a pseudo-terminal; return what it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: the process has exited
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert proc.wait(120) == 0
    finally:
        reader.join(10)
        os.close(master)
    return b"".join(chunks).decode(errors="replace")
