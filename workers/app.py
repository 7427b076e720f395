"""The Celery application. Start a worker with `celery -A workers worker -Q gpu`.

Delivery settings follow from the database being the source of truth: a task
is acknowledged only after it finished (acks_late) and is re-queued when its
process dies (reject_on_worker_lost); the database, not the broker, decides
whether a redelivered batch still needs work.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
from typing import Any

from celery import Celery, signals

from dispatch import CLASSIFY_BATCH
from settings import Settings, get_settings

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    app = Celery("catsdogs", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_routes={CLASSIFY_BATCH: {"queue": settings.queue_name}},
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=settings.task_events,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        # A task is killed after task_time_limit; Redis re-delivers an unacknowledged task
        # after visibility_timeout even while it still runs, so the timeout must be the
        # larger of the two, and of any retry countdown. A re-delivered batch whose holder
        # is alive and renewing its lease is not run again (db.batches.start_batch).
        task_time_limit=settings.task_time_limit,
        broker_transport_options={"visibility_timeout": max(3600, 2 * settings.task_time_limit)},
    )
    return app


@functools.cache
def get_app() -> Celery:
    """The worker's Celery app, built on first use from the settings (never as a side effect of an import)."""
    return make_celery(get_settings())


def __getattr__(name: str) -> Any:
    """`workers.app.app`: what `celery -A workers` and the task decorators find, built when first asked for."""
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _freeze_what_is_loaded(**_: Any) -> None:
    """Move every object loaded so far (Celery, SQLAlchemy, torch's Python side) out of the garbage collector's
    reach: a collection then walks only what tasks create. Without it, collections that the results' small
    objects set off walked the whole heap, about 3 µs per image (docs/performance.md, "Fleet scale")."""
    gc.freeze()


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _prepare_pool_process(**_: Any) -> None:
    from workers import runtime

    runtime.prepare()


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _prepare_in_process_pool(sender: Any = None, **_: Any) -> None:
    """The solo and threads pools run tasks in the main process, which no pool process start prepares
    (and a prefork main process must stay unprepared: it forks its pool processes)."""
    from celery.concurrency.prefork import TaskPool as ProcessPool

    from workers import runtime

    if not isinstance(getattr(sender, "pool", None), ProcessPool):
        runtime.prepare()


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _remember_concurrency(sender: Any = None, **_: Any) -> None:
    """Record the pool size in the parent, so each forked child can size its torch thread pool."""
    from workers import runtime

    runtime.POOL_SIZE = int(getattr(sender, "concurrency", 1) or 1)


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _warn_of_simulated_serving(**_: Any) -> None:
    if speed := get_settings().bench_null_speed:
        log.warning("BENCH_NULL_SPEED=%s: a benchmark worker; it reads no file and answers 'cat' for all", speed)


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _serve_metrics(**_: Any) -> None:
    """Serve the pool's Prometheus metrics from the main process (workers/metrics.py), if a port is set."""
    from workers import metrics

    port = get_settings().worker_metrics_port
    if port:
        metrics.serve(port)
    else:
        metrics.prepare()


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _forget_process_metrics(pid: int | None = None, **_: Any) -> None:
    from workers import metrics

    metrics.forget_process(pid or os.getpid())
