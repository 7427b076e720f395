"""GET /corrections/export, `catsdogs corrections export --database`, and the results' `uncertain` flag and
filter, over HTTP against a real database of the test's own (PostgreSQL and SQLite)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from classifier import store
from classifier.model import build_model
from classifier.outcomes import Outcome
from cli.main import main as catsdogs
from settings import get_settings
from tests.api.conftest import api_settings_for
from tests.conftest import AUTH, sessions_for
from tests.factories import recorded_job

CONFIDENCES = [0.5, 0.79, 0.8, 0.95]


@pytest.fixture(params=["postgresql", "sqlite"])
def own_db_url(request: pytest.FixtureRequest) -> str:
    """A database of this test's own: the model versions it registers are these tests' only."""
    url: str = request.getfixturevalue("fresh_pg_url" if request.param == "postgresql" else "sqlite_url")
    return url


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """v1, whose card has an uncertainty threshold of 0.8, and v2, published before thresholds existed."""
    torch.manual_seed(0)
    path = tmp_path / "models"
    store.publish(build_model(), store.base_meta(uncertainty={"threshold": 0.8, "target_accuracy": 0.97}), path)
    store.publish(build_model(), store.base_meta(), path)
    return path


@pytest.fixture
def client(own_db_url: str, models: Path, queue_name: str, allowed_roots: list[Path]) -> Iterator[TestClient]:
    settings = api_settings_for(own_db_url, models, queue_name, allowed_roots)
    with TestClient(create_app(settings), headers=AUTH) as test_client:  # start-up registers v1 and v2
        yield test_client


def _job(db_url: str, version: str, confidences: list[float], failed: int = 0, prefix: str = "/photos") -> int:
    outcomes = [Outcome(f"{prefix}/{i}.jpg", ("cat", "dog")[i % 2], c) for i, c in enumerate(confidences)]
    outcomes += [Outcome(f"{prefix}/bad{i}.jpg", error="file not found") for i in range(failed)]
    with sessions_for(db_url).begin() as session:
        return recorded_job(session, version, outcomes)


def _results(client: TestClient, job_id: int, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/jobs/{job_id}/results", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_results_below_their_models_threshold_are_uncertain(client: TestClient, own_db_url: str) -> None:
    calibrated = _job(own_db_url, "v1", CONFIDENCES, failed=1)
    shown = _results(client, calibrated)
    assert [(r["confidence"], r["uncertain"]) for r in shown] == [
        (0.5, True), (0.79, True), (0.8, False), (0.95, False), (None, False),
    ]  # fmt: skip
    assert [r["confidence"] for r in _results(client, calibrated, uncertain=True)] == [0.5, 0.79]
    assert [r["confidence"] for r in _results(client, calibrated, uncertain=False)] == [0.8, 0.95, None]
    least_first = _results(client, calibrated, uncertain=True, order="confidence", limit=1)
    assert [r["confidence"] for r in least_first] == [0.5]
    older = _job(own_db_url, "v2", [0.85, 0.95])  # no threshold in its card: the fallback, 0.9
    assert [r["uncertain"] for r in _results(client, older)] == [True, False]
    assert client.get(f"/jobs/{older}/results", params={"uncertain": "maybe"}).status_code == 422


def test_corrections_export_as_training_csv(client: TestClient, own_db_url: str, tmp_path: Path) -> None:
    first = _job(own_db_url, "v1", CONFIDENCES, prefix="/photos/one")
    second = _job(own_db_url, "v1", [0.9, 0.7], prefix='/photos/two, "quoted"')
    ids = [r["id"] for r in _results(client, first)]
    other = [r["id"] for r in _results(client, second)]
    for result_id, label in [(ids[0], "dog"), (ids[1], "neither"), (ids[2], "dog"), (ids[2], "cat"), (other[1], "dog")]:
        assert client.post(f"/results/{result_id}/correction", json={"label": label}).status_code == 201
    assert client.delete(f"/results/{ids[2]}/correction").status_code == 200  # dog again

    response = client.get("/corrections/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert (response.headers["x-corrections-exported"], response.headers["x-corrections-left-out"]) == ("3", "1")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["path"], r["label"], r["job_id"], r["result_id"]) for r in rows] == [
        ("/photos/one/0.jpg", "dog", str(first), str(ids[0])),
        ("/photos/one/2.jpg", "dog", str(first), str(ids[2])),
        ('/photos/two, "quoted"/1.jpg', "dog", str(second), str(other[1])),
    ]
    only = client.get("/corrections/export", params={"job": [second]})
    assert [r["job_id"] for r in csv.DictReader(io.StringIO(only.text))] == [str(second)]
    assert only.headers["x-corrections-left-out"] == "0"
    assert client.get("/corrections/export", params={"jobs": second}).status_code == 422  # misspelt: refused
    assert client.get("/corrections/export", params={"job": 0}).status_code == 422
    assert client.get("/corrections/export", headers={"Authorization": "Bearer wrong"}).status_code == 401

    # The command line, reading the database directly, writes the same file.
    output = tmp_path / "corrections.csv"
    with _environment(DATABASE_URL=own_db_url):
        assert catsdogs(["corrections", "export", "--database", "--output", str(output)]) == 0
    assert output.read_text() == response.text


class _environment:
    """Settings from these environment variables while inside (get_settings is cached)."""

    def __init__(self, **values: str) -> None:
        self.patch = pytest.MonkeyPatch()
        self.values = values

    def __enter__(self) -> None:
        for name, value in self.values.items():
            self.patch.setenv(name, value)
        get_settings.cache_clear()

    def __exit__(self, *exc_info: Any) -> None:
        self.patch.undo()
        get_settings.cache_clear()
