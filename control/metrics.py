"""Prometheus metrics of the control plane: the state of the work, read from the database on each scrape,
and what this control plane has done (batches re-sent, jobs listed).

Served by `catsdogs sweeper` on CONTROL_METRICS_PORT. The gauges come from the database, the source of
truth, so every replica reports the same figures whichever one holds the lock; the counters are the
acting replica's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import Counter, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from db.batches import batch_census
from db.jobs import jobs_by_status

log = logging.getLogger(__name__)

BATCHES_RESENT = Counter(
    "catsdogs_batches_resent_total", "Batches the control plane sent again: found lost by a sweep (a lapsed lease, "
    "or queued while the broker's queue is empty), or all queued ones when the broker lost its queue.", ["reason"],
)  # fmt: skip
LISTINGS_STARTED = Counter("catsdogs_listings_started_total", "Job listings this control plane started or took over.")
WEBHOOK_ATTEMPTS = Counter(
    "catsdogs_webhook_attempts_total", "Completion webhook attempts this control plane made, by outcome: `delivered`, "
    "`retrying` (failed, tried again later) or `gave_up` (failed, no attempt follows).", ["outcome"],
)  # fmt: skip


class DatabaseCollector(Collector):
    """Batches queued, running and failed, leases lapsed, the oldest queued batch's age, and jobs by state."""

    def __init__(self, sessions: sessionmaker[Session], lease_seconds: float) -> None:
        self.sessions, self.lease_seconds = sessions, lease_seconds

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                census = batch_census(session=session, lease_seconds=self.lease_seconds)
                jobs = jobs_by_status(session=session)
        except Exception as exc:  # a scrape during an outage: report that, not a stack trace
            log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            yield GaugeMetricFamily("catsdogs_database_up", "1 when the control plane's last look at it worked.", 0)
            return
        yield GaugeMetricFamily("catsdogs_database_up", "1 when the control plane's last look at it worked.", 1)
        batches = GaugeMetricFamily("catsdogs_batches", "Batches queued and running (of unfinished jobs), and failed "
                                    "(of every job).", labels=["status"])  # fmt: skip
        for status, count in (("queued", census.queued), ("running", census.running), ("failed", census.failed)):
            batches.add_metric([status], count)
        yield batches
        yield GaugeMetricFamily("catsdogs_batches_lease_lapsed", "Running batches whose holder has been silent for "
                                "LEASE_SECONDS: the control plane sends them again.", census.lease_lapsed)  # fmt: skip
        age = "Seconds since the oldest queued batch of an unfinished job was sent (0 when none waits)."
        yield GaugeMetricFamily("catsdogs_oldest_queued_batch_age_seconds", age, census.oldest_queued_seconds)
        by_state = GaugeMetricFamily("catsdogs_jobs", "Jobs by state.", labels=["status"])
        for status, count in jobs.items():
            by_state.add_metric([status], count)
        yield by_state


def serve(port: int, sessions: sessionmaker[Session], lease_seconds: float) -> None:
    REGISTRY.register(DatabaseCollector(sessions, lease_seconds))
    start_http_server(port)
    log.info("control plane metrics on :%d/metrics", port)
