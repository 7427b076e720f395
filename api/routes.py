"""HTTP routes: thin wrappers around db.queries and api.planning.

`router` needs the bearer token (api.main adds require_token to it); `public_router` does not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, status

from api.deps import EnqueueDep, SessionDep, SessionsDep, SettingsDep
from api.planning import FolderError, plan_job, validate_folder
from api.schemas import Counts, JobCreate, JobOut, ModelOut, ResultOut, ResultPage, ResumeOut
from classifier.preprocess import path_to_text
from db import queries
from db.models import FINAL_JOB_STATUSES, Job, ResultStatus

router = APIRouter()
public_router = APIRouter()


@router.post("/jobs", status_code=status.HTTP_201_CREATED, response_model=JobOut)
def submit_job(
    body: JobCreate,
    session: SessionDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    background: BackgroundTasks,
) -> JobOut:
    """Create a job for every image under a folder; listing and enqueueing continue in the background."""
    roots = _allowed_roots(settings)
    try:
        folder = validate_folder(body.folder, roots)
    except FolderError as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    version = _resolve_model_version(session, settings, body.model_version)
    job = queries.create_job(
        session=session, folder=path_to_text(folder), model_version=version, batch_size=settings.batch_size
    )
    session.commit()
    background.add_task(
        plan_job, job.id, folder, settings.batch_size, sessions, enqueue, settings.max_images_per_job, roots
    )
    return job_out(job)


def _allowed_roots(settings: SettingsDep) -> list[Path] | None:
    """The folders jobs may read; None (any folder) only in DEV_MODE without ALLOWED_ROOTS."""
    return None if settings.dev_mode and not settings.allowed_roots else settings.allowed_roots


def _resolve_model_version(session: SessionDep, settings: SettingsDep, requested: str | None) -> str:
    queries.sync_model_store(session=session, store=settings.model_store)
    known = [m.version for m in queries.list_models(session=session)]
    if requested is None:
        latest = queries.latest_model_version(session=session)
        if latest is None:
            raise HTTPException(409, "no model has been published yet: run `trainer fit` first")
        return latest
    if requested not in known:
        raise HTTPException(404, f"unknown model version {requested!r}; available: {', '.join(known) or 'none'}")
    return requested


@router.get("/jobs/{job_id}", response_model=JobOut)
def read_job(job_id: int, session: SessionDep) -> JobOut:
    return job_out(_job_or_404(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: int, session: SessionDep) -> JobOut:
    """Cancel a job: batches not yet run are skipped; results already written are kept."""
    job = _job_or_404(session, job_id)
    if not queries.cancel_job(session=session, job_id=job_id):
        raise HTTPException(409, f"job {job_id} has already ended ({job.status.value})")
    session.commit()
    session.refresh(job)
    return job_out(job)


@router.post("/jobs/{job_id}/resume", response_model=ResumeOut)
def resume_job(job_id: int, session: SessionDep, enqueue: EnqueueDep) -> ResumeOut:
    """Send the job's unfinished batches again, e.g. after the broker lost its queue.

    Sending a batch that is still queued or running is harmless: a batch's results are
    recorded once, whichever delivery finishes first.
    """
    job = _job_or_404(session, job_id)
    if job.status in FINAL_JOB_STATUSES:
        raise HTTPException(409, f"job {job_id} has already ended ({job.status.value})")
    batch_ids = queries.unfinished_batch_ids(session=session, job_id=job_id)
    queries.mark_sent(session=session, batch_ids=batch_ids)
    session.commit()
    for batch_id in batch_ids:
        enqueue(batch_id)
    return ResumeOut(job=job_out(job), batches_sent=len(batch_ids))


@router.get("/jobs/{job_id}/results", response_model=ResultPage)
def read_results(
    job_id: int,
    session: SessionDep,
    settings: SettingsDep,
    label: str | None = None,
    result_status: Annotated[ResultStatus | None, Query(alias="status")] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    after: Annotated[int, Query(ge=0, description="Return results with id greater than this.")] = 0,
    limit: Annotated[int, Query(ge=1)] = 100,
) -> ResultPage:
    """Results in a stable order (by id); follow `next_after` to page through them."""
    _job_or_404(session, job_id)
    if limit > settings.max_page_size:
        raise HTTPException(422, f"limit must be at most {settings.max_page_size}")
    filters = queries.ResultFilter(label, result_status, min_confidence, max_confidence)
    rows = queries.list_results(session=session, job_id=job_id, filters=filters, after_id=after, limit=limit)
    next_after = rows[-1].id if len(rows) == limit else None
    return ResultPage(items=[ResultOut.model_validate(r) for r in rows], next_after=next_after)


@router.get("/jobs/{job_id}/summary")
def read_summary(job_id: int, session: SessionDep) -> dict[str, object]:
    """Counts per label, and the most frequent failure reasons."""
    job = _job_or_404(session, job_id)
    return {
        "job": job_out(job).model_dump(mode="json"),
        "labels": queries.label_counts(session=session, job_id=job_id),
        "failure_reasons": queries.failure_reasons(session=session, job_id=job_id),
    }


@router.get("/models", response_model=list[ModelOut])
def read_models(session: SessionDep, settings: SettingsDep) -> list[ModelOut]:
    queries.sync_model_store(session=session, store=settings.model_store)
    session.commit()
    return [
        ModelOut(
            version=m.version,
            architecture=m.architecture,
            val_accuracy=m.val_accuracy,
            test_accuracy=m.test_accuracy,
            created_at=m.created_at,
            meta=m.meta,
        )
        for m in queries.list_models(session=session)
    ]


@public_router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


def _job_or_404(session: SessionDep, job_id: int) -> Job:
    job = queries.get_job(session=session, job_id=job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


def job_out(job: Job) -> JobOut:
    end = job.finished_at or (datetime.now(UTC) if job.started_at else None)
    elapsed = (end - job.started_at).total_seconds() if end and job.started_at else None
    settled = job.done + job.failed
    return JobOut(
        id=job.id,
        folder=job.folder,
        status=job.status,
        model_version=job.model_version,
        counts=Counts(total=job.total, done=job.done, failed=job.failed, remaining=job.total - settled),
        listing_complete=job.planned,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        elapsed_seconds=elapsed,
        images_per_second=settled / elapsed if elapsed else None,
    )
