"""Listing jobs, corrections and thumbnails over HTTP, against a real database (PostgreSQL and SQLite) and
real photos (no worker: results are recorded as a worker records them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from classifier.outcomes import Outcome
from db.models import Correction, Job, JobStatus
from settings import Settings
from tests.conftest import ControlledClient, sessions_for
from tests.factories import copy_photos, recorded_job

CONFIDENCES = [0.91, 0.62, 0.55, 0.99, 0.7, 0.62]


@pytest.fixture
def client(api_settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    settings = api_settings.model_copy(update={"thumbnail_cache": tmp_path / "thumbnails"})
    with ControlledClient(settings) as test_client:
        yield test_client


@pytest.fixture
def root(tmp_path: Path, photos: list[Path]) -> Path:
    copy_photos(photos[: len(CONFIDENCES)], tmp_path / "root")
    return (tmp_path / "root").resolve()


@pytest.fixture
def job(client: TestClient, db_url: str, root: Path) -> dict[str, Any]:
    """A finished job of real photos in `root` (its only allowed folder), and one that failed."""
    paths = sorted(str(p) for p in root.iterdir())
    outcomes = [Outcome(p, ("cat", "dog")[i % 2], c) for i, (p, c) in enumerate(zip(paths, CONFIDENCES, strict=True))]
    outcomes.append(Outcome(str(root / "gone.jpg"), error="file not found"))
    with sessions_for(db_url).begin() as session:
        job_id = recorded_job(session, "v1", outcomes, folder=str(root), roots=[str(root)])
    return {"id": job_id, "results": _results(client, job_id)}


def _results(client: TestClient, job_id: int, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/jobs/{job_id}/results", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_jobs_are_listed_newest_first_with_a_status_filter_and_keyset_pages(
    client: TestClient, db_url: str, job: dict[str, Any]
) -> None:
    with sessions_for(db_url).begin() as session:
        failed = recorded_job(session, "v1", [Outcome("/x/a.jpg", error="file not found")])
        newest = recorded_job(session, "v1", [Outcome("/x/b.jpg", "cat", 0.8)])
    first = client.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["items"]] == [newest, failed] and first["next_before"] == failed
    assert first["items"][0] == client.get(f"/jobs/{newest}").json()  # the same JobOut as everywhere
    rest = client.get("/jobs", params={"limit": 2, "before": first["next_before"]}).json()
    assert job["id"] in [j["id"] for j in rest["items"]]
    assert [j["id"] for j in client.get("/jobs", params={"status": "failed"}).json()["items"]][0] == failed
    everything = client.get("/jobs", params={"status": "partially_failed", "limit": 200}).json()
    assert all(j["status"] == "partially_failed" for j in everything["items"]) and everything["next_before"] is None
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_a_correction_shows_beside_the_models_label_and_undo_restores_it(
    client: TestClient, db_url: str, job: dict[str, Any]
) -> None:
    first, second = job["results"][0], job["results"][1]
    assert (first["label"], first["corrected_label"]) == ("cat", None)
    response = client.post(f"/results/{first['id']}/correction", json={"label": "dog", "who": "ann"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["result"] | {"corrected_label": None} == first and body["result"]["corrected_label"] == "dog"
    assert body["job_corrections"] == 1
    client.post(f"/results/{first['id']}/correction", json={"label": "neither"})
    client.post(f"/results/{second['id']}/correction", json={"label": "dog"})
    assert client.get(f"/jobs/{job['id']}").json()["corrections"] == 3
    assert [r["id"] for r in _results(client, job["id"], corrected=True)] == [first["id"], second["id"]]
    assert first["id"] not in [r["id"] for r in _results(client, job["id"], corrected=False)]
    assert _results(client, job["id"])[0]["corrected_label"] == "neither"

    undone = client.delete(f"/results/{first['id']}/correction").json()
    assert (undone["result"]["corrected_label"], undone["job_corrections"]) == ("dog", 2)
    assert client.delete(f"/results/{first['id']}/correction").json()["result"]["corrected_label"] is None
    missing = client.delete(f"/results/{first['id']}/correction")
    assert missing.status_code == 404 and missing.json()["detail"] == f"result {first['id']} has no correction to undo"
    with sessions_for(db_url)() as session:
        rows = session.execute(
            select(Correction.result_id, Correction.old_label, Correction.new_label, Correction.who).where(
                Correction.job_id == job["id"]
            )
        )
        assert rows.all() == [(second["id"], "dog", "dog", "api")]  # the model said dog; who defaults to "api"


def test_corrections_of_unknown_results_and_labels_are_refused(client: TestClient, job: dict[str, Any]) -> None:
    assert client.post("/results/999999999/correction", json={"label": "cat"}).json()["detail"] == "no result 999999999"
    assert client.delete("/results/999999999/correction").status_code == 404
    bad = client.post(f"/results/{job['results'][0]['id']}/correction", json={"label": "horse"})
    assert bad.status_code == 422 and "label" in bad.json()["detail"]
    assert client.get(f"/jobs/{job['id']}").json()["corrections"] == 0


def test_results_least_confident_first_page_by_confidence_and_id(client: TestClient, job: dict[str, Any]) -> None:
    seen, params = [], {"order": "confidence", "limit": 2}
    while True:
        page = client.get(f"/jobs/{job['id']}/results", params=params).json()
        seen += page["items"]
        if page["next_after"] is None:
            break
        params |= {"after": page["next_after"], "after_confidence": page["next_after_confidence"]}
    assert [r["confidence"] for r in seen] == sorted(CONFIDENCES)  # the failed one, without a confidence, is left out
    low = _results(client, job["id"], order="confidence", max_confidence=0.62, label="dog")
    assert [r["confidence"] for r in low] == [0.62, 0.62]
    assert client.get(f"/jobs/{job['id']}/results", params={"order": "size"}).status_code == 422


def test_a_thumbnail_is_a_cached_jpeg(client: TestClient, job: dict[str, Any]) -> None:
    url = f"/results/{job['results'][0]['id']}/thumbnail"
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg" and response.content[:2] == b"\xff\xd8"
    assert response.headers["cache-control"] == "private, max-age=600"
    again = client.get(url, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    large = client.get(url, params={"size": "large"})
    assert large.status_code == 200 and large.headers["etag"] != response.headers["etag"]
    assert client.get(url, params={"size": "huge"}).status_code == 422


def test_a_thumbnail_that_cannot_be_made_says_why(
    client: TestClient, db_url: str, job: dict[str, Any], root: Path, photos: list[Path]
) -> None:
    gone = job["results"][-1]
    response = client.get(f"/results/{gone['id']}/thumbnail")
    assert (
        response.status_code == 404 and response.json()["detail"] == f"no thumbnail of {gone['path']}: file not found"
    )
    notes = root / "notes.jpg"
    notes.write_text("not a photo")
    outside = copy_photos(photos[:1], root.parent / "outside")[0]
    with sessions_for(db_url).begin() as session:
        other = recorded_job(session, "v1", [Outcome(str(notes), "cat", 0.5), Outcome(str(outside), "dog", 0.5)],
                             roots=[str(root)])  # fmt: skip
    unreadable, elsewhere = _results(client, other)
    response = client.get(f"/results/{unreadable['id']}/thumbnail")
    assert response.status_code == 422 and response.json()["detail"].endswith(": not a recognised image")
    response = client.get(f"/results/{elsewhere['id']}/thumbnail")
    assert response.status_code == 403 and response.json()["detail"].endswith(": outside the allowed folders")
    assert client.get("/results/999999999/thumbnail").json()["detail"] == "no result 999999999"


def test_a_job_in_development_mode_may_open_any_file(client: TestClient, db_url: str, root: Path) -> None:
    with sessions_for(db_url).begin() as session:
        job_id = recorded_job(session, "v1", [Outcome(str(next(root.iterdir())), "cat", 0.5)], roots=None)
        assert session.get(Job, job_id).status == JobStatus.SUCCEEDED  # type: ignore[union-attr]
    result = _results(client, job_id)[0]
    assert client.get(f"/results/{result['id']}/thumbnail").status_code == 200
