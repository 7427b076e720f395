"""Per-process resources of a worker, created lazily in the pool child (never before the fork)."""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from sqlalchemy.orm import Session, sessionmaker

from classifier import store
from classifier.store import LoadedModel
from db.session import make_engine, make_session_factory
from settings import get_settings
from workers.inference import default_threads, pick_device

log = logging.getLogger(__name__)
POOL_SIZE = 1  # set by the worker_init signal in the parent process


@functools.cache
def sessions() -> sessionmaker[Session]:
    return make_session_factory(make_engine(get_settings().database_url))


@functools.cache
def device() -> torch.device:
    settings = get_settings()
    threads = settings.torch_threads or default_threads(POOL_SIZE)
    torch.set_num_threads(threads)
    return pick_device(settings.device)


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=default_threads(POOL_SIZE), thread_name_prefix="decode")


@functools.lru_cache(maxsize=2)
def model(version: str) -> LoadedModel:
    """Load a published version once per process."""
    loaded = store.load(get_settings().model_store, version, device())
    log.info(
        "process %s loaded model %s on %s (%s torch threads)", os.getpid(), version, device(), torch.get_num_threads()
    )
    return loaded
