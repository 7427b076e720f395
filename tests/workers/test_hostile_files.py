"""Hostile files met by real workers: swapped for symlinks after listing, crafted, fuzzed, mixed with photos.

Every good photo must be classified; every hostile file must fail alone with a clear reason, or be
counted as skipped, and no file outside the allowed folders may be read.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from classifier.files import OUTSIDE
from tests.conftest import CATSDOGS, service_env, wait_listed
from tests.factories import copy_photos, fuzz_seeds, jpeg_with_mistyped_exif, mutate, tiff16_with_rational_strip_offset
from tests.workers.test_end_to_end import api_client, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


def _results(client: TestClient, job_id: int) -> dict[str, dict[str, Any]]:
    items = client.get(f"/jobs/{job_id}/results", params={"limit": 1000}).json()["items"]
    return {item["path"]: item for item in items}


def test_files_swapped_for_symlinks_after_listing_are_never_read(
    start_worker: Callable[..., Any], sqlite_url: str, reference_store: Path, queue_name: str, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    photos = sorted((CATSDOGS / "test" / "cat").glob("*.jpg"))[:8]
    folder = root / "photos"
    copy_photos(photos[:4], folder)
    copy_photos(photos[4:6], folder / "sub")
    copy_photos(photos[4:6], outside)  # the same names, outside the roots
    with api_client(sqlite_url, reference_store, queue_name, [root]) as client:
        job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        wait_listed(client, job_id)  # no worker yet
        swapped = _swap_after_listing(folder, outside)
        start_worker(service_env(sqlite_url, reference_store, queue_name))
        job = wait_for(client, job_id, timeout=180)
        results = _results(client, job_id)
    assert job["counts"]["total"] == 6 and len(results) == 6
    for path, reason in swapped.items():
        assert results[path]["status"] == "failed" and results[path]["error"] == reason, results[path]
    untouched = set(results) - set(swapped)
    assert untouched == {str(folder / photos[3].name)} and results[str(folder / photos[3].name)]["label"] == "cat"


def _swap_after_listing(folder: Path, outside: Path) -> dict[str, str]:
    """Replace listed files and a listed folder, as an attacker with write access to the folder would."""
    names = sorted(p.name for p in folder.glob("*.jpg"))
    targets = {names[0]: outside / "x.jpg", names[1]: Path("/etc/passwd"), names[2]: Path("/dev/zero")}
    (outside / "x.jpg").write_bytes((outside / sorted(os.listdir(outside))[0]).read_bytes())
    for name, target in targets.items():
        (folder / name).unlink()
        (folder / name).symlink_to(target)
    shutil.rmtree(folder / "sub")
    (folder / "sub").symlink_to(outside, target_is_directory=True)  # every file below it now leads outside
    swapped = {str(folder / name): OUTSIDE for name in targets}
    return swapped | {str(folder / "sub" / name): OUTSIDE for name in sorted(os.listdir(outside)) if name != "x.jpg"}


def test_a_fifo_swapped_in_after_listing_fails_alone_without_blocking(
    start_worker: Callable[..., Any], sqlite_url: str, reference_store: Path, queue_name: str, tmp_path: Path
) -> None:
    photos = sorted((CATSDOGS / "test" / "dog").glob("*.jpg"))[:3]
    folder = tmp_path / "root" / "photos"
    copy_photos(photos, folder)
    with api_client(sqlite_url, reference_store, queue_name, [tmp_path / "root"]) as client:
        job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        wait_listed(client, job_id)
        (folder / photos[0].name).unlink()
        os.mkfifo(folder / photos[0].name)
        start_worker(service_env(sqlite_url, reference_store, queue_name))
        job = wait_for(client, job_id, timeout=180)
        results = _results(client, job_id)
    assert job["counts"] == {"total": 3, "done": 2, "failed": 1, "remaining": 0, "skipped": 0, "reused": 0}
    assert results[str(folder / photos[0].name)]["error"] == "not a regular file"


FUZZED = 40


def test_crafted_and_fuzzed_files_in_one_batch_spare_every_photo(
    start_worker: Callable[..., Any],
    pg_url: str,
    reference_store: Path,
    queue_name: str,
    tmp_path: Path,
    reliability_report: Callable[..., None],
) -> None:
    photos = (
        sorted((CATSDOGS / "test" / "cat").glob("*.jpg"))[:10] + sorted((CATSDOGS / "test" / "dog").glob("*.jpg"))[:10]
    )
    folder = tmp_path / "root" / "mixed"
    good = copy_photos(photos, folder)
    hostile = _hostile_files(folder / "hostile", photos[0])
    with api_client(pg_url, reference_store, queue_name, [tmp_path / "root"]) as client:
        start_worker(service_env(pg_url, reference_store, queue_name))  # 62 files: one batch of 64
        job_id = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        job = wait_for(client, job_id, timeout=180)
        results = _results(client, job_id)
        summary = client.get(f"/jobs/{job_id}/summary").json()
    listed = [p for p in hostile if str(p) in results]
    reliability_report(images=len(results), bad_inputs=len(hostile), lost=len(good) + len(listed) - len(results))
    for photo in good:
        assert results[str(photo)]["status"] == "ok", results[str(photo)]
    for path in listed:
        row = results[str(path)]
        assert row["status"] == "ok" or row["error"], row  # a mutation may still decode; a failure says why
    assert all(results[str(p)]["status"] == "failed" for p in hostile[:2])  # the two crafted files
    assert results[str(hostile[0])]["error"].startswith("cannot decode: error: ")  # struct.error
    assert results[str(hostile[1])]["error"].startswith("cannot decode: TypeError: ")
    assert job["counts"]["skipped"] == summary["skipped"]["counts"].get("extension_not_allowed", 0) == 1
    assert len(results) == len(good) + len(hostile) - 1


def _hostile_files(folder: Path, photo: Path) -> list[Path]:
    """Two crafted files that once failed a whole batch, FUZZED seeded mutations of every format, a text file."""
    folder.mkdir(parents=True)
    files = [folder / "crafted-exif.jpg", folder / "crafted-16bit.tif"]
    files[0].write_bytes(jpeg_with_mistyped_exif())
    files[1].write_bytes(tiff16_with_rational_strip_offset())
    seeds, rng = fuzz_seeds(photo), random.Random(7)
    suffixes = {"jpeg": ".jpg", "png": ".png", "png16": ".png", "tiff": ".tif", "tiff16": ".tif",
                "tiff_float": ".tiff", "webp": ".webp", "gif": ".gif"}  # fmt: skip
    for i in range(FUZZED):
        name = sorted(seeds)[i % len(seeds)]
        files.append(folder / f"fuzz-{i:03}{suffixes[name]}")
        files[-1].write_bytes(mutate(seeds[name], rng))
    (folder / "readme.txt").write_text("left out, and counted")
    files.append(folder / "readme.txt")
    return files
