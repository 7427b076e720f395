"""Reviewing results: corrections by people, and thumbnails of the photos. `router` needs the token (or the
web page's session, api.security), like api.routes.router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam

from api.deps import SessionDep, ThumbnailsDep
from api.errors import COMMON_ERRORS, responses
from api.routes import KnownQueryOnly, results_out
from api.schemas import CorrectionIn, CorrectionOut
from classifier.files import text_to_path
from classifier.thumbnails import SIZES, ThumbnailError
from db import corrections, result_pages
from db.models import MAX_ID, Result

router = APIRouter(responses=responses(*COMMON_ERRORS))

ResultId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A result's id.")]
ANYWHERE = [Path("/")]  # a job's roots in development mode, as the workers open its files
THUMBNAIL_STATUS = {"not_found": 404, "outside": 403, "unreadable": 422}
# Private: behind the token. Short: a thumbnail changes when its file does (the ETag then changes too).
THUMBNAIL_CACHE_CONTROL = "private, max-age=600"


@router.post(
    "/results/{result_id}/correction",
    status_code=status.HTTP_201_CREATED,
    response_model=CorrectionOut,
    responses=responses(404),
)
def correct_result(result_id: ResultId, body: CorrectionIn, session: SessionDep) -> CorrectionOut:
    """Give a result the label a person sees in it. The model's `label` is kept; the result's
    `corrected_label` becomes this one until it is corrected again or undone."""
    correction = corrections.record_correction(
        session=session, result_id=result_id, label=body.label, who=body.who or "api"
    )
    if correction is None:
        raise HTTPException(404, f"no result {result_id}")
    session.commit()
    return _correction_out(session, result_id)


@router.delete("/results/{result_id}/correction", response_model=CorrectionOut, responses=responses(404))
def undo_correction(result_id: ResultId, session: SessionDep) -> CorrectionOut:
    """Undo the result's latest correction: the one before it, or else the model's label, applies again."""
    if session.get(Result, result_id) is None:
        raise HTTPException(404, f"no result {result_id}")
    if corrections.undo_correction(session=session, result_id=result_id) is None:
        raise HTTPException(404, f"result {result_id} has no correction to undo")
    session.commit()
    return _correction_out(session, result_id)


def _correction_out(session: SessionDep, result_id: int) -> CorrectionOut:
    result = session.get(Result, result_id)
    assert result is not None  # results are deleted only with their job
    count = corrections.count_corrections(session=session, job_ids=[result.job_id])[result.job_id]
    return CorrectionOut(result=results_out(session, result.job_id, [result])[0], job_corrections=count)


@router.get(
    "/results/{result_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "A JPEG."}, **responses(403, 404, 422)},
    dependencies=[KnownQueryOnly],
)
def read_thumbnail(
    result_id: ResultId,
    request: Request,
    session: SessionDep,
    thumbnails: ThumbnailsDep,
    size: Annotated[Literal["small", "large"], Query(description="small: 256 px; large: 512 px.")] = "small",
) -> Response:
    """A JPEG of the result's photo, at most `size` on its longer side, made from the file as it is now
    (opened only inside its job's allowed folders, as the workers open it)."""
    found = result_pages.get_result_file(session=session, result_id=result_id)
    if found is None:
        raise HTTPException(404, f"no result {result_id}")
    roots = ANYWHERE if found.roots is None else [text_to_path(root) for root in found.roots]
    try:
        thumbnail = thumbnails.get(found.path, roots, SIZES[size])
    except ThumbnailError as exc:
        raise HTTPException(THUMBNAIL_STATUS[exc.kind], f"no thumbnail of {found.path}: {exc}") from None
    headers = {"Cache-Control": THUMBNAIL_CACHE_CONTROL, "ETag": f'"{thumbnail.key[:32]}"'}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(thumbnail.jpeg, media_type="image/jpeg", headers=headers)
