"""GET /jobs/{id}/export and DELETE /jobs/{id} against real PostgreSQL and SQLite, on rows inserted directly."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from api import exports
from api.main import create_app
from db.models import Batch, Correction, JobStatus, Result, ResultStatus
from settings import Settings
from tests.conftest import AUTH
from tests.factories import job_with_results

ROWS = 3000
COLUMNS = ["id", "path", "status", "label", "confidence", "model_version", "error", "corrected_label"]


@pytest.fixture
def api(api_settings: Settings) -> Iterator[TestClient]:
    """The API without a control plane: these jobs are made whole in the database."""
    with TestClient(create_app(api_settings), headers=AUTH) as client:
        yield client


def _sessions(client: TestClient) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = client.app.state.sessions  # type: ignore[attr-defined]
    return sessions


def _job(client: TestClient, model_store: Path, rows: int, status: JobStatus = JobStatus.SUCCEEDED) -> int:
    with _sessions(client).begin() as session:
        return job_with_results(session=session, model_store=model_store, rows=rows, status=status)


def _stored(client: TestClient, job_id: int) -> list[dict[str, Any]]:
    """The job's results as an export must show them, read without db.exports."""
    with _sessions(client)() as session:
        rows = session.execute(select(*[getattr(Result, c) for c in COLUMNS[:-1]]).where(Result.job_id == job_id))
        corrections = session.execute(select(Correction.result_id, Correction.new_label).order_by(Correction.id))
        latest = dict(corrections.tuples().all())
        return [dict(zip(COLUMNS, (*r[:2], r[2].value, *r[3:], latest.get(r[0])), strict=True)) for r in sorted(rows)]


def _from_csv(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert reader.fieldnames == COLUMNS
    return [
        {**r, "id": int(r["id"]), "confidence": float(r["confidence"]) if r["confidence"] else None}
        | {name: r[name] or None for name in ("label", "error", "corrected_label")}
        for r in reader
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_an_export_holds_every_row_exactly(api: TestClient, model_store: Path, fmt: str) -> None:
    job_id = _job(api, model_store, ROWS)
    _job(api, model_store, 5)  # a later job's rows follow this one's in (job_id, id) order
    response = api.get(f"/jobs/{job_id}/export", params={"format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="job-{job_id}-results.{fmt}"'
    expected = _stored(api, job_id)
    assert len(expected) == ROWS and [r["corrected_label"] for r in expected[:4]] == ["neither", None, "cat", None]
    if fmt == "csv":
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert _from_csv(response.text) == expected
    elif fmt == "jsonl":
        assert response.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line) for line in response.text.splitlines()] == expected
    else:
        assert response.headers["content-type"] == "application/vnd.apache.parquet"
        assert pq.read_table(io.BytesIO(response.content)).to_pylist() == expected


def test_an_export_reads_a_page_at_a_time(api: TestClient, model_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _job(api, model_store, ROWS)
    monkeypatch.setattr(exports, "PAGE_SIZE", 700)
    reads: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "FROM result" in statement:
            reads.append(statement)

    engine = _sessions(api).kw["bind"]
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = api.get(f"/jobs/{job_id}/export", params={"format": "parquet"})
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(reads) == 5  # 4 full pages and a short one, which ends it
    groups = pq.ParquetFile(io.BytesIO(response.content))
    assert [groups.metadata.row_group(i).num_rows for i in range(groups.num_row_groups)] == [700] * 4 + [200]


def test_encoding_pulls_one_page_per_chunk() -> None:
    pulled: list[int] = []

    def pages() -> Iterator[list[Any]]:
        for n in range(3):
            pulled.append(n)
            yield [(n, f"/p/{n}.jpg", ResultStatus.OK, "cat", 0.5, "v1", None, None)]

    for fmt in exports.FORMATS:
        pulled.clear()
        chunks = exports.encode(fmt, pages())  # type: ignore[arg-type]
        if fmt == "csv":
            assert next(chunks).startswith(b"id,path,") and pulled == []  # the header, before any row is read
        for n in range(3):
            next(chunks)
            assert pulled == list(range(n + 1)), fmt


def test_an_empty_job_exports_an_empty_file(api: TestClient, model_store: Path) -> None:
    job_id = _job(api, model_store, 0)
    assert api.get(f"/jobs/{job_id}/export").text.splitlines() == [",".join(COLUMNS)]
    assert api.get(f"/jobs/{job_id}/export", params={"format": "jsonl"}).text == ""
    parquet = api.get(f"/jobs/{job_id}/export", params={"format": "parquet"}).content
    assert pq.read_table(io.BytesIO(parquet)).column_names == COLUMNS


def test_exporting_an_unknown_job_or_format_is_refused(api: TestClient) -> None:
    assert api.get("/jobs/999999/export").status_code == 404
    assert api.get("/jobs/1/export", params={"format": "xlsx"}).status_code == 422
    assert TestClient(api.app).get("/jobs/1/export").status_code == 401


def test_deleting_a_job_removes_its_batches_results_and_corrections_only(api: TestClient, model_store: Path) -> None:
    job_id, other = _job(api, model_store, 50), _job(api, model_store, 7)
    assert api.delete(f"/jobs/{job_id}").status_code == 204
    assert api.get(f"/jobs/{job_id}").status_code == 404
    assert api.delete(f"/jobs/{job_id}").status_code == 404
    with _sessions(api)() as session:
        for table, left in ((Result, 7), (Batch, 1), (Correction, 3)):
            count = select(func.count()).select_from(table)
            assert session.scalar(count.where(table.job_id == job_id)) == 0
            assert session.scalar(count.where(table.job_id == other)) == left
    assert len(_stored(api, other)) == 7


def test_a_queued_or_running_job_is_deleted_only_once_cancelled(api: TestClient, model_store: Path) -> None:
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        job_id = _job(api, model_store, 3, status)
        refused = api.delete(f"/jobs/{job_id}")
        assert refused.status_code == 409
        assert refused.json()["detail"] == f"job {job_id} is {status.value}: cancel it first"
        assert api.get(f"/jobs/{job_id}").json()["status"] == status.value
        assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
        assert api.delete(f"/jobs/{job_id}").status_code == 204
        assert _stored(api, job_id) == []
