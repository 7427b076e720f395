"""Requests that once got a 500: each now gets a 4xx saying why, or a 503 while a dependency is down."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from settings import Settings
from tests.conftest import AUTH
from tests.factories import copy_photos

JOB_ROUTES = ["GET /jobs/{}", "POST /jobs/{}/cancel", "POST /jobs/{}/resume", "GET /jobs/{}/results",
              "GET /jobs/{}/summary"]  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path, photos: list[Path]) -> Path:
    copy_photos(photos[:3], tmp_path / "photos")
    return tmp_path / "photos"


def _call(client: TestClient, route: str, job_id: int | str, **kwargs: object):  # type: ignore[no-untyped-def]
    method, path = route.split(" ")
    return client.request(method, path.format(job_id), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "status", "message"),
    [
        ("/photos\u0000", 422, "NUL"),
        ("~nosuchuser/photos", 422, "'~' is not expanded"),
        ("~/photos", 422, "absolute path"),
    ],
)
def test_folder_text_that_names_no_folder_is_a_422(client: TestClient, text: str, status: int, message: str) -> None:
    response = client.post("/jobs", json={"folder": text})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_names_longer_than_the_system_allows_are_a_404(client: TestClient, folder: Path) -> None:
    for text in [str(folder / ("x" * 256)), str(folder / ("é" * 200)), str(folder) + "/é" * 1400]:
        response = client.post("/jobs", json={"folder": text})
        assert response.status_code == 404, response.text
        assert response.json()["detail"].startswith("folder does not exist")


@pytest.mark.parametrize("job_id", [2**31, 2**32 + 7, 2**63 - 1])
def test_ids_past_32_bits_are_looked_up_not_overflowed(client: TestClient, job_id: int) -> None:
    for route in JOB_ROUTES:
        response = _call(client, route, job_id)
        assert response.status_code == 404, (route, response.text)
        assert response.json()["detail"] == f"no job {job_id}"


@pytest.mark.parametrize("job_id", [2**63, 10**30, 0, -1])
def test_ids_outside_the_column_range_are_a_422(client: TestClient, job_id: int) -> None:
    for route in JOB_ROUTES:
        response = _call(client, route, job_id)
        assert response.status_code == 422, (route, response.text)
        assert response.json()["errors"][0]["loc"] == ["path", "job_id"]


def test_cursors_and_labels_are_checked_before_the_database_sees_them(client: TestClient, folder: Path) -> None:
    job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
    results = f"/jobs/{job_id}/results"
    empty = {"items": [], "next_after": None, "next_after_confidence": None}
    assert client.get(results, params={"after": 2**31}).json() == empty
    assert client.get(results, params={"after": 2**63}).status_code == 422
    for confidence in ["nan", "inf", "-1", "1.5"]:
        response = client.get(results, params={"order": "confidence", "after": 1, "after_confidence": confidence})
        assert response.status_code == 422, (confidence, response.text)
        assert response.json()["errors"][0]["loc"] == ["query", "after_confidence"]
    for label in ["cat\u0000", "x" * 33, ""]:
        response = client.get(results, params={"label": label})
        assert response.status_code == 422, (label, response.text)
        assert response.json()["errors"][0]["loc"] == ["query", "label"]
    assert client.get(results, params={"label": "cat"}).status_code == 200


@pytest.fixture
def database_down(api_settings: Settings) -> Iterator[TestClient]:
    """The API over a PostgreSQL that refuses connections (nothing listens on port 1)."""
    settings = api_settings.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/test"})
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_every_route_is_a_503_with_retry_after_while_the_database_is_down(
    database_down: TestClient, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.errors")
    answers = [_call(database_down, route, 1) for route in JOB_ROUTES]
    answers += [database_down.get("/models"), database_down.post("/jobs", json={"folder": str(folder)})]
    for response in answers:
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        assert response.json() == {"detail": "the database is unavailable; try again in 5 s"}
    assert database_down.get("/health").status_code == 200  # liveness does not depend on the database
    readiness = database_down.get("/ready")
    assert readiness.status_code == 503 and readiness.headers["Retry-After"] == "5"
    assert readiness.json() == {"database": "unavailable", "broker": "ok"}


def test_resume_is_a_503_while_the_broker_is_down(api_settings: Settings, folder: Path) -> None:
    with TestClient(create_app(api_settings), headers=AUTH) as client:
        job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
    settings = api_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings), headers=AUTH) as client:
        response = client.post(f"/jobs/{job_id}/resume")
        readiness = client.get("/ready")
    assert readiness.status_code == 503 and readiness.json() == {"database": "ok", "broker": "unavailable"}
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    assert response.json()["detail"].startswith("the broker is unavailable")


def test_ready_when_the_database_and_the_broker_answer(client: TestClient) -> None:
    response = TestClient(client.app).get("/ready")  # no token: a probe sends none
    assert response.status_code == 200 and response.json() == {"database": "ok", "broker": "ok"}


def test_every_error_is_declared_with_one_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in ("/health", "/ready", "/metrics"):  # probes and the scrape, without a token
                continue
            declared = set(operation["responses"])
            assert {"400", "401", "413", "422", "503"} <= declared, (method, path, declared)
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorOut", (method, path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    results = schema["paths"]["/jobs/{job_id}/results"]["get"]
    limit = next(p for p in results["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 1000
    assert "404" in results["responses"]
    assert {"403", "404", "409"} <= set(schema["paths"]["/jobs"]["post"]["responses"])


def test_the_apps_own_errors_follow_the_declared_schema(client: TestClient) -> None:
    for response in [client.get("/jobs/7/results", params={"limit": 5000}), client.get("/jobs/999999"),
                     client.post("/jobs", json={"folder": "relative"}), client.post("/jobs", json={})]:  # fmt: skip
        body = response.json()
        assert response.status_code in (404, 422)
        assert isinstance(body["detail"], str) and set(body) <= {"detail", "errors"}
