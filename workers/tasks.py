"""Celery tasks: thin wrappers that fetch per-process resources and call plain functions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from classifier.files import text_to_path
from classifier.outcomes import Outcome
from classifier.serving import ANYWHERE, classify, simulate
from db.batches import Busy, Lease, release_batch, start_batch
from db.results import BatchWork, earlier_results, record_batch_results
from db.session import skip_flush_wait
from dispatch import CLASSIFY_BATCH
from settings import get_settings
from workers import metrics, runtime
from workers.app import get_app

log = logging.getLogger(__name__)


def process_batch(batch_id: int, lease: Lease) -> int | Busy:
    """Classify one recorded batch and store its results; return how many images it settled."""
    holder, sessions = runtime.holder(), runtime.sessions()
    with sessions.begin() as session:
        skip_flush_wait(session)
        claim = start_batch(
            session=session, batch_id=batch_id, holder=holder, lease=lease, holder_gone=runtime.holder_gone
        )
    if claim is None or isinstance(claim, Busy):
        return claim or 0
    with runtime.leases().holding(batch_id, holder, interval=lease.seconds / 3):
        try:
            outcomes = _classify(claim)
        except Exception as exc:
            if claim.attempt < lease.max_attempts:
                with sessions.begin() as session:
                    release_batch(session=session, batch_id=batch_id, holder=holder, error=repr(exc))
                raise
            log.exception("batch %s failed on attempt %s; marking its images failed", batch_id, claim.attempt)
            outcomes = [Outcome(p, error=f"failed {claim.attempt} times: {exc!r}") for p in claim.paths]
    with metrics.STAGE_SECONDS.labels("write").time(), sessions.begin() as session:
        recorded = record_batch_results(session=session, work=claim, outcomes=outcomes)
    if recorded:
        _count(claim.model_version, outcomes)
    if not get_settings().bench_null_speed:
        metrics.record_cuda_memory(runtime.device())
    return len(outcomes) if recorded else 0


def _count(model_version: str, outcomes: list[Outcome]) -> None:
    failed = sum(1 for o in outcomes if o.error is not None)
    metrics.IMAGES.labels(model_version, "ok").inc(len(outcomes) - failed)
    metrics.IMAGES.labels(model_version, "failed").inc(failed)


def _classify(claim: BatchWork) -> list[Outcome]:
    known = functools.partial(_earlier_results, claim.model_version) if claim.reuse else None
    speed = get_settings().bench_null_speed
    if speed:  # a benchmark of everything but the accelerator (bench/fleet.py)
        return simulate(claim.paths, speed, known)
    model, roots = runtime.model(claim.model_version), job_roots(claim.roots)
    return classify(claim.paths, model, runtime.device(), runtime.decode_pool(), roots, metrics.record_stage, known)


def _earlier_results(model_version: str, hashes: list[bytes]) -> dict[bytes, tuple[str, float]]:
    with runtime.lookups()() as session:
        return earlier_results(session=session, model_version=model_version, hashes=hashes)


def job_roots(texts: list[str] | None) -> Sequence[Path]:
    """The folders a job's files may be opened in, from their recorded texts (None: development mode)."""
    return ANYWHERE if texts is None else [text_to_path(text) for text in texts]


@get_app().task(
    name=CLASSIFY_BATCH,
    bind=True,
    # Any error but a bad file (which fails only its own row) is retried: the database or the model store
    # not answering, or a worker fault. Attempts are counted on the batch, and the last one records the
    # failure (process_batch), so the retries end; the backoff waits out an outage without a stampede.
    autoretry_for=(Exception,),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)  # type: ignore[untyped-decorator]
def classify_batch(self, batch_id: int) -> int:  # type: ignore[no-untyped-def]
    try:
        result = process_batch(batch_id, runtime.lease())
    except Exception as exc:
        metrics.BATCHES_RETRIED.labels("database" if isinstance(exc, DBAPIError) else "error").inc()
        raise
    if isinstance(result, Busy):  # another live process runs it: look again when its lease would lapse
        metrics.BATCHES_RETRIED.labels("busy").inc()
        raise self.retry(countdown=result.retry_in)
    return result
