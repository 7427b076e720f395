"""Prometheus metrics of a worker, exported by its main process for all its pool processes.

Celery's prefork pool runs the model in child processes, each with metrics of its own, so the worker
uses prometheus_client's multiprocess mode: every process writes its values to files in
PROMETHEUS_MULTIPROC_DIR (which must be set before the worker starts, one folder per worker), and the
main process, which never runs a task and so is not blocked by one, serves their sum on
WORKER_METRICS_PORT. One exporter per worker rather than per pool process: a scrape target per GPU
worker, whatever its concurrency, and no port per child. Values of a pool process that died stay
counted (counters) or are dropped (the live gauges).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

log = logging.getLogger(__name__)

IMAGES = Counter(
    "catsdogs_images_total", "Images whose result a worker recorded, by model version and outcome (ok, failed).",
    ["model_version", "outcome"],
)  # fmt: skip
STAGE_SECONDS = Histogram(
    "catsdogs_batch_stage_seconds", "Seconds a batch spends in each stage: decode (open and decode every file), "
    "forward (the network), write (the results transaction).", ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip
MODEL_LOAD_SECONDS = Histogram(
    "catsdogs_model_load_seconds", "Seconds a pool process took to load, compile and warm up a model version.",
    ["model_version"], buckets=(0.5, 1, 2, 5, 10, 20, 40, 80, 160),
)  # fmt: skip
BATCHES_RETRIED = Counter("catsdogs_batches_retried_total", "Batches a worker gave back to be tried again, by reason.",
                          ["reason"])  # fmt: skip
DEVICE = Gauge("catsdogs_worker_processes", "Pool processes that have loaded a model, by device and precision.",
               ["device", "precision"], multiprocess_mode="livesum")  # fmt: skip
CUDA_MEMORY = Gauge("catsdogs_cuda_memory_bytes", "CUDA memory allocated by the pool processes' tensors.",
                    ["device"], multiprocess_mode="livesum")  # fmt: skip


def record_stage(stage: str, seconds: float) -> None:
    STAGE_SECONDS.labels(stage).observe(seconds)


def record_device(device: torch.device, precision: str) -> None:
    DEVICE.labels(device.type, precision).set(1)


def record_cuda_memory(device: torch.device) -> None:
    if device.type == "cuda":
        CUDA_MEMORY.labels(str(device)).set(torch.cuda.memory_allocated(device))


def prepare() -> str | None:
    """In the worker's main process, before the pool starts: make PROMETHEUS_MULTIPROC_DIR and clear what an
    earlier worker left there. Every metric is labelled, so no process writes a file before this."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
    return folder


def serve(port: int) -> bool:
    """In the worker's main process: serve the sum of every process's metrics on `port`. False (with a
    warning) when PROMETHEUS_MULTIPROC_DIR is not set."""
    folder = prepare()
    if not folder:
        log.warning("WORKER_METRICS_PORT is set but PROMETHEUS_MULTIPROC_DIR is not: no metrics are served")
        return False
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
    log.info("worker metrics on :%d/metrics (from %s)", port, folder)
    return True


def forget_process(pid: int) -> None:
    """Drop the live gauges of a pool process that has exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
