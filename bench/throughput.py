"""Images/s of the system end to end, against the ceiling, a plain PyTorch script and a one-at-a-time loop.

    python -m bench.throughput [--data fullres test] [--min-images 5000] [--runs 3]
                               [--scenarios ceiling user naive system] [--backends eager compiled]
                               [--precisions bf16 fp32]
                               [--json var/bench/throughput.json]

Scenarios (docs/performance.md explains each):
  ceiling  decode + preprocess + forward, no queue, no database: in one process, and in one
           process per core, with each serving backend and precision (INFERENCE_BACKEND,
           INFERENCE_PRECISION)
  user     ImageFolder + DataLoader (2 loader workers) + the same model, batch 64, the earlier
           project's PIL transforms: what a user would write instead
  naive    the earlier project's predict.py: one image at a time
  system   POST /jobs to the last result row committed, through Redis and the database, for
           {eager, compiled} x {bf16, fp32} x {SQLite, PostgreSQL} x {1, 2 worker processes};
           each run right after a run of the best one-process-per-core ceiling of the same backend and
           precision ("x paired": the median of the two rates' ratio, what the queue, the database and
           the API cost, measured at one time on a machine whose speed drifts)

bf16 rows are run by default only where the CPU computes bf16 natively (AMX, AVX-512 BF16).

Prints one table per data set and writes every run to --json. Needs the PostgreSQL server
of BENCH_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/catsdogs_bench;
the database is dropped and created) for the PostgreSQL rows; Redis is a private one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image
from sqlalchemy import create_engine, func, select
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from bench.common import (
    DATA_SETS,
    PG_URL,
    SHARED_DATA,
    WORK_DIR,
    MemorySampler,
    child_pids,
    environment,
    fresh_postgres,
    fresh_sqlite,
    median,
    migrate_fresh,
    percentile,
    print_table,
    repeated_folder,
    rss_mb,
    write_json,
)
from classifier.files import iter_image_files
from classifier.model import BACKENDS, build_model, native_bf16, resolve_precision
from classifier.serving import (
    CPU_FORWARD_BATCH,
    chunks,
    decode_one,
    default_threads,
    forward_batch,
    keep_freed_memory,
    pick_device,
    predict,
)
from classifier.store import LoadedModel, install_reference, load
from db.models import Batch, Job, JobStatus
from settings import get_settings

SCENARIOS = ("ceiling", "user", "naive", "system")
FINAL = {JobStatus.SUCCEEDED, JobStatus.PARTIALLY_FAILED, JobStatus.FAILED, JobStatus.CANCELLED}


@dataclass
class Run:
    images: int
    seconds: float  # start to the last result
    first_seconds: float  # start to the first result
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.images / self.seconds


@dataclass
class Row:
    data: str
    scenario: str
    setting: str
    runs: list[Run] = field(default_factory=list)
    peak_rss_mb: float | None = None
    serving: tuple[str, str, int] | None = None  # backend, precision, batch size of a one-process-per-core ceiling
    paired_ceiling: list[Run] = field(default_factory=list)  # a system row's: the ceiling run just before each run

    def summary(self) -> dict[str, Any]:
        firsts, lasts = [r.first_seconds for r in self.runs], [r.seconds for r in self.runs]
        return {
            "data": self.data,
            "scenario": self.scenario,
            "setting": self.setting,
            "images": self.runs[0].images,
            "runs": len(self.runs),
            "images_per_second": median([r.rate for r in self.runs]),
            "all_rates": [round(r.rate, 1) for r in self.runs],
            "failed": sum(r.failed for r in self.runs),
            "peak_rss_mb": self.peak_rss_mb,
            "first_p50": percentile(firsts, 50),
            "first_p95": percentile(firsts, 95),
            "last_p50": percentile(lasts, 50),
            "last_p95": percentile(lasts, 95),
            "x_paired_ceiling": median([r.rate / c.rate for r, c in zip(self.runs, self.paired_ceiling, strict=True)])
            if self.paired_ceiling
            else None,
            "paired_ceiling_rates": [round(c.rate, 1) for c in self.paired_ceiling],
        }


# --- ceiling ------------------------------------------------------------------


def ceiling(paths: Sequence[str], model: LoadedModel, batch_size: int, overlap: bool, threads: int = 0) -> Run:
    """Decode with a thread pool and run the model on each batch; with `overlap`, decode batch k+1 meanwhile."""
    device, size = next(model.net.parameters()).device, model.meta["input"]["height"]
    batches = list(chunks(paths, batch_size))
    with ThreadPoolExecutor(threads or default_threads()) as pool:
        start, first = time.perf_counter(), 0.0

        def submit(batch: list[str]) -> list[Future[np.ndarray | str]]:
            return [pool.submit(decode_one, p, size) for p in batch]

        pending = submit(batches[0]) if overlap else []
        for k, batch in enumerate(batches):
            decoded = [f.result() for f in (pending if overlap else submit(batch))]
            if overlap and k + 1 < len(batches):
                pending = submit(batches[k + 1])
            predict(model, [d for d in decoded if not isinstance(d, str)], device)
            first = first or time.perf_counter() - start
        return Run(len(paths), time.perf_counter() - start, first)


class CeilingProcesses:
    """`ceiling` in `processes` processes of one thread each, each holding the model loaded (and compiled)
    once, each run on its share of the paths, all starting together."""

    def __init__(self, store: Path, batch_size: int, processes: int, backend: str, precision: str) -> None:
        self.processes, self.batch_size, self.warmed_up = processes, batch_size, False
        context = multiprocessing.get_context("spawn")  # a fork after torch ran here could hang in OpenMP
        ready = context.Barrier(processes)  # also keeps each share in its own process
        settings = (str(store), batch_size, backend, precision)
        self.pool = context.Pool(processes, initializer=_load_share, initargs=(ready, *settings))

    def run(self, paths: Sequence[str]) -> Run:
        shares = [list(paths[i :: self.processes]) for i in range(self.processes)]
        if not self.warmed_up:  # the first batch of each process: compiling, first allocations
            self.pool.map(_run_share, [share[: self.batch_size] for share in shares])
            self.warmed_up = True
        done = self.pool.map(_run_share, shares)
        start = min(started for started, _, _ in done)
        return Run(len(paths), max(ended for _, ended, _ in done) - start, min(first for _, _, first in done) - start)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


_share: tuple[Any, LoadedModel, int] | None = None  # in each process: the start barrier, the model, its batch size


def _load_share(barrier: Any, store: str, batch_size: int, backend: str, precision: str) -> None:
    global _share
    torch.set_num_threads(1)
    keep_freed_memory()  # as a worker process does
    _share = barrier, load(Path(store)).serving(backend, batch_size, precision), batch_size


def _run_share(paths: list[str]) -> tuple[float, float, float]:
    """Run in a pool process: (wall-clock time of its start, of its last result, of its first)."""
    assert _share is not None
    barrier, model, batch_size = _share
    barrier.wait()
    started = time.time()
    run = ceiling(paths, model, batch_size, overlap=False, threads=1)
    return started, started + run.seconds, started + run.first_seconds


# --- what a user would write --------------------------------------------------


def earlier_transforms(mean: float, std: float) -> transforms.Compose:
    """The earlier project's evaluation transforms: PIL RGB image to a normalised grayscale 64x64 tensor."""
    return transforms.Compose(
        [
            transforms.Grayscale(1),
            transforms.Resize((64, 64)),
            transforms.ToTensor(),
            transforms.Normalize([mean], [std]),
        ]
    )


