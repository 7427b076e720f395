"""Containers that really run: build deploy/Dockerfile and bring up docker-compose.yml on the CPU, submit a
folder of photos to the API in its container, and get every result back through the API.

No registry answers on the development machines, so the test builds what it would pull: a Debian
bookworm root made with debootstrap (Python 3.11, and PostgreSQL 15 and Redis standing in for the
postgres and redis images) imported as a base image, and a wheelhouse of every dependency from PyPI
(`pip download`, installed with `--no-index`). The compose file runs as it is, but for what the
machine lacks: its top-level `name` (Debian ships Compose v1, 1.29, which refuses it: `-p` names the
project instead), the GPU reservation, the images it cannot pull, and the trainer (a one-off).

Marked `docker`: `make test-docker` runs it (it takes minutes and a 10 GB image, so `make test` leaves
it out); skipped where Docker, docker-compose or debootstrap is missing or no daemon can start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cli.services import free_port
from tests.conftest import CATSDOGS, ROOT

pytestmark = [pytest.mark.docker, pytest.mark.slow]
BASE_IMAGE = "catsdogs-test-base:bookworm"
APP_IMAGE = "catsdogs:test"
PROJECT = "catsdogs-test"
WHEELS = ROOT / "var" / "docker" / "wheels"
PHOTOS = 60
RUNNING = ("queued", "running")


def _run(args: list[str], timeout: float = 1800, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def docker() -> None:
    """A Docker daemon that answers: the running one, or one started here (dockerd, as root)."""
    for tool in ("docker", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install docker.io docker-compose debootstrap)")
    if not _daemon_answers():
        if shutil.which("dockerd") is None or os.geteuid() != 0:
            pytest.skip("no Docker daemon answers and none can be started here")
        subprocess.Popen(["dockerd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _daemon_answers():
            if time.monotonic() > deadline:
                pytest.skip("dockerd did not start")
            time.sleep(1)


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def base_image(docker: None) -> str:
    """Debian bookworm with Python 3.11 (`python` too, as python:3.11-slim has), PostgreSQL 15 and Redis."""
    if _image_exists(BASE_IMAGE):
        return BASE_IMAGE
    root = Path(tempfile.mkdtemp(prefix="catsdogs-rootfs-"))
    try:
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
              str(root), "http://deb.debian.org/debian"])  # fmt: skip
        _run(["chroot", str(root), "sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y "
              "--no-install-recommends postgresql-15 redis-server && apt-get clean"])  # fmt: skip
        (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        _run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout)
        tar.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE


def _wheelhouse() -> Path:
    """Wheels of every dependency, pinned by deploy/constraints.txt, kept under var/ between runs."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # Debian's Python is 3.11.2: redis needs async-timeout below 3.11.3.
    wanted = [*dependencies, "setuptools>=68", "wheel", "async-timeout>=4.0.3"]
    _run([sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELS), "-c",
          str(ROOT / "deploy" / "constraints.txt"), *wanted])  # fmt: skip
    return WHEELS


@pytest.fixture(scope="module")
def app_image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """deploy/Dockerfile built offline: the working tree's files, plus the wheelhouse in deploy/wheels."""
    context = tmp_path_factory.mktemp("context")
    files = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    for wheel in _wheelhouse().glob("*.whl"):
        os.link(wheel, context / "deploy" / "wheels" / wheel.name)
    _run(["docker", "build", "-f", "deploy/Dockerfile", "--build-arg", f"PYTHON_IMAGE={base_image}",
          "--build-arg", "PIP_INSTALL_ARGS=--no-index --find-links /wheels", "-t", APP_IMAGE, "."],
         cwd=context, env={**os.environ, "DOCKER_BUILDKIT": "0"})  # fmt: skip
    return APP_IMAGE


def compose_for_this_machine(base_image: str) -> dict[str, Any]:
    """docker-compose.yml as it is, but for what this machine lacks (the module's docstring says what)."""
    spec: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    spec.pop("name")
    services = spec["services"]
    services.pop("trainer")
    for service in services.values():
        service.pop("build", None)
        service.pop("deploy", None)  # the GPU reservation
    services["redis"].update(image=base_image, command=["redis-server", "--requirepass",
                             "${REDIS_PASSWORD}", "--appendonly", "yes", "--dir", "/data"])  # fmt: skip
    entry = ROOT / "tests" / "deploy" / "docker" / "postgres.sh"
    services["postgres"].update(
        image=base_image, command=["/usr/local/bin/postgres.sh"],
        volumes=[*services["postgres"]["volumes"], f"{entry}:/usr/local/bin/postgres.sh:ro"],
        healthcheck={**services["postgres"]["healthcheck"],
                     "test": ["CMD", "/usr/lib/postgresql/15/bin/pg_isready", "-h", "127.0.0.1", "-U", "catsdogs"]},
    )  # fmt: skip
    return spec


@pytest.fixture
def stack(app_image: str, base_image: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    photos = tmp_path / "photos"
    photos.mkdir(mode=0o755)
    for photo in (
        sorted((CATSDOGS / "test" / "cat").glob("*.jpg"))[: PHOTOS // 2]
        + sorted((CATSDOGS / "test" / "dog").glob("*.jpg"))[: PHOTOS // 2]
    ):
        shutil.copyfile(photo, photos / f"{photo.parent.name}-{photo.name}")
        (photos / f"{photo.parent.name}-{photo.name}").chmod(0o644)
    photos.chmod(0o755)
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(yaml.safe_dump(compose_for_this_machine(base_image), sort_keys=False))
    port, token = free_port(), "docker-test-token"
    env = {**os.environ, "CATSDOGS_IMAGE": app_image, "API_TOKEN": token, "API_PUBLISH": str(port),
           "FLOWER_PUBLISH": str(free_port()), "PHOTOS_DIR": str(photos), "REDIS_PASSWORD": "redis-pw",
           "POSTGRES_PASSWORD": "postgres-pw", "FLOWER_PASSWORD": "flower-pw"}  # fmt: skip
    command = ["docker-compose", "-f", str(compose), "-p", PROJECT]
    try:
        _run([*command, "up", "-d"], env=env, timeout=900)
        yield f"http://127.0.0.1:{port}", photos
    except BaseException:
        print(subprocess.run([*command, "logs", "--tail", "80"], env=env, capture_output=True, text=True).stdout)
        raise
    finally:
        subprocess.run([*command, "down", "-v", "--remove-orphans"], env=env, capture_output=True, timeout=300)


def test_the_compose_stack_classifies_a_folder(stack: tuple[str, Path]) -> None:
    url, photos = stack
    auth = {"Authorization": "Bearer docker-test-token"}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    answer = httpx.post(f"{url}/jobs", json={"folder": "/photos"}, headers=auth, timeout=30)
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    deadline = time.monotonic() + 600
    while (job := httpx.get(f"{url}/jobs/{job_id}", headers=auth, timeout=30).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["status"] == "succeeded" and job["counts"]["done"] == PHOTOS, job
    results = httpx.get(f"{url}/jobs/{job_id}/results", params={"limit": 1000}, headers=auth, timeout=30).json()
    names = {Path(r["path"]).name for r in results["items"]}
    assert names == {p.name for p in photos.iterdir()}
    assert all(r["label"] in ("cat", "dog") and 0.5 <= r["confidence"] <= 1 for r in results["items"])
    right = sum(Path(r["path"]).name.startswith(r["label"]) for r in results["items"])
    assert right >= 0.8 * PHOTOS  # the reference model, served in the container on the CPU
