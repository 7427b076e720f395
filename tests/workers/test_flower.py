"""Flower as deployed: with basic auth on, its Prometheus metrics need the credentials too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.services import free_port
from tests.conftest import REDIS_URL, ROOT

pytestmark = pytest.mark.slow
FLOWER_CONF = ROOT / "deploy" / "flower" / "flowerconfig.py"
CREDENTIALS = ("flower-user", "flower-pass-for-tests")


def _flower(tmp_path: Path, conf: Path | None) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1",
            f"--basic-auth={':'.join(CREDENTIALS)}"] + ([f"--conf={conf}"] if conf else [])  # fmt: skip
    env = {**os.environ, "BROKER_URL": REDIS_URL}
    with open(tmp_path / f"flower-{port}.log", "wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"{url}/healthcheck", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[str]:
    yield from _flower(tmp_path, FLOWER_CONF)


@pytest.fixture
def plain_flower(tmp_path: Path) -> Iterator[str]:
    yield from _flower(tmp_path, None)


def test_plain_flower_serves_metrics_to_anyone_despite_basic_auth(plain_flower: str) -> None:
    """Flower's own behaviour, which deploy/flower/flowerconfig.py exists to change."""
    assert httpx.get(f"{plain_flower}/workers").status_code == 401
    assert httpx.get(f"{plain_flower}/metrics").status_code == 200


def test_metrics_need_the_same_credentials_as_the_pages(flower: str) -> None:
    assert httpx.get(f"{flower}/metrics").status_code == 401
    assert httpx.get(f"{flower}/metrics", auth=("flower-user", "wrong")).status_code == 401
    answer = httpx.get(f"{flower}/metrics", auth=CREDENTIALS)
    assert answer.status_code == 200 and "flower_" in answer.text
    assert httpx.get(f"{flower}/healthcheck").status_code == 200  # liveness stays open