def plain_model(model: LoadedModel) -> torch.nn.Module:
    """The same weights in a freshly built network, as a user script would load them."""
    net = build_model(len(model.meta["classes"]), stem=model.meta.get("stem", "imagenet"))
    net.load_state_dict({k: v.contiguous() for k, v in model.net.state_dict().items()})
    return net.eval().to(next(model.net.parameters()).device)


def user_script(folder: Path, model: LoadedModel, batch_size: int, loader_workers: int = 2) -> Run:
    norm = model.meta["normalization"]
    dataset = datasets.ImageFolder(str(folder), earlier_transforms(norm["mean"], norm["std"]))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=loader_workers)
    net, start, first = plain_model(model), time.perf_counter(), 0.0
    with torch.no_grad():
        for images, _ in loader:
            torch.softmax(net(images.to(_device(net))), dim=1).cpu()
            first = first or time.perf_counter() - start
    return Run(len(dataset), time.perf_counter() - start, first)


def _device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


# --- naive --------------------------------------------------------------------


def naive(paths: Sequence[str], model: LoadedModel) -> Run:
    norm = model.meta["normalization"]
    transform, net = earlier_transforms(norm["mean"], norm["std"]), plain_model(model)
    start, first = time.perf_counter(), 0.0
    with torch.no_grad():
        for path in paths:
            image = transform(Image.open(path).convert("RGB"))
            torch.softmax(net(image.unsqueeze(0).to(_device(net))), dim=1).cpu()
            first = first or time.perf_counter() - start
    return Run(len(paths), time.perf_counter() - start, first)


