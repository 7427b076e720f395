"""Request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from classifier.files import SKIP_REASONS
from db.models import MAX_ID, JobStatus, ResultStatus

MAX_PAGE_SIZE = 1000  # results per page
MAX_NOTIFY_URL = 2048
# What check_notify_url accepts, narrowed to ASCII: the schema's word to clients and fuzzers.
NOTIFY_URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%!$&'()*+,;=-]+(:[0-9]{1,4})?([/?#][!-~]*)?$"

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
    reuse: bool | None = Field(
        default=None,
        description="Give a file whose bytes and model version match an earlier successful result that result, "
        "without decoding or a forward pass (counted in `reused`); false runs every file afresh. "
        "Default: the API's REUSE_RESULTS setting (on unless turned off).",
    )
    notify_url: str | None = Field(
        default=None,
        max_length=MAX_NOTIFY_URL,
        description="An http(s) URL, without user:password, that the control plane POSTs the job to, signed, once it "
        "ends (README, Completion webhooks). Needs WEBHOOK_SECRET on the server.",
        json_schema_extra={"format": "uri", "pattern": NOTIFY_URL_PATTERN},  # checked below, with clearer messages
    )

    @field_validator("notify_url")
    @classmethod
    def _check_notify_url(cls, url: str | None) -> str | None:
        if url is not None:
            check_notify_url(url)
        return url


def check_notify_url(url: str) -> None:
    """Raise ValueError unless `url` is an absolute http or https URL with a host and no credentials."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("notify_url must not hold spaces or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError unless the port is a number up to 65535
    except ValueError as exc:
        raise ValueError(f"notify_url is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("notify_url must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("notify_url must not hold credentials (user:password@); check the signature instead")
    if not parts.hostname:
        raise ValueError("notify_url has no host")


class Counts(BaseModel):
    total: int = Field(description="Images listed into the job so far.")
    done: int
    failed: int
    remaining: int
    skipped: int = Field(description="Files under the folder left out of the job; `skipped` says why.")
    reused: int = Field(default=0, description="Of `done`, images given an earlier result of the same bytes and model.")


class Skipped(BaseModel):
    counts: dict[str, int] = Field(
        default_factory=dict,
        description="Files left out, by reason: " + "; ".join(f"`{k}`: {v}" for k, v in SKIP_REASONS.items()) + ".",
    )
    examples: dict[str, list[str]] = Field(
        default_factory=dict, description=f"The first few paths left out for each reason. {PATH_TEXT}"
    )


class WebhookOut(BaseModel):
    url: str = Field(description="notify_url without its query string (which may hold a token).")
    delivered_at: datetime | None = Field(description="When the receiver answered 2xx; null until then.")
    attempts: int
    next_attempt_at: datetime | None = Field(
        description="Once the job has ended: when the next attempt is due, or the one in flight times out; null "
        "before, and once none will follow."
    )
    last_error: str | None = Field(description="Why the last failed attempt failed.")


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
    corrections: int = Field(default=0, description="Corrections people have made to its results (undone ones not).")
    webhook: WebhookOut | None = Field(default=None, description="Its completion webhook; null without notify_url.")


class JobPage(BaseModel):
    items: list[JobOut] = Field(description="Newest first.")
    next_before: int | None = Field(
        le=MAX_ID, description="Pass as `before` to get the next (older) page; null on the last page."
    )


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
    corrected_label: str | None = Field(
        default=None, description="The label a person gave it (its latest correction); null when none. `label` "
        "stays the model's.",
    )  # fmt: skip
    uncertain: bool = Field(
        default=False, description="Its confidence is below its model's uncertainty threshold (the model card's "
        "`uncertainty.threshold`, chosen on the validation split; 0.9 for a model without one). Never for a "
        "failed result.",
    )  # fmt: skip


class ResultPage(BaseModel):
    items: list[ResultOut]
    next_after: int | None = Field(
        le=MAX_ID, description="Pass as `after` to get the next page; null on the last page."
    )
    next_after_confidence: float | None = Field(
        default=None, description="In confidence order: pass as `after_confidence`, with `after`, for the next page."
    )


class CorrectionIn(BaseModel):
    label: Literal["cat", "dog", "neither"] = Field(description="`neither`: neither animal, or not a usable photo.")
    who: str | None = Field(default=None, max_length=200, description="Who corrects it (default: `api`).")


class CorrectionOut(BaseModel):
    result: ResultOut
    job_corrections: int = Field(description="The job's corrections now.")


class ModelOut(BaseModel):
    version: str
    architecture: str
    val_accuracy: float | None
    test_accuracy: float | None
    created_at: datetime
    meta: dict[str, Any]
