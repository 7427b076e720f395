"""A job's results as a download: CSV, JSON lines or Parquet, streamed a page of rows at a time.

`router` needs the bearer token, like api.routes.router. `encode` is also what `catsdogs results --database`
writes, so that a file is the same whichever way it was made.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from api.deps import SessionsDep
from api.errors import COMMON_ERRORS, responses
from api.routes import JobId
from db import jobs
from db.exports import COLUMNS, ExportRow, result_pages

ExportFormat = Literal["csv", "jsonl", "parquet"]
PAGE_SIZE = 5000  # rows read, encoded and sent at a time: what one download holds in memory
Pages = Iterable[list[ExportRow]]

router = APIRouter(responses=responses(*COMMON_ERRORS))


@dataclass(frozen=True)
class Format:
    media_type: str
    encode: Callable[[Pages], Iterator[bytes]]


def _csv(pages: Pages) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    yield _drain(buffer)
    for page in pages:
        writer.writerows(_plain(row) for row in page)
        yield _drain(buffer)


def _drain(buffer: io.StringIO) -> bytes:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text.encode()


def _jsonl(pages: Pages) -> Iterator[bytes]:
    for page in pages:
        yield "".join(json.dumps(dict(zip(COLUMNS, _plain(row), strict=True))) + "\n" for row in page).encode()


def _parquet(pages: Pages) -> Iterator[bytes]:
    """One row group per page; each is sent as soon as it is written, the footer last."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), ("path", pa.string()), ("status", pa.string()), ("label", pa.string()),
                        ("confidence", pa.float64()), ("model_version", pa.string()), ("error", pa.string()),
                        ("corrected_label", pa.string())])  # fmt: skip
    sink = _Chunks()
    with pq.ParquetWriter(sink, schema) as writer:
        for page in pages:
            writer.write_table(pa.Table.from_pylist([dict(zip(COLUMNS, _plain(r), strict=True)) for r in page], schema))
            yield sink.take()
    yield sink.take()


class _Chunks(io.RawIOBase):
    """A write-only file that keeps what was written until `take` hands it on."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        taken = b"".join(self._chunks)
        self._chunks.clear()
        return taken


def _plain(row: ExportRow) -> ExportRow:
    """The row with its status as text."""
    return tuple(value.value if name == "status" else value for name, value in zip(COLUMNS, row, strict=True))


FORMATS: dict[str, Format] = {
    "csv": Format("text/csv; charset=utf-8", _csv),
    "jsonl": Format("application/x-ndjson", _jsonl),
    "parquet": Format("application/vnd.apache.parquet", _parquet),
}


def encode(fmt: str, pages: Pages) -> Iterator[bytes]:
    return FORMATS[fmt].encode(pages)


_DOWNLOAD = {
    "description": f"The job's results, one row per image, in id order; columns: {', '.join(COLUMNS)}.",
    "content": {f.media_type.split(";")[0]: {} for f in FORMATS.values()},
}


@router.get("/jobs/{job_id}/export", response_class=StreamingResponse, responses={200: _DOWNLOAD, **responses(404)})
def export_results(
    job_id: JobId, sessions: SessionsDep, fmt: Annotated[ExportFormat, Query(alias="format")] = "csv"
) -> StreamingResponse:
    """Download every result of a job as `csv`, `jsonl` (one JSON object per line) or `parquet` (a row group
    per page). The file is streamed as it is read, a page of rows at a time, each page in a transaction of
    its own; results written while it streams may or may not be in it."""
    with sessions() as session:  # closed at once: the download itself must not hold a transaction open
        if jobs.get_job(session=session, job_id=job_id) is None:
            raise HTTPException(404, f"no job {job_id}")
    chosen = FORMATS[fmt]
    return StreamingResponse(
        chosen.encode(result_pages(sessions, job_id, PAGE_SIZE)),
        media_type=chosen.media_type,
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}-results.{fmt}"'},
    )
