"""Sending work to the workers: the task names and queues, and the one function that sends a batch.

The API and the control plane send tasks by name through a bare Celery app that knows no task
code, so neither imports the workers (which build the network and load models).
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from celery import Celery

from settings import Settings

CLASSIFY_BATCH = "workers.tasks.classify_batch"


def make_sender_app(settings: Settings) -> Celery:
    """A Celery app for sending only: the broker and the queue routes, no task modules."""
    app = Celery("catsdogs-dispatch", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_routes={CLASSIFY_BATCH: {"queue": settings.queue_name}},
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    return app


def batch_sender(app: Celery, queue: str) -> Callable[[int], None]:
    """The function that sends one recorded batch to the workers; every sender of batches uses it."""

    def send_batch(batch_id: int) -> None:
        app.send_task(CLASSIFY_BATCH, args=[batch_id], queue=queue)

    return send_batch


def broker_answers(app: Celery, timeout: float = 2.0) -> bool:
    """True when the broker accepts a connection within `timeout` seconds."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False


def broker_kept_its_queue(app: Celery, queue: str) -> bool:
    """False the first time it is asked after the broker lost its data (a flush, or a restart without a disk):
    a marker key that this sets is gone then. Also False the first time it is asked of a new broker."""
    with app.connection_for_read() as conn:
        return not bool(conn.default_channel.client.set(f"catsdogs:marker:{queue}", "1", nx=True))


def queue_is_empty(app: Celery, queue: str) -> bool:
    """True when no message waits in `queue` (over all of kombu's Redis priority lists)."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        names = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps]
        return sum(int(channel.client.llen(name)) for name in names) == 0


def control_client(settings: Settings) -> redis.Redis:
    """A plain client of the broker's Redis, for the control plane's own keys (never for task messages)."""
    return redis.Redis.from_url(settings.broker_url, socket_timeout=10, socket_connect_timeout=5)


def _planning_key(queue: str) -> str:
    return f"catsdogs:plan:{queue}"


def request_planning(client: redis.Redis, queue: str, job_id: int) -> None:
    """Wake the control plane to list a new job at once. Only a wake-up: a control plane that misses it
    finds the job in the database on its next look (every second)."""
    key = _planning_key(queue)
    with client.pipeline() as pipe:
        pipe.rpush(key, job_id)
        pipe.expire(key, 600)  # nobody listening: gone ten minutes later
        pipe.execute()


def wait_for_planning_request(client: redis.Redis, queue: str, timeout: float) -> int | None:
    """Block until a planning request arrives or `timeout` seconds pass; the job's id, or None."""
    got = client.blpop([_planning_key(queue)], timeout=timeout)
    return None if got is None else int(got[1])
