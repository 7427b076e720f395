"""Completion webhooks: the acting sweeper POSTs each ended job that has a notify_url to it.

The request is `POST <notify_url>` with `Content-Type: application/json` and the body `event_body`, the
same bytes on every attempt:

    {"event": "job.ended", "job_id": 17, "status": "succeeded",
     "counts": {"total": 100, "done": 98, "failed": 2, "skipped": 3}, "folder": "/photos/x",
     "model_version": "v3", "error": null, "created_at": "2026-12-06T18:00:00+00:00",
     "started_at": "...", "finished_at": "..."}

with the headers

    X-Catsdogs-Event: job.ended
    X-Catsdogs-Delivery: 17.2           (job id . attempt: unique per attempt)
    X-Catsdogs-Timestamp: 1796580000    (Unix seconds when this attempt was sent)
    X-Catsdogs-Signature: sha256=<hex>  (HMAC-SHA256 keyed with WEBHOOK_SECRET over timestamp + "." + body)

A receiver checks the signature over the timestamp header's text, a dot and the raw body bytes, in
constant time, and refuses a timestamp more than 5 minutes away from its clock (a replayed request):
`verify` does both. Delivery is at least once: a sweeper killed mid-attempt, or a receiver whose 2xx
was lost, gets the job again, so receivers deduplicate on `job_id` (a job ends once).

A 2xx answer delivers it. A connection error, a timeout, a 429 or a 5xx is tried again after about
WEBHOOK_BACKOFF * 2**(n-1) seconds (n: attempts so far, +-25% jitter), up to WEBHOOK_MAX_ATTEMPTS in all;
any other answer (a redirect, not followed; another 4xx) ends the delivery. The job's notify_error keeps
the last failure's reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import httpx
from sqlalchemy.orm import Session, sessionmaker

from control import metrics
from db import notifications
from db.models import Job
from settings import Settings

log = logging.getLogger(__name__)
EVENT = "job.ended"
SIGNATURE_TOLERANCE = 300  # seconds a receiver accepts between the timestamp header and its clock
THREADS = 4  # deliveries in flight at once


def event_body(job: Job) -> bytes:
    """The JSON body that announces that `job` has ended."""
    event = {
        "event": EVENT,
        "job_id": job.id,
        "status": job.status.value,
        "counts": {"total": job.total, "done": job.done, "failed": job.failed, "skipped": job.skipped},
        "folder": job.folder,
        "model_version": job.model_version,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }
    return json.dumps(event, separators=(",", ":")).encode()


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Catsdogs-Signature header's value."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, now: float | None = None) -> bool:
    """What a receiver checks: the signature, and a timestamp within SIGNATURE_TOLERANCE seconds of `now`."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= SIGNATURE_TOLERANCE and hmac.compare_digest(sign(secret, timestamp, body), signature)


def retry_delay(attempts: int, backoff: float) -> float:
    """Seconds to wait after `attempts` failed ones: `backoff` doubled each time, with +-25% jitter so that
    the deliveries a receiver's outage failed together do not come back together."""
    return backoff * 2.0 ** (attempts - 1) * random.uniform(0.75, 1.25)


@dataclass(frozen=True)
class Delivery:
    job_id: int
    attempt: int  # 1 for the first
    url: str
    body: bytes


@dataclass(frozen=True)
class Answer:
    delivered: bool
    retry: bool  # worth trying again
    error: str | None


