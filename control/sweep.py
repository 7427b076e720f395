"""The control plane: listing new jobs' folders, and finding work that nobody will finish and starting it
again (lost batches, stalled listings). `catsdogs sweeper` runs it as a service of its own.

The database knows every job, unfinished batch and listing; the broker may have lost a batch's message
(a Redis restart empties the queue), its holder may have died, and a planner may have died mid-listing.
Sending a batch twice is harmless (its results are recorded once), and a listing has one planner
at a time (its lease). One sweeper acts at a time, however many run: it holds `SweeperLock`.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from celery import Celery
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from control import metrics
from control.notify import make_notifier
from control.planning import PlannerLease, job_listing, plan_job
from db.batches import Lease, lost_batch_ids, mark_sent
from db.holders import is_gone, this_process
from db.jobs import get_job, stalled_listings
from db.session import make_engine, make_session_factory
from dispatch import (
    batch_sender,
    broker_kept_its_queue,
    control_client,
    make_sender_app,
    queue_is_empty,
    wait_for_planning_request,
)
from settings import Settings

log = logging.getLogger(__name__)
ADVISORY_LOCK_KEY = 0x63617473  # "cats": the PostgreSQL advisory lock that the active sweeper holds


def sweep_once(
    sessions: sessionmaker[Session],
    send: Callable[[int], None],
    queue_empty: bool,
    settings: Settings,
    reason: str = "lost",
) -> list[int]:
    """Send again the batches that no message will deliver any more; return their ids."""
    lease = Lease(settings.lease_seconds, settings.max_attempts)
    with sessions.begin() as session:
        lost = lost_batch_ids(
            session=session, lease=lease, resend_after=settings.resend_after, queue_is_empty=queue_empty
        )
        mark_sent(session=session, batch_ids=lost)
    for batch_id in lost:
        send(batch_id)
    metrics.BATCHES_RESENT.labels(reason).inc(len(lost))
    if lost:
        log.warning("re-sent %d lost batch(es): %s", len(lost), lost[:20])
    return lost


class SweeperLock:
    """Held by the one sweeper that acts: a PostgreSQL session-level advisory lock, or on SQLite (one host)
    an exclusive flock on a file beside the database. Either ends with the process that holds it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None
        self.file: int | None = None

    def acquire(self) -> bool:
        """True while this process holds the lock (taken now, or still held)."""
        if self.engine.dialect.name == "postgresql":
            return self._hold_advisory_lock()
        return self._hold_file_lock()

    def _hold_advisory_lock(self) -> bool:
        try:
            if self.conn is not None:
                self.conn.execute(text("SELECT 1"))  # the lock lives as long as this connection
                return True
            conn = self.engine.connect()
            if conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}).scalar():
                conn.commit()
                self.conn = conn
                log.info("this sweeper holds the sweeper lock and acts")
                return True
            conn.close()
        except Exception:
            log.warning("the sweeper lock's connection failed; the lock is taken again when the database answers")
            self.release()
        return False

    def _hold_file_lock(self) -> bool:
        if self.file is not None:
            return True
        database = self.engine.url.database
        path = Path(f"{database}.sweeper.lock") if database and database != ":memory:" else Path("var/sweeper.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.file = fd
        log.info("this sweeper holds the sweeper lock (%s) and acts", path)
        return True

    def release(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.debug("closing the sweeper lock's connection failed", exc_info=True)
            self.conn = None
        if self.file is not None:
            os.close(self.file)
            self.file = None


class Sweeper(threading.Thread):
    """The control plane's loop, while it holds the sweeper lock: list new jobs (woken by the API, and
    looking every second), continue stalled listings, re-send lost batches every `settings.sweep_interval`
    seconds, and all queued ones at once when the broker lost its queue, and POST ended jobs to their
    notify_url (control.notify). Each listing runs in a thread of its own, and webhooks in a few threads of
    their own. Errors are logged, not raised."""

    def __init__(self, app: Celery, engine: Engine, settings: Settings) -> None:
        super().__init__(name="sweeper", daemon=True)
        self.app, self.settings = app, settings
        self.sessions = make_session_factory(engine)
        self.lock = SweeperLock(engine)
        self.send = batch_sender(app, settings.queue_name)
        self.control = control_client(settings)
        self.notifier = make_notifier(self.sessions, settings)
        self.stopped = threading.Event()
        self.listings: dict[int, threading.Thread] = {}
        self.look = min(1.0, settings.sweep_interval)
        self.due = time.monotonic()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                if self.lock.acquire():
                    self.act()
                    self.wait_for_work()
                else:
                    self.stopped.wait(self.look)
            except Exception:
                log.exception("the control plane's loop failed; trying again in %.0f s", self.look)
                self.stopped.wait(self.look)
        self.lock.release()
        if self.notifier is not None:
            self.notifier.close()

    def act(self) -> None:
        """One look: listings and due webhooks first (they need only the database; the notifier's own threads
        send the webhooks), then the broker's marker and lost batches."""
        self.continue_listings()
        if self.notifier is not None:
            self.notifier.deliver_due()
        if not broker_kept_its_queue(self.app, self.settings.queue_name):
            self.resend_everything_queued()
        if time.monotonic() >= self.due:
            self.due = time.monotonic() + self.settings.sweep_interval
            sweep_once(self.sessions, self.send, queue_is_empty(self.app, self.settings.queue_name), self.settings)

    def wait_for_work(self) -> None:
        """Until the API asks for a new job's listing, or a second has passed."""
        try:
            wait_for_planning_request(self.control, self.settings.queue_name, self.look)
        except Exception:
            log.debug("waiting for planning requests failed; looking again in %.0f s", self.look, exc_info=True)
            self.stopped.wait(self.look)

    def resend_everything_queued(self) -> list[int]:
        """The broker lost its data: send every queued batch of an unfinished job again, without waiting for
        RESEND_AFTER. A batch whose message survived is then delivered twice, which is harmless."""
        settings = self.settings.model_copy(update={"resend_after": 0.0})
        lost = sweep_once(self.sessions, self.send, True, settings, reason="broker_lost")
        log.warning("the broker lost its queue (its marker is gone): re-sent %d queued batch(es)", len(lost))
        return lost

    def continue_listings(self) -> list[int]:
        """Start a planner for each listing that nobody is doing (a new job's, or one whose planner died);
        return their jobs' ids."""
        with self.sessions() as session:
            stalled = stalled_listings(session=session, lease_seconds=self.settings.lease_seconds, holder_gone=is_gone)
        started = [job_id for job_id in stalled if self._start_listing(job_id)]
        metrics.LISTINGS_STARTED.inc(len(started))
        if started:
            log.info("listing job(s) %s", started)
        return started

    def _start_listing(self, job_id: int) -> bool:
        self.listings = {job: thread for job, thread in self.listings.items() if thread.is_alive()}
        if job_id in self.listings:
            return False
        thread = threading.Thread(target=self._list, args=(job_id,), name=f"listing-{job_id}", daemon=True)
        self.listings[job_id] = thread
        thread.start()
        return True

    def _list(self, job_id: int) -> None:
        try:
            with self.sessions() as session:
                job = get_job(session=session, job_id=job_id)
                listing = None if job is None else job_listing(job, self.settings.max_images_per_job)
            if listing is not None:
                lease = PlannerLease(this_process(), self.settings.lease_seconds, is_gone)
                plan_job(listing, self.sessions, self.send, lease)
        except Exception:
            log.exception("job %s: continuing its listing failed; the next sweep tries again", job_id)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def serve(settings: Settings) -> None:
    """The sweeper service (`catsdogs sweeper`): sweep until SIGTERM or SIGINT. Any number may run; one acts."""
    engine = make_engine(settings.database_url, ping=False)  # every loop and listing retries its errors
    sweeper = Sweeper(make_sender_app(settings), engine, settings)
    if settings.control_metrics_port:
        metrics.serve(settings.control_metrics_port, sweeper.sessions, settings.lease_seconds)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sweeper.stopped.set())
    gc.freeze()  # what is loaded stays: collections walk only what listings create (workers/app.py says why)
    log.info("sweeper %s: every %.1f s, leases of %.0f s", this_process(), settings.sweep_interval,
             settings.lease_seconds)  # fmt: skip
    if sweeper.notifier is None:
        log.info("WEBHOOK_SECRET is unset: no completion webhooks are sent")
    sweeper.run()  # in this thread: returns once stopped
    engine.dispose()