# --- the system ---------------------------------------------------------------


@dataclass
class System:
    client: httpx.Client  # the API's, made once: making one costs about 20 ms, which is not the system's
    database_url: str
    worker: Any  # subprocess.Popen of the Celery worker's main process

    def pool_pids(self) -> list[int]:
        return child_pids(self.worker.pid)

    def run_job(self, folder: Path) -> Run:
        """Submit `folder` and wait for the job to end. The times come from the database: the last result
        is the job's finished_at, written in the transaction that commits the last results, and the first
        the earliest finished_at of its batches; so polling can be slow and cost the two cores little."""
        engine = create_engine(self.database_url)
        try:
            start = time.time()
            # The folders repeat photos, and a re-run would reuse the last run's results: classify every file.
            answer = self.client.post("/jobs", json={"folder": str(folder), "reuse": False})
            answer.raise_for_status()
            job_id = answer.json()["id"]
            with engine.connect() as conn:
                while True:
                    job = conn.execute(
                        select(Job.done, Job.failed, Job.status, Job.finished_at).where(Job.id == job_id)
                    ).one()
                    conn.commit()
                    if job.status in FINAL:
                        break
                    time.sleep(0.25)
                first = conn.scalar(select(func.min(Batch.finished_at)).where(Batch.job_id == job_id))
            last = job.finished_at.timestamp() - start if job.finished_at else time.time() - start
            return Run(job.done + job.failed, last, first.timestamp() - start if first else last, failed=job.failed)
        finally:
            engine.dispose()


@contextmanager
def running_system(
    database: str, processes: int, work: Path, backend: str = "eager", precision: str = "auto"
) -> Iterator[System]:
    """A private Redis, a fresh database with the reference model, one Celery worker (`processes` pool), the
    control plane (it lists each job's folder into batches) and the API."""
    from cli.services import private_redis, start_api, start_sweeper, start_worker, stop

    work.mkdir(parents=True, exist_ok=True)
    url = fresh_postgres(PG_URL) if database == "postgresql" else fresh_sqlite(work / "bench.db")
    store = work / "models"
    token = secrets.token_urlsafe(24)
    with ExitStack() as stack:
        broker = stack.enter_context(private_redis())
        env = {
            **os.environ, "DATABASE_URL": url, "BROKER_URL": broker, "MODEL_STORE": str(store),
            "API_TOKEN": token, "ALLOWED_ROOTS": f"{SHARED_DATA},{WORK_DIR}", "DEV_MODE": "false",
            "INFERENCE_BACKEND": backend, "INFERENCE_PRECISION": precision,
        }  # fmt: skip
        migrate_fresh(url, store)
        worker = start_worker(env, work / "worker.log", "gpu", processes)
        stack.callback(stop, worker)
        stack.callback(stop, start_sweeper(env, work / "sweeper.log"))
        api, api_url = start_api(env, work / "api.log")
        stack.callback(stop, api)
        headers = {"Authorization": f"Bearer {token}"}
        client = stack.enter_context(httpx.Client(base_url=api_url, headers=headers, timeout=60))
        system = System(client, url, worker)
        _warm_up(system, processes)
        yield system


def _warm_up(system: System, processes: int) -> None:
    """One small job, so that every pool process has loaded the model before the timed runs."""
    images = get_settings().batch_size * processes * 2  # the workers read BATCH_SIZE from the same environment
    folder = repeated_folder(DATA_SETS["test"] / "cat", images, WORK_DIR / "warm-up")
    deadline = time.monotonic() + 120
    while len(system.pool_pids()) < processes and time.monotonic() < deadline:
        time.sleep(0.2)
    system.run_job(folder)


# --- driver -------------------------------------------------------------------


def measure(runs: int, once: Callable[[], Run]) -> list[Run]:
    return [once() for _ in range(runs)]


