"""The README's main command and the monitoring command, as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli.main import default_workers
from cli.services import free_port, redis_answers
from settings import Settings
from tests.conftest import REDIS_URL, ROOT
from tests.factories import copy_photos, corrupt_files

pytestmark = pytest.mark.slow


def test_run_starts_a_private_redis_when_none_answers(tmp_path: Path, photos: list[Path], model_store: Path) -> None:
    folder = tmp_path / "photos"
    copy_photos(photos, folder)
    corrupt_files(folder, photos[0])
    (folder / "notes.txt").write_text("left out, and said so")
    unused = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/run.db",
        "MODEL_STORE": str(model_store),
        "BROKER_URL": unused,
        "QUEUE_NAME": "gpu",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", str(folder)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no Redis answers at {unused}; started a private one" in done.stdout
    assert "partially_failed" in done.stdout
    assert f"images: {len(photos) + 4}  classified: {len(photos)}  failed: 4  skipped: 1" in done.stdout
    assert "skipped (1): not an image extension" in done.stdout and f"    {folder / 'notes.txt'}\n" in done.stdout
    assert "empty file (0 bytes)" in done.stdout
    assert f"started {default_workers(Settings(device='cpu'))} worker process(es)" in done.stdout
    progress = rf"^job 1 partially_failed: {len(photos) + 4} / {len(photos) + 4} images \(4 failed, 1 skipped\), "
    assert re.search(progress + r"[\d,]+/s, ETA 0 s$", done.stdout, re.MULTILINE), done.stdout
    assert not redis_answers(unused)  # the private Redis is gone again

    export = subprocess.run(
        [sys.executable, "-m", "cli.main", "results", "1", "--database"],  # the run's API has stopped
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = export.stdout.strip().splitlines()
    assert lines[0] == "id,path,status,label,confidence,model_version,error,corrected_label"
    assert len(lines) == 1 + len(photos) + 4


def test_run_serve_keeps_the_page_up_until_interrupted(tmp_path: Path, photos: list[Path], model_store: Path) -> None:
    folder = tmp_path / "photos"
    copy_photos(photos[:4], folder)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/run.db", "MODEL_STORE": str(model_store),
           "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "QUEUE_NAME": "gpu"}  # fmt: skip
    run = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", str(folder), "--serve", "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert run.stdout is not None
        lines = iter(run.stdout.readline, "")
        served = next(line for line in lines if line.startswith("review the results at "))
        url, token = re.match(r"review the results at (\S+)/ \(token (\S+)\)", served).groups()  # type: ignore[union-attr]
        assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the sign-in page
        jobs = httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
        assert jobs["items"][0]["status"] == "succeeded"
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 0
    finally:
        run.kill()
        run.wait()


def test_flower_shows_the_workers(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "BROKER_URL": REDIS_URL}
    args = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", "--basic-auth=admin:secret"]
    flower = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, response = time.monotonic() + 60, None
        while time.monotonic() < deadline and response is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/workers", auth=("admin", "secret"), timeout=2)
            except httpx.HTTPError:
                time.sleep(0.5)
        assert response is not None and response.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/workers", timeout=2).status_code == 401
    finally:
        flower.terminate()
        flower.wait(20)


def test_run_starts_one_worker_process_per_core_on_a_cpu() -> None:
    assert default_workers(Settings(device="cpu")) == min(os.cpu_count() or 1, 4)
