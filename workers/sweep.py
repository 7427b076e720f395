"""Finding batches that the broker will not deliver any more, and sending them again.

The database knows every unfinished batch; the broker may have lost its message
(a Redis restart empties the queue) or its holder may have died. Sending a batch
twice is harmless: its results are recorded once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db.queries import Lease, lost_batch_ids, mark_sent
from db.session import make_engine, make_session_factory
from settings import Settings

log = logging.getLogger(__name__)


def queue_is_empty(app: Celery, queue: str) -> bool:
    """True when no message waits in `queue` (over all of kombu's Redis priority lists)."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        names = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps]
        return sum(int(channel.client.llen(name)) for name in names) == 0


def sweep_once(
    sessions: sessionmaker[Session], send: Callable[[int], None], queue_empty: bool, settings: Settings
) -> list[int]:
    lease = Lease(settings.lease_seconds, settings.max_attempts)
    with sessions.begin() as session:
        lost = lost_batch_ids(
            session=session, lease=lease, resend_after=settings.resend_after, queue_is_empty=queue_empty
        )
        mark_sent(session=session, batch_ids=lost)
    for batch_id in lost:
        send(batch_id)
    if lost:
        log.warning("re-sent %d lost batch(es): %s", len(lost), lost[:20])
    return lost


def sweep_with_own_engine(app: Celery, settings: Settings) -> list[int]:
    """One sweep from a process that keeps no database connection afterwards (the worker's parent)."""
    from workers.app import CLASSIFY_BATCH

    engine = make_engine(settings.database_url)
    try:
        send = _sender(app, settings.queue_name, CLASSIFY_BATCH)
        return sweep_once(make_session_factory(engine), send, queue_is_empty(app, settings.queue_name), settings)
    except Exception:
        log.exception("sweep for lost batches failed")
        return []
    finally:
        engine.dispose()


def _sender(app: Celery, queue: str, task_name: str) -> Callable[[int], None]:
    def send(batch_id: int) -> None:
        app.send_task(task_name, args=[batch_id], queue=queue)

    return send


class Sweeper(threading.Thread):
    """Sweep every `settings.sweep_interval` seconds until stopped; errors are logged, not raised."""

    def __init__(self, app: Celery, sessions: sessionmaker[Session], send: Callable[[int], None], settings: Settings):
        super().__init__(name="lost-batch-sweeper", daemon=True)
        self.app, self.sessions, self.send, self.settings = app, sessions, send, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.sweep_interval):
            try:
                empty = queue_is_empty(self.app, self.settings.queue_name)
                sweep_once(self.sessions, self.send, empty, self.settings)
            except Exception:
                log.exception("sweep for lost batches failed; trying again in %.0f s", self.settings.sweep_interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