def bench_data_set(name: str, folder: Path, args: argparse.Namespace, model: LoadedModel) -> list[Row]:
    paths = [str(p) for p in iter_image_files(folder)]
    print(f"\n{name}: {len(paths)} images in {folder}", flush=True)
    rows: list[Row] = []
    if "ceiling" in args.scenarios:
        backend, precision, batch = args.backends[0], args.precisions[0], get_settings().batch_size
        served = model.serving(backend, batch, precision)
        for overlap in (False, True):
            order = "overlapped" if overlap else "then"
            setting = f"{backend} {precision}, batch {batch}, {default_threads()} decode threads, {order} forward"
            runs = [ceiling(paths, served, batch, overlap) for _ in range(args.runs)]
            rows.append(Row(name, "ceiling", setting, runs))
            _progress(rows[-1])
        processes = os.cpu_count() or 1
        for backend, precision in _servings(args) if processes > 1 else ():
            for batch in args.ceiling_batch_sizes:
                serving = (backend, precision, batch)
                with closing(CeilingProcesses(args.store, batch, processes, backend, precision)) as ceiling_processes:
                    runs = measure(args.runs, lambda: ceiling_processes.run(paths))
                rows.append(Row(name, "ceiling", _processes_setting(*serving, processes), runs, serving=serving))
                _progress(rows[-1])
    if "user" in args.scenarios:
        rows.append(
            Row(name, "user", "DataLoader, 2 workers", measure(args.runs, lambda: user_script(folder, model, 64)))
        )
        _progress(rows[-1])
    if "naive" in args.scenarios:
        sample = paths[: args.naive_images]
        rows.append(Row(name, "naive", f"first {len(sample)} images", measure(args.runs, lambda: naive(sample, model))))
        _progress(rows[-1])
    if "system" in args.scenarios:
        with ExitStack() as stack:
            pairs = _paired_ceilings(rows, args, stack)
            for backend, precision in _servings(args):
                pair = pairs.get((backend, precision))
                for database in args.databases:
                    for processes in args.processes:
                        rows.append(
                            _system_row(name, folder, database, processes, args.runs, backend, precision, pair, paths)
                        )
                        _progress(rows[-1])
    return rows


def _processes_setting(backend: str, precision: str, batch: int, processes: int) -> str:
    return f"{backend} {precision}, batch {batch}, {processes} processes x 1 thread"


def _paired_ceilings(
    rows: list[Row], args: argparse.Namespace, stack: ExitStack
) -> dict[tuple[str, str], CeilingProcesses]:
    """For each serving backend and precision, its fastest one-process-per-core ceiling, loaded again to
    run just before each system run of that serving."""
    best: dict[tuple[str, str], tuple[float, int]] = {}
    for row in rows:
        if row.serving is not None:
            backend, precision, batch = row.serving
            rate = row.summary()["images_per_second"]
            if rate > best.get((backend, precision), (0.0, 0))[0]:
                best[(backend, precision)] = rate, batch
    processes = os.cpu_count() or 1
    return {
        (backend, precision): stack.enter_context(
            closing(CeilingProcesses(args.store, batch, processes, backend, precision))
        )
        for (backend, precision), (_, batch) in best.items()
    }


def _servings(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(backend, precision) for precision in args.precisions for backend in args.backends]


def _system_row(
    name: str,
    folder: Path,
    database: str,
    processes: int,
    runs: int,
    backend: str,
    precision: str,
    pair: CeilingProcesses | None,
    paths: Sequence[str],
) -> Row:
    """The system's runs; with `pair`, each run comes right after a run of the ceiling of the same serving
    backend and precision, so that the ratio of the two, what the queue, the database and the API cost,
    is measured at one time, whatever the machine's speed does in between."""
    work = WORK_DIR / f"system-{database}-{processes}"
    with running_system(database, processes, work, backend, precision) as system:
        pool = f"{processes} worker process{'es' if processes > 1 else ''}"
        settings = get_settings()  # the workers read the same environment
        device = pick_device(settings.device)
        forward = forward_batch(
            settings.forward_batch, settings.batch_size, device, resolve_precision(precision, device)
        )
        batches = f"batch {settings.batch_size} (forward {forward})"
        row = Row(name, "system", f"{backend} {precision}, {batches}, {database}, {pool}")
        for _ in range(runs):
            if pair is not None:
                row.paired_ceiling.append(pair.run(paths))
            row.runs.append(system.run_job(folder))
        row.peak_rss_mb = max(rss_mb(pid, "VmHWM") for pid in system.pool_pids())
    return row


def _progress(row: Row) -> None:
    s = row.summary()
    print(f"  {s['scenario']:<8} {s['setting']:<58} {s['images_per_second']:8.1f} img/s  {s['all_rates']}", flush=True)


