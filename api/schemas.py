"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from db.models import JobStatus, ResultStatus

PATH_TEXT = (
    "A file name is bytes; a path is shown as its bytes read as UTF-8, with each byte that is not UTF-8 "
    "written `\\xNN` (two lowercase hex digits) and a backslash written `\\\\` (docs/reliability.md)."
)


class JobCreate(BaseModel):
    folder: str = Field(
        min_length=1, max_length=4096, description=f"Folder of photos, searched recursively. {PATH_TEXT}"
    )
    model_version: str | None = Field(default=None, max_length=64, description="Default: the latest published.")


class Counts(BaseModel):
    total: int
    done: int
    failed: int
    remaining: int


class JobOut(BaseModel):
    id: int
    folder: str = Field(description=PATH_TEXT)
    status: JobStatus
    model_version: str
    counts: Counts
    listing_complete: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_seconds: float | None
    images_per_second: float | None


class ResumeOut(BaseModel):
    job: JobOut
    batches_sent: int


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
    next_after: int | None = Field(description="Pass as `after` to get the next page; null on the last page.")


class ModelOut(BaseModel):
    version: str
    architecture: str
    val_accuracy: float | None
    test_accuracy: float | None
    created_at: datetime
    meta: dict[str, Any]
