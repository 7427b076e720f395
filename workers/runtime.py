"""Per-process resources of a worker, created lazily in the pool child (never before the fork)."""

from __future__ import annotations

import functools
import gc
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from sqlalchemy.orm import Session, sessionmaker

from classifier import store
from classifier.model import resolve_precision
from classifier.serving import default_threads, forward_batch, keep_freed_memory, pick_device, warm_up
from classifier.store import LoadedModel
from db.batches import Lease, renew_lease
from db.holders import is_gone, this_process
from db.results import lookup_engine
from db.session import make_engine, make_session_factory, skip_flush_wait
from settings import get_settings
from workers import metrics
from workers.leases import LeaseRenewer

log = logging.getLogger(__name__)
POOL_SIZE = 1  # set by the worker_init signal in the parent process


@functools.cache
def sessions() -> sessionmaker[Session]:
    # No ping per transaction: a task that meets a dropped connection is retried (workers/tasks.py).
    return make_session_factory(make_engine(get_settings().database_url, ping=False))


@functools.cache
def lookups() -> sessionmaker[Session]:
    """Sessions for db.results.earlier_results alone, on connections set up for it (one more per process)."""
    return make_session_factory(lookup_engine(get_settings().database_url))


@functools.cache
def leases() -> LeaseRenewer:
    """The renewer of this process's batch leases (its thread starts with the first batch)."""
    return LeaseRenewer(_renew_lease)


def _renew_lease(batch_id: int, holder: str) -> None:
    with sessions().begin() as session:
        skip_flush_wait(session)
        renew_lease(session=session, batch_id=batch_id, holder=holder)


def prepare() -> None:
    """What every task needs, made before the first one: the database engines and their driver (about 0.1 s
    of imports and set-up that the first batch would otherwise pay for, inside a job's time). It connects to nothing."""
    sessions()
    lookups()


@functools.cache
def device() -> torch.device:
    """The device this process runs the model on, with its torch threads and allocator set up."""
    settings = get_settings()
    threads = settings.torch_threads or default_threads(POOL_SIZE)
    torch.set_num_threads(threads)
    keep_freed_memory()
    return pick_device(settings.device)


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=default_threads(POOL_SIZE), thread_name_prefix="decode")


@functools.lru_cache(maxsize=2)
def model(version: str) -> LoadedModel:
    """Load a published version once per process, in the configured backend, warmed up."""
    settings, started = get_settings(), time.perf_counter()
    precision = resolve_precision(settings.inference_precision, device())
    batch = forward_batch(settings.forward_batch, settings.batch_size, device(), precision)
    loaded = store.load(settings.model_store, version, device()).serving(settings.inference_backend, batch, precision)
    warm_up(loaded, settings.batch_size, device())
    gc.freeze()  # the model's Python objects live as long as the process (workers/app.py says why)
    metrics.MODEL_LOAD_SECONDS.labels(version).observe(time.perf_counter() - started)
    metrics.record_device(device(), precision)
    log.info(
        "process %s loaded model %s on %s (%s backend, %s, forward passes of %s, %s torch threads) in %.1f s",
        os.getpid(), version, device(), settings.inference_backend, precision, batch, torch.get_num_threads(),
        time.perf_counter() - started,
    )  # fmt: skip
    return loaded


holder, holder_gone = this_process, is_gone  # this process's name on a batch lease, and whether a holder died


def lease() -> Lease:
    settings = get_settings()
    return Lease(settings.lease_seconds, settings.max_attempts)