def print_rows(rows: list[dict[str, Any]]) -> None:
    ceilings = [r["images_per_second"] for r in rows if r["scenario"] == "ceiling"]
    users = [r["images_per_second"] for r in rows if r["scenario"] == "user"]
    for row in rows:
        row["x_ceiling"] = row["images_per_second"] / max(ceilings) if ceilings else None
        row["x_user"] = row["images_per_second"] / users[0] if users else None
    print_table(
        rows,
        [("scenario", "scenario", ""), ("setting", "setting", ""), ("images", "images", "d"),
         ("images_per_second", "img/s", ".1f"), ("x_ceiling", "x ceiling", ".2f"),
         ("x_paired_ceiling", "x paired", ".2f"), ("x_user", "x user", ".2f"),
         ("peak_rss_mb", "worker RSS MB", ".0f"), ("first_p50", "first p50 s", ".2f"),
         ("first_p95", "first p95 s", ".2f"), ("last_p50", "last p50 s", ".2f"), ("last_p95", "last p95 s", ".2f"),
         ("failed", "failed", "d")],
    )  # fmt: skip


def memory_job(images: int, database: str) -> dict[str, Any]:
    """One job of `images` full-size photos on one worker process; the pool process's RSS over time."""
    folder = repeated_folder(DATA_SETS["fullres"], images)
    with running_system(database, 1, WORK_DIR / f"memory-{database}") as system:
        with MemorySampler(system.pool_pids, interval=1.0) as sampler:
            run = system.run_job(folder)
    series = [max(readings.values()) for _, readings in sampler.samples if readings]
    tenth = max(1, len(series) // 10)
    return {
        "images": run.images, "seconds": run.seconds, "failed": run.failed,
        "rss_mb_first_tenth": median(series[:tenth]), "rss_mb_last_tenth": median(series[-tenth:]),
        "rss_mb_peak": max(series), "samples": [round(s, 1) for s in series],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=tuple(DATA_SETS), default=list(DATA_SETS))
    parser.add_argument("--min-images", type=int, default=5000, help="repeat full-size photos up to this many")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--databases", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2], help="worker pool sizes")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=list(BACKENDS),
        help="INFERENCE_BACKEND of the ceiling and system rows (the first also for the single-process ceilings)",
    )
    native = ["bf16", "fp32"] if native_bf16("cpu") else ["fp32"]
    parser.add_argument(
        "--precisions", nargs="+", choices=("bf16", "fp32"), default=native,
        help="INFERENCE_PRECISION of the ceiling and system rows (the first also for the single-process ceilings); "
        "default: bf16 and fp32 where the CPU computes bf16 natively, else fp32",
    )  # fmt: skip
    parser.add_argument(
        "--ceiling-batch-sizes",
        nargs="+",
        type=int,
        default=sorted({*CPU_FORWARD_BATCH.values(), get_settings().batch_size}),
        help="batch sizes of the one-process-per-core ceilings (default: the CPU forward batches and BATCH_SIZE)",
    )
    parser.add_argument("--naive-images", type=int, default=500, help="the naive loop runs on this many images")
    parser.add_argument("--memory-job", type=int, default=0, help="also run one job of N images and track RSS")
    parser.add_argument("--device", default="auto", help="for the in-process scenarios: cpu, cuda (default: auto)")
    parser.add_argument("--json", type=Path, default=WORK_DIR / "throughput.json")
    args = parser.parse_args(argv)
    args.store = _reference_store()
    model = load(args.store, device=pick_device(args.device))
    shown = vars(args) | {"json": str(args.json), "store": str(args.store)}
    report: dict[str, Any] = {"environment": environment(), "args": shown}
    for name in args.data:
        folder = DATA_SETS[name]
        folder = repeated_folder(folder, args.min_images) if name == "fullres" else folder
        rows = [row.summary() for row in bench_data_set(name, folder, args, model)]
        print(f"\n{name}: {rows[0]['images'] if rows else 0} images, model {model.version}")
        print_rows(rows)
        report[name] = rows
    if args.memory_job:
        report["memory_job"] = memory_job(args.memory_job, "postgresql")
        print(f"\nmemory over one job: {_memory_line(report['memory_job'])}")
    write_json(args.json, report)


def _reference_store() -> Path:
    """A model store holding the shipped reference model (what the system rows install too)."""
    store = WORK_DIR / "reference-store"
    shutil.rmtree(store, ignore_errors=True)
    install_reference(get_settings().reference_model, store)
    return store


def _memory_line(m: dict[str, Any]) -> str:
    return (
        f"{m['images']} images in {m['seconds']:.0f} s; worker RSS {m['rss_mb_first_tenth']:.0f} MB in the first "
        f"tenth, {m['rss_mb_last_tenth']:.0f} MB in the last, peak {m['rss_mb_peak']:.0f} MB"
    )


if __name__ == "__main__":
    main()