def post(client: httpx.Client, delivery: Delivery, secret: bytes) -> Answer:
    """One signed attempt. The answer's body is never read."""
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Catsdogs-Event": EVENT,
        "X-Catsdogs-Delivery": f"{delivery.job_id}.{delivery.attempt}",
        "X-Catsdogs-Timestamp": timestamp,
        "X-Catsdogs-Signature": sign(secret, timestamp, delivery.body),
    }
    try:
        with client.stream("POST", delivery.url, content=delivery.body, headers=headers) as response:
            code = response.status_code
    except httpx.TimeoutException as exc:
        return Answer(False, True, f"no answer within the timeout ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return Answer(False, True, f"{type(exc).__name__}: {exc}")
    except httpx.HTTPError as exc:
        return Answer(False, False, f"{type(exc).__name__}: {exc}")
    if 200 <= code < 300:
        return Answer(True, False, None)
    return Answer(False, code == 429 or code >= 500, f"answered HTTP {code}")


class Notifier:
    """Sends the due webhooks from a few threads of its own, so that a slow receiver holds up neither the
    sweeper's loop nor another job's delivery. Each attempt waits at most about WEBHOOK_TIMEOUT seconds."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, secret: bytes) -> None:
        self.sessions, self.secret = sessions, secret
        self.max_attempts, self.backoff = settings.webhook_max_attempts, settings.webhook_backoff
        # httpx's timeout bounds each phase (connect, write, each read): an attempt ends well within this.
        self.lease_seconds = 4 * settings.webhook_timeout + 30
        self.client = httpx.Client(
            timeout=settings.webhook_timeout, follow_redirects=False, headers={"User-Agent": "catsdogs-webhook"}
        )
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="webhook")
        self.in_flight: set[int] = set()

    def deliver_due(self) -> list[int]:
        """Start the due attempts that idle threads can take; return their jobs' ids."""
        free = THREADS - len(self.in_flight)
        if free <= 0:
            return []
        with self.sessions.begin() as session:
            notifications.end_exhausted(session=session, max_attempts=self.max_attempts)
            due = notifications.due_notifications(session=session, max_attempts=self.max_attempts, limit=THREADS)
        started = []
        for job_id in [j for j in due if j not in self.in_flight][:free]:
            if (delivery := self._claim(job_id)) is not None:
                self.in_flight.add(job_id)
                self.pool.submit(self._attempt, delivery)
                started.append(job_id)
        return started

    def _claim(self, job_id: int) -> Delivery | None:
        with self.sessions.begin() as session:
            job = notifications.claim_attempt(
                session=session, job_id=job_id, max_attempts=self.max_attempts, lease_seconds=self.lease_seconds
            )
            if job is None or job.notify_url is None:
                return None
            return Delivery(job.id, job.notify_attempts, job.notify_url, event_body(job))

    def _attempt(self, delivery: Delivery) -> None:
        try:
            self._record(delivery, post(self.client, delivery, self.secret))
        except Exception:  # the lease lapses and the next look tries again
            log.exception("job %s: recording webhook attempt %d failed", delivery.job_id, delivery.attempt)
        finally:
            self.in_flight.discard(delivery.job_id)

    def _record(self, delivery: Delivery, answer: Answer) -> None:
        where = f"job {delivery.job_id}: webhook to {notifications.url_without_query(delivery.url)}"
        with self.sessions.begin() as session:
            if answer.delivered:
                notifications.record_delivered(session=session, job_id=delivery.job_id)
                log.info("%s delivered (attempt %d)", where, delivery.attempt)
                outcome = "delivered"
            else:
                more = answer.retry and delivery.attempt < self.max_attempts
                wait = retry_delay(delivery.attempt, self.backoff) if more else None
                error = answer.error or "failed"
                notifications.record_failed(
                    session=session, job_id=delivery.job_id, attempt=delivery.attempt, error=error, retry_after=wait
                )
                log.warning("%s: attempt %d %s (%s)", where, delivery.attempt, error, _next(wait))
                outcome = "retrying" if more else "gave_up"
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()

    def close(self) -> None:
        """Wait for the attempts in flight; those not started yet are tried again once their lease lapses."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def _next(wait: float | None) -> str:
    return "no more attempts" if wait is None else f"next in {wait:.0f} s"


def make_notifier(sessions: sessionmaker[Session], settings: Settings) -> Notifier | None:
    """None without WEBHOOK_SECRET: nothing is sent unsigned (the API then accepts no notify_url)."""
    if settings.webhook_secret is None:
        return None
    return Notifier(sessions, settings, settings.webhook_secret.get_secret_value().encode())
