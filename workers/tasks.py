"""Celery tasks: thin wrappers that fetch per-process resources and call plain functions."""

from __future__ import annotations

import logging

from sqlalchemy.exc import OperationalError

from db.queries import BatchWork, Outcome, record_batch_results, start_batch
from workers import runtime
from workers.app import CLASSIFY_BATCH, app
from workers.inference import classify

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


def process_batch(batch_id: int) -> int:
    """Classify one recorded batch and store its results; return how many images it settled."""
    sessions = runtime.sessions()
    with sessions.begin() as session:
        work = start_batch(session=session, batch_id=batch_id)
    if work is None:
        log.info("batch %s: nothing to do (finished, cancelled or unknown)", batch_id)
        return 0
    try:
        outcomes = classify(work.paths, runtime.model(work.model_version), runtime.device(), runtime.decode_pool())
    except Exception as exc:
        if _attempts(work) < MAX_ATTEMPTS:
            raise
        log.exception("batch %s failed %s times; marking its images failed", batch_id, MAX_ATTEMPTS)
        outcomes = [Outcome(path=p, error=f"batch failed after {MAX_ATTEMPTS} attempts: {exc}") for p in work.paths]
    with sessions.begin() as session:
        recorded = record_batch_results(session=session, work=work, outcomes=outcomes)
    return len(outcomes) if recorded else 0


def _attempts(work: BatchWork) -> int:
    from db.models import Batch

    with runtime.sessions()() as session:
        return session.get_one(Batch, work.batch_id).attempts


@app.task(name=CLASSIFY_BATCH, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def classify_batch(self, batch_id: int) -> int:  # type: ignore[no-untyped-def]
    try:
        return process_batch(batch_id)
    except OperationalError as exc:  # the database is unreachable: wait and try again
        raise self.retry(exc=exc, countdown=min(60, 2 ** min(self.request.retries, 6))) from exc
    except Exception as exc:
        raise self.retry(exc=exc, countdown=1) from exc
