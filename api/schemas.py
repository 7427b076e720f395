"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from classifier.files import SKIP_REASONS
from db.models import MAX_ID, JobStatus, ResultStatus

MAX_PAGE_SIZE = 1000  # results per page

PATH_TEXT = (
    "A file name is bytes; a path is shown as its bytes read as UTF-8, with each byte that is not UTF-8 "
    "written `\\xNN` (two lowercase hex digits) and a backslash written `\\\\` (docs/reliability.md)."
)


class JobCreate(BaseModel):
    folder: str = Field(
        min_length=1,
        max_length=4096,
        description=f"Absolute path of a folder of photos, searched recursively. {PATH_TEXT}",
        json_schema_extra={"pattern": "^/[^\\x00]*$"},  # checked by api.planning, with a clearer message
    )
    model_version: str | None = Field(default=None, max_length=64, description="Default: the latest published.")


class Counts(BaseModel):
    total: int = Field(description="Images listed into the job so far.")
    done: int
    failed: int
    remaining: int
    skipped: int = Field(description="Files under the folder left out of the job; `skipped` says why.")


class Skipped(BaseModel):
    counts: dict[str, int] = Field(
        default_factory=dict,
        description="Files left out, by reason: " + "; ".join(f"`{k}`: {v}" for k, v in SKIP_REASONS.items()) + ".",
    )
    examples: dict[str, list[str]] = Field(
        default_factory=dict, description=f"The first few paths left out for each reason. {PATH_TEXT}"
    )


class JobOut(BaseModel):
    id: int
    folder: str = Field(description=PATH_TEXT)
    status: JobStatus
    model_version: str
    counts: Counts
    skipped: dict[str, int] = Field(description="Files left out of the job, by reason (see the summary's `skipped`).")
    listing_complete: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float | None
    images_per_second: float | None


class Readiness(BaseModel):
    database: Literal["ok", "unavailable"]
    broker: Literal["ok", "unavailable"]


class ResumeOut(BaseModel):
    job: JobOut
    batches_sent: int
    listing_continued: bool = Field(
        description="The listing was incomplete: it is continued, unless a live planner holds it."
    )


class Summary(BaseModel):
    job: JobOut
    labels: dict[str, int] = Field(description="Images classified, by label.")
    failure_reasons: dict[str, int] = Field(description="The most frequent reasons images failed, with their counts.")
    skipped: Skipped


class ResultOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    path: str = Field(description=PATH_TEXT)
    status: ResultStatus
    label: str | None
    confidence: float | None
    model_version: str
    error: str | None
    created_at: datetime


class ResultPage(BaseModel):
    items: list[ResultOut]
    next_after: int | None = Field(
        le=MAX_ID, description="Pass as `after` to get the next page; null on the last page."
    )


class ModelOut(BaseModel):
    version: str
    architecture: str
    val_accuracy: float | None
    test_accuracy: float | None
    created_at: datetime
    meta: dict[str, Any]
