"""Corrections as training data: GET /corrections/export, a CSV that `trainer fit --extra-data` reads.

`router` needs the bearer token, like api.routes.router. `encode_csv` is also what `catsdogs corrections export
--database` writes, so that a file is the same whichever way it was made.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import Field

from api.deps import SessionsDep
from api.errors import COMMON_ERRORS, responses
from api.routes import KnownQueryOnly
from classifier.files import text_to_fspath
from db.corrections import CorrectedResult, corrected_result_pages, count_latest_labels
from db.models import MAX_ID

# path and label are what the trainer reads (trainer/data.py); it ignores the others, which say where each
# row came from (its model card lists the jobs).
COLUMNS = ("path", "label", "job_id", "result_id")
TRAINING_LABELS = ("cat", "dog")  # "neither" marks a photo unusable: left out
PAGE_SIZE = 5000
EXPORTED_HEADER = "X-Corrections-Exported"
LEFT_OUT_HEADER = "X-Corrections-Left-Out"

JobId = Annotated[int, Field(ge=1, le=MAX_ID)]

router = APIRouter(responses=responses(*COMMON_ERRORS))


def encode_csv(pages: Iterable[list[CorrectedResult]]) -> Iterator[bytes]:
    """The CSV of COLUMNS, a page at a time; each path as the file system names it (classifier.files)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for page in pages:
        writer.writerows((text_to_fspath(r.path), r.label, r.job_id, r.result_id) for r in page)
        yield buffer.getvalue().encode("utf-8", "surrogateescape")
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode()


_DOWNLOAD = {
    "description": f"One row per result whose current label is cat or dog, in (job, result) order; columns: "
    f"{', '.join(COLUMNS)}. Headers {EXPORTED_HEADER} and {LEFT_OUT_HEADER} (those marked neither) count them.",
    "content": {"text/csv": {}},
}


@router.get(
    "/corrections/export",
    response_class=StreamingResponse,
    responses={200: _DOWNLOAD},
    dependencies=[KnownQueryOnly],  # a misspelt `job` would otherwise export every job's corrections
)
def export_corrections(
    sessions: SessionsDep,
    job: Annotated[list[JobId], Query(description="Only these jobs (repeat it; none: every job's).")] = [],  # noqa: B006
) -> StreamingResponse:
    """Download the corrected results as training data (`trainer fit --extra-data FILE`): the file and the label
    a person gave it, for every result whose latest correction is cat or dog. Those marked neither are left out
    and counted in a header. Streamed a page at a time, each page in a transaction of its own."""
    with sessions() as session:  # the counts, read just before the rows
        counts = count_latest_labels(session=session, job_ids=job or None)
    pages = corrected_result_pages(sessions, job or None, TRAINING_LABELS, PAGE_SIZE)
    headers = {
        "Content-Disposition": 'attachment; filename="corrections.csv"',
        EXPORTED_HEADER: str(sum(counts[label] for label in TRAINING_LABELS)),
        LEFT_OUT_HEADER: str(counts["neither"]),
    }
    return StreamingResponse(encode_csv(pages), media_type="text/csv; charset=utf-8", headers=headers)
