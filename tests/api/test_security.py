"""Authentication, allowed folders and body limits, against a real (SQLite) database and real Redis.

These checks do not depend on the database backend, so they run on SQLite only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import create_app, run
from api.security import InsecureConfigError
from db.models import Batch
from settings import Settings, get_settings
from tests.api.conftest import api_settings_for
from tests.conftest import API_TOKEN, AUTH, ControlledClient, wait_listed
from tests.factories import copy_photos

WRONG_CREDENTIALS = [
    {},
    {"Authorization": "Bearer not-the-token"},
    {"Authorization": f"Bearer {API_TOKEN}x"},
    {"Authorization": f"Basic {API_TOKEN}"},
    {"Authorization": API_TOKEN},
    {"Authorization": b"Bearer caf\xe9"},  # not ASCII: must be a 401, not a 500
]


@pytest.fixture
def root(tmp_path: Path, photos: list[Path]) -> Path:
    """The one allowed root, holding two photos in root/photos."""
    copy_photos(photos[:2], tmp_path / "root" / "photos")
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path, photos: list[Path]) -> Path:
    """A folder of photos next to the root, not inside it."""
    copy_photos(photos[2:4], tmp_path / "outside")
    return tmp_path / "outside"


@pytest.fixture
def settings(sqlite_url: str, model_store: Path, queue_name: str, root: Path) -> Settings:
    return api_settings_for(sqlite_url, model_store, queue_name, [root])


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with ControlledClient(settings) as test_client:
        yield test_client


def test_every_route_but_the_probes_needs_the_token(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    paths = anonymous.get("/openapi.json").json()["paths"]
    routes = {(method.upper(), path) for path, operations in paths.items() for method in operations}
    probes = {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")}
    assert probes <= routes and len(routes) == 17
    for method, template in routes - probes:
        path = template.replace("{job_id}", "1").replace("{result_id}", "1")
        for headers in WRONG_CREDENTIALS:
            body = {"folder": "/tmp"} if method == "POST" else None
            response = anonymous.request(method, path, headers=headers, json=body)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "bearer token" in response.json()["detail"]
            assert API_TOKEN not in response.text
    missing = anonymous.get("/models").json()["detail"]
    assert "Authorization: Bearer <token>" in missing and "API_TOKEN" in missing
    assert anonymous.get("/health").json() == {"status": "ok"}
    assert client.get("/models").status_code == 200


def test_openapi_docs_show_the_bearer_scheme(client: TestClient) -> None:
    schema = TestClient(client.app).get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["HTTPBearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert schema["paths"]["/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_the_api_refuses_to_start_without_a_token(settings: Settings) -> None:
    with pytest.raises(InsecureConfigError, match="API_TOKEN is not set") as refused:
        create_app(settings.model_copy(update={"api_token": None}))
    assert "DEV_MODE=1" in str(refused.value)


def test_catsdogs_api_exits_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file here
    monkeypatch.delenv("API_TOKEN", raising=False)
    monkeypatch.delenv("DEV_MODE", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit, match="catsdogs-api: API_TOKEN is not set.*DEV_MODE=1"):
            run()
    finally:
        get_settings.cache_clear()


def test_dev_mode_turns_authentication_off_and_warns_at_every_start(
    settings: Settings, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.security")
    app = create_app(settings.model_copy(update={"api_token": None, "dev_mode": True, "allowed_roots": []}))
    for _ in range(2):
        with TestClient(app) as anonymous:
            assert anonymous.post("/jobs", json={"folder": str(outside)}).status_code == 201  # any folder
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("authentication is OFF" in w for w in warnings) == 2
    assert sum("jobs may read ANY folder" in w for w in warnings) == 2


def test_without_allowed_roots_every_folder_is_refused(
    settings: Settings, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.security")
    with TestClient(create_app(settings.model_copy(update={"allowed_roots": []})), headers=AUTH) as client:
        response = client.post("/jobs", json={"folder": str(root / "photos")})
    assert response.status_code == 403
    assert response.json()["detail"].startswith("ALLOWED_ROOTS is not set")
    assert "ALLOWED_ROOTS is not set: every job will be refused" in caplog.text


def test_folders_outside_the_allowed_roots_are_refused(client: TestClient, root: Path, outside: Path) -> None:
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    (root.parent / "root-sibling").mkdir()
    refused = [
        outside,
        root / ".." / "outside",
        root / "photos" / ".." / ".." / "outside",
        root / "escape",  # a symlink inside the root that leads out of it
        root / "loop",
        root.parent / "root-sibling",  # shares the root's name as a prefix only
        Path("/etc"),
        Path("/no/such/folder"),  # refused before its existence is checked
    ]
    for folder in refused:
        response = client.post("/jobs", json={"folder": str(folder)})
        assert response.status_code == 403, (folder, response.text)
        assert response.json()["detail"] == f"folder {folder} is outside the allowed roots ({root}); see ALLOWED_ROOTS"
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(Batch)).all() == []
    assert client.post("/jobs", json={"folder": str(root / "photos" / ".." / "photos")}).status_code == 201


def test_listing_leaves_out_symlinks_that_lead_outside_and_survives_loops(
    client: TestClient, root: Path, outside: Path
) -> None:
    folder = root / "photos"
    inside = sorted(folder.iterdir())
    (folder / "stolen.jpg").symlink_to(next(outside.iterdir()))
    (folder / "outside-dir").symlink_to(outside, target_is_directory=True)  # symlinked folders are not followed
    (folder / "alias.jpg").symlink_to(inside[0])  # stays inside the root: kept
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "ping.jpg").symlink_to(folder / "pong.jpg")
    (folder / "pong.jpg").symlink_to(folder / "ping.jpg")
    job = client.post("/jobs", json={"folder": str(folder)}).json()
    job = wait_listed(client, job["id"])
    assert job["counts"]["total"] == 3 and job["listing_complete"] and job["error"] is None
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        paths = [p for batch in session.scalars(select(Batch).where(Batch.job_id == job["id"])) for p in batch.paths]
    assert sorted(Path(p).name for p in paths) == sorted(["alias.jpg", inside[0].name, inside[1].name])


def test_oversized_bodies_are_refused(client: TestClient) -> None:
    response = client.post("/jobs", json={"folder": "/" + "x" * 64 * 1024})
    assert response.status_code == 413
    assert response.json()["detail"] == "request body larger than 65536 bytes"
    chunks = iter([b'{"folder": "/', b"x" * 40_000, b"x" * 40_000, b'"}'])  # no Content-Length: counted as it comes
    response = client.post("/jobs", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert client.post("/jobs", json={"folder": "/" + "x" * 5000}).status_code == 422  # under the limit: validated


def test_the_token_is_never_logged_or_returned(
    settings: Settings, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings), headers=AUTH) as client:
        job = client.post("/jobs", json={"folder": str(root / "photos")})
        responses = [
            job,
            client.get(f"/jobs/{job.json()['id']}"),
            client.get(f"/jobs/{job.json()['id']}/summary"),
            client.get("/models"),
            client.post("/jobs", json={"folder": "/etc"}),
            client.get("/openapi.json"),
            TestClient(client.app).get("/models", headers={"Authorization": "Bearer wrong"}),
        ]
    for response in responses:
        assert API_TOKEN not in response.text and API_TOKEN not in str(response.headers)
    assert caplog.records and API_TOKEN not in caplog.text
    assert API_TOKEN not in repr(settings) and API_TOKEN not in str(settings)


def test_a_token_in_the_url_is_refused_and_never_reaches_the_access_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.api.test_large_folder import serving

    access = logging.getLogger("uvicorn.access")
    with serving(create_app(settings), log_level="info") as url:
        access.addHandler(caplog.handler)
        try:
            answers = [httpx.get(f"{url}/models", params={name: API_TOKEN}) for name in ("token", "access_token")]
            answers.append(httpx.get(f"{url}/jobs/1?x=1&Token={API_TOKEN}"))
        finally:
            access.removeHandler(caplog.handler)
    for response in answers:
        assert response.status_code == 401
        assert response.json()["detail"].startswith("a token in the URL is not accepted")
    lines = [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]
    assert len(lines) == 3 and all("=***" in line for line in lines), lines
    assert API_TOKEN not in caplog.text
