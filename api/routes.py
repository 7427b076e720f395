"""HTTP routes: thin wrappers around the db query modules and api.planning.

`router` needs the bearer token (api.main adds require_token to it); `public_router` does not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import EnqueueDep, PlanDep, SessionDep, SessionsDep, SettingsDep
from api.errors import COMMON_ERRORS, RETRY_AFTER_SECONDS, responses
from api.planning import FolderError, validate_folder
from api.schemas import (
    MAX_PAGE_SIZE,
    Counts,
    JobCreate,
    JobOut,
    JobPage,
    ModelOut,
    Readiness,
    ResultOut,
    ResultPage,
    ResumeOut,
    Skipped,
    Summary,
    WebhookOut,
)
from classifier.files import path_to_text, resolve_path
from classifier.store import read_all_meta
from classifier.uncertainty import is_uncertain
from db import batches, corrections, jobs, notifications, registry, result_pages, results
from db.models import FINAL_JOB_STATUSES, MAX_ID, Job, JobStatus, Result, ResultStatus

log = logging.getLogger(__name__)
router = APIRouter(responses=responses(*COMMON_ERRORS))
public_router = APIRouter()

MAX_JOBS_PAGE = 200


def known_query_only(request: Request) -> None:
    """Refuse a query parameter the route does not take: a misspelt filter would otherwise be ignored, silently."""
    route = request.scope.get("route")
    known = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    if unknown := sorted(set(request.query_params) - known):
        raise HTTPException(
            422, f"unknown query parameter {', '.join(map(repr, unknown))}; this route takes {', '.join(sorted(known))}"
        )


def _query_names(dependant: Dependant) -> set[str]:
    return {p.alias for p in dependant.query_params}.union(*(_query_names(d) for d in dependant.dependencies))


KnownQueryOnly = Depends(known_query_only)
JobId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A job's id.")]


@router.post("/jobs", status_code=status.HTTP_201_CREATED, response_model=JobOut, responses=responses(403, 404, 409))
def submit_job(body: JobCreate, session: SessionDep, settings: SettingsDep, plan: PlanDep) -> JobOut:
    """Create a job for every image under a folder. The control plane (`catsdogs sweeper`) lists the folder
    into batches and sends them; `listing_complete` says when every image is recorded. With `notify_url`, it
    POSTs the job there, signed, once it ends (needs WEBHOOK_SECRET: 422 without it)."""
    if body.notify_url is not None and settings.webhook_secret is None:
        raise HTTPException(422, "notify_url needs WEBHOOK_SECRET on the server, which is not set: webhooks are off")
    roots = _allowed_roots(settings)
    try:
        folder = validate_folder(body.folder, roots)
    except FolderError as exc:
        raise HTTPException(exc.status_code, str(exc)) from None
    version = _resolve_model_version(session, settings, body.model_version)
    job = jobs.create_job(
        session=session,
        folder=path_to_text(folder),
        model_version=version,
        batch_size=settings.batch_size,
        roots=_root_texts(roots),
        reuse=_reuses(settings, body),
        notify_url=body.notify_url,
    )
    session.commit()
    try:
        plan(job.id)
    except Exception as exc:  # the job is recorded: the control plane finds it on its next look anyway
        log.warning("job %s: could not wake the control plane (%s); it finds the job itself", job.id, exc)
    return job_out(job)


@router.get("/jobs", response_model=JobPage, dependencies=[KnownQueryOnly])
def list_jobs(
    session: SessionDep,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Return jobs with id less than this.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = 50,
) -> JobPage:
    """Jobs, newest first; follow `next_before` to page through older ones."""
    rows = jobs.list_jobs(session=session, status=job_status, before_id=before, limit=limit)
    counts = corrections.count_corrections(session=session, job_ids=[job.id for job in rows])
    return JobPage(
        items=[job_out(job, counts[job.id]) for job in rows], next_before=rows[-1].id if len(rows) == limit else None
    )


def _reuses(settings: SettingsDep, body: JobCreate) -> bool:
    """Whether the job's workers look up earlier results of its model by content hash, in any folder: as asked,
    else REUSE_RESULTS. The lookup is one indexed query per batch (db.results.earlier_results), a few µs of
    PostgreSQL per file against the decode and forward pass it spares (docs/performance.md#re-runs)."""
    return settings.reuse_results if body.reuse is None else body.reuse


def _allowed_roots(settings: SettingsDep) -> list[Path] | None:
    """The folders jobs may read; None (any folder) only in DEV_MODE without ALLOWED_ROOTS."""
    return None if settings.dev_mode and not settings.allowed_roots else settings.allowed_roots


def _root_texts(roots: list[Path] | None) -> list[str] | None:
    """The allowed roots as a job records them: resolved, as text (workers open files only inside them)."""
    if roots is None:
        return None
    return [path_to_text(r) for r in map(resolve_path, roots) if r is not None]


def _resolve_model_version(session: SessionDep, settings: SettingsDep, requested: str | None) -> str:
    # A version copied into the store since start-up (the trainer registers what it publishes itself).
    registry.register_missing(session=session, metas=read_all_meta(settings.model_store))
    known = [m.version for m in registry.list_models(session=session)]
    if requested is None:
        latest = registry.latest_model_version(session=session)
        if latest is None:
            raise HTTPException(409, "no model has been published yet: run `trainer fit` first")
        return latest
    if requested not in known:
        raise HTTPException(404, f"unknown model version {requested!r}; available: {', '.join(known) or 'none'}")
    return requested


@router.get("/jobs/{job_id}", response_model=JobOut, responses=responses(404))
def read_job(job_id: JobId, session: SessionDep) -> JobOut:
    return counted_job_out(session, _job_or_404(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=responses(404, 409))
def cancel_job(job_id: JobId, session: SessionDep) -> JobOut:
    """Cancel a job: batches not yet run are skipped; results already written are kept."""
    job = _job_or_404(session, job_id)
    if not jobs.cancel_job(session=session, job_id=job_id):
        raise HTTPException(409, f"job {job_id} has already ended ({job.status.value})")
    session.commit()
    session.refresh(job)
    return counted_job_out(session, job)


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def delete_job(job_id: JobId, session: SessionDep) -> None:
    """Delete an ended job with its batches, results and corrections. A queued or running job is refused (409):
    cancel it first (POST /jobs/{job_id}/cancel)."""
    try:
        found = jobs.delete_job(session=session, job_id=job_id)
    except jobs.JobNotEnded as exc:
        raise HTTPException(409, str(exc)) from None
    if not found:
        raise HTTPException(404, f"no job {job_id}")
    session.commit()


@router.post("/jobs/{job_id}/resume", response_model=ResumeOut, responses=responses(404, 409))
def resume_job(job_id: JobId, session: SessionDep, enqueue: EnqueueDep, plan: PlanDep) -> ResumeOut:
    """Send the job's unfinished batches again, e.g. after the broker lost its queue, and ask the control
    plane to continue its listing if it is incomplete (it does when nobody else is listing it).

    Sending a batch that is still queued or running is harmless: a batch's results are
    recorded once, whichever delivery finishes first. A listing has one planner at a time.
    """
    job = _job_or_404(session, job_id)
    if job.status in FINAL_JOB_STATUSES:
        raise HTTPException(409, f"job {job_id} has already ended ({job.status.value})")
    batch_ids = batches.unfinished_batch_ids(session=session, job_id=job_id)
    batches.mark_sent(session=session, batch_ids=batch_ids)
    session.commit()
    for batch_id in batch_ids:
        enqueue(batch_id)
    if not job.planned:
        plan(job_id)
    return ResumeOut(job=counted_job_out(session, job), batches_sent=len(batch_ids), listing_continued=not job.planned)


@router.get(
    "/jobs/{job_id}/results", response_model=ResultPage, responses=responses(404), dependencies=[KnownQueryOnly]
)
def read_results(
    job_id: JobId,
    session: SessionDep,
    label: Annotated[str | None, Query(min_length=1, max_length=32, pattern="^[^\\x00]+$")] = None,
    result_status: Annotated[ResultStatus | None, Query(alias="status")] = None,
    min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
    corrected: Annotated[
        bool | None, Query(description="Only results with (true) or without (false) a correction.")
    ] = None,
    uncertain: Annotated[
        bool | None,
        Query(description="Only results below (true) or not below (false) the model's uncertainty threshold."),
    ] = None,
    order: Annotated[
        result_pages.Order,
        Query(
            description="`confidence`: least confident first (results without a confidence, the failed, are left out)."
        ),
    ] = "id",
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Return results with id greater than this.")] = 0,
    after_confidence: Annotated[
        float | None, Query(ge=0, le=1, description="In confidence order: return results after (this, `after`).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
) -> ResultPage:
    """Results in a stable order (by id, or by confidence and id); follow `next_after` (and, in confidence
    order, `next_after_confidence`) to page through them. `label` is the model's; `corrected_label` a person's."""
    job = _job_or_404(session, job_id)
    threshold = registry.uncertainty_thresholds(session=session, versions=[job.model_version])[job.model_version]
    filters = results.ResultFilter(label, result_status, min_confidence, max_confidence, uncertain, threshold)
    start = result_pages.After(after, after_confidence)
    rows = result_pages.list_page(
        session=session, job_id=job_id, filters=filters, corrected=corrected, order=order, after=start, limit=limit
    )
    last = rows[-1] if len(rows) == limit else None
    return ResultPage(
        items=results_out(session, job_id, rows),
        next_after=last.id if last else None,
        next_after_confidence=last.confidence if last and order == "confidence" else None,
    )


def results_out(session: SessionDep, job_id: int, rows: Sequence[Result]) -> list[ResultOut]:
    """The results as the API shows them, each with its current correction and whether it is uncertain."""
    labels = corrections.corrected_labels(session=session, job_id=job_id, result_ids=[r.id for r in rows])
    thresholds = registry.uncertainty_thresholds(session=session, versions={r.model_version for r in rows})
    return [
        ResultOut.model_validate(r).model_copy(
            update={
                "corrected_label": labels.get(r.id),
                "uncertain": is_uncertain(r.confidence, thresholds[r.model_version]),
            }
        )
        for r in rows
    ]


@router.get("/jobs/{job_id}/summary", response_model=Summary, responses=responses(404))
def read_summary(job_id: JobId, session: SessionDep) -> Summary:
    """Counts per label, the most frequent failure reasons, and the files left out with the first few of each kind."""
    job = _job_or_404(session, job_id)
    return Summary(
        job=counted_job_out(session, job),
        labels=results.label_counts(session=session, job_id=job_id),
        failure_reasons=results.failure_reasons(session=session, job_id=job_id),
        skipped=Skipped.model_validate(job.skipped_detail or {}),
    )


@router.get("/models", response_model=list[ModelOut])
def read_models(session: SessionDep) -> list[ModelOut]:
    """The registered versions (the trainer registers what it publishes; the API syncs the store when it starts)."""
    return [
        ModelOut(
            version=m.version,
            architecture=m.architecture,
            val_accuracy=m.val_accuracy,
            test_accuracy=m.test_accuracy,
            created_at=m.created_at,
            meta=m.meta,
        )
        for m in registry.list_models(session=session)
    ]


@public_router.get("/health")
def health() -> dict[str, str]:
    """Liveness: the process answers. It does not look at the database or the broker (see /ready)."""
    return {"status": "ok"}


@public_router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def ready(request: Request, sessions: SessionsDep) -> JSONResponse:
    """Readiness: 200 when the database and the broker both answer, else 503 saying which does not."""
    checks = {"database": _database_answers(sessions), "broker": request.app.state.broker_answers()}
    body = Readiness(**{name: "ok" if up else "unavailable" for name, up in checks.items()})
    headers = None if all(checks.values()) else {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return JSONResponse(body.model_dump(), 200 if headers is None else 503, headers=headers)


@public_router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> PlainTextResponse:
    """Prometheus metrics of this API process (requests by route and status, latency), without a token,
    like the probes: it says nothing of any job. Restrict who reaches it on the network."""
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _database_answers(sessions: SessionsDep) -> bool:
    try:
        with sessions() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _job_or_404(session: SessionDep, job_id: int) -> Job:
    job = jobs.get_job(session=session, job_id=job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


def counted_job_out(session: SessionDep, job: Job) -> JobOut:
    """The job as the API shows it, with its count of corrections."""
    return job_out(job, corrections.count_corrections(session=session, job_ids=[job.id])[job.id])


def job_out(job: Job, correction_count: int = 0) -> JobOut:
    end = job.finished_at or (datetime.now(UTC) if job.started_at else None)
    elapsed = (end - job.started_at).total_seconds() if end and job.started_at else None
    settled = job.done + job.failed
    return JobOut(
        id=job.id,
        folder=job.folder,
        status=job.status,
        model_version=job.model_version,
        counts=Counts(
            total=job.total,
            done=job.done,
            failed=job.failed,
            remaining=job.total - settled,
            skipped=job.skipped,
            reused=job.reused,
        ),
        skipped=(job.skipped_detail or {}).get("counts", {}),
        listing_complete=job.planned,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        elapsed_seconds=elapsed,
        images_per_second=settled / elapsed if elapsed else None,
        corrections=correction_count,
        webhook=_webhook_out(job),
    )


def _webhook_out(job: Job) -> WebhookOut | None:
    if job.notify_url is None:
        return None
    return WebhookOut(
        url=notifications.url_without_query(job.notify_url),
        delivered_at=job.notified_at,
        attempts=job.notify_attempts,
        next_attempt_at=job.notify_next_at if job.status in FINAL_JOB_STATUSES else None,
        last_error=job.notify_error,
    )
