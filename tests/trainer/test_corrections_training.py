"""Corrections feed training: made by keyboard on the web page (in Chromium), exported with `catsdogs corrections
export`, trained on with `trainer fit --extra-data ... --init-from v1`, and named in the new model card. Real
photos, the shipped reference model, PostgreSQL; and add_extra_train on its own."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api.main import create_app
from classifier import store
from classifier.outcomes import Outcome
from classifier.store import file_sha256
from db.models import ModelVersion
from db.registry import register_missing
from settings import get_settings
from tests.api.conftest import api_settings_for
from tests.api.test_browser import CHROMIUM
from tests.api.test_large_folder import serving
from tests.conftest import API_TOKEN, AUTH, ROOT, sessions_for
from tests.factories import recorded_job
from trainer.cli import main as trainer
from trainer.data import add_extra_train

CORRECTIONS = 50
NEITHER = 2  # of the 50, marked neither: left out


def test_extra_samples_join_train_only_and_replace_the_labels_of_the_same_files(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.jpg" for name in ("a", "b", "c", "v", "t")}
    for path in files.values():
        path.touch()
    samples = {"train": [(str(files["a"]), 0), (str(files["b"]), 0)], "val": [(str(files["v"]), 0)],
               "test": [(str(files["t"]), 1)]}  # fmt: skip
    extra = [(str(files["b"]), 0), (str(files["b"]), 1), (str(files["c"]), 1), (str(files["v"]), 1),
             (str(tmp_path / "." / "t.jpg"), 0)]  # fmt: skip
    merged, use = add_extra_train(samples, extra)
    assert merged["train"] == [(str(files["a"]), 0), (str(files["b"]), 1), (str(files["c"]), 1)]  # the last b row
    assert merged["val"] == samples["val"] and merged["test"] == samples["test"]
    assert (use.used, use.replaced, use.held_out) == ([(str(files["b"]), 1), (str(files["c"]), 1)], 1, 2)


@pytest.mark.slow
def test_corrections_made_on_the_page_fine_tune_a_published_model(
    tmp_path: Path, data_dir: Path, fresh_pg_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    assert store.install_reference(ROOT / "models" / "reference", models) == "v1"
    # A finished job of 51 real photos that the model labelled cat: 25 dogs of train are mistakes, and one
    # photo of val, which must not be trained on (the reported metrics would then flatter the model).
    photos = [
        *sorted((data_dir / "train" / "cat").glob("*.jpg"))[-25:],
        *sorted((data_dir / "train" / "dog").glob("*.jpg"))[-25:],
        data_dir / "val" / "dog" / "dog.9000.jpg",
    ]
    truth = {str(p): p.parent.name for p in photos}  # fmt: skip
    with sessions_for(fresh_pg_url).begin() as session:
        register_missing(session=session, metas=store.read_all_meta(models))
        job_id = recorded_job(session, "v1", [Outcome(str(p), "cat", 0.6) for p in photos])

    settings = api_settings_for(fresh_pg_url, models, queue_name, [tmp_path, data_dir])
    output = tmp_path / "corrections.csv"
    with serving(create_app(settings)) as url, httpx.Client(base_url=url, headers=AUTH) as http:
        results = http.get(f"/jobs/{job_id}/results", params={"limit": 100}).json()["items"]
        assert len(results) == len(photos) and all(r["uncertain"] for r in results)  # 0.6, below v1's threshold
        wanted = [
            (r["id"], "neither" if i < NEITHER else truth[r["path"]]) for i, r in enumerate(results[-CORRECTIONS:])
        ]
        _correct_through_the_page(url, job_id, wanted)  # the val photo and the last 49 of train
        exported = subprocess.run(
            [sys.executable, "-m", "cli.main", "corrections", "export", "--job", str(job_id), "--output", str(output),
             "--api", url], cwd=ROOT, env={**os.environ, "API_TOKEN": API_TOKEN}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert f"exported {CORRECTIONS - NEITHER} corrected results" in exported.stderr
    assert f"left out {NEITHER} marked neither" in exported.stderr
    with output.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == CORRECTIONS - NEITHER and all(truth[r["path"]] == r["label"] for r in rows)

    monkeypatch.setenv("DATABASE_URL", fresh_pg_url)
    get_settings.cache_clear()
    try:
        argv = ["fit", "--data", str(data_dir), "--extra-data", str(output), "--init-from", "v1",
                "--model-store", str(models), "--runs-dir", str(tmp_path / "runs"), "--max-epochs", "1",
                "--limit-per-class", "4", "--batch-size", "16", "--accelerator", "cpu", "--num-workers", "0",
                "--lr", "1e-4"]  # fmt: skip
        assert trainer(argv) == 0
    finally:
        get_settings.cache_clear()

    meta = store.read_meta(models, "v2")
    corrections = meta["corrections"]
    held_out = sum(1 for r in rows if "/val/" in r["path"])
    assert held_out == 1  # the val photo was corrected, exported, and then kept out of training
    assert corrections["samples"] == CORRECTIONS - NEITHER - held_out
    assert corrections["left_out_val_or_test"] == held_out and corrections["jobs"] == [job_id]
    assert corrections["by_label"] == {
        label: sum(1 for r in rows if r["label"] == label and "/val/" not in r["path"]) for label in ("cat", "dog")
    }
    assert corrections["files"] == [{"path": str(output.resolve()), "sha256": file_sha256(output), "rows": len(rows)}]
    assert meta["training"]["class_counts"]["train"] == {"cat": 4 + corrections["by_label"]["cat"],
                                                         "dog": 4 + corrections["by_label"]["dog"]}  # fmt: skip
    assert meta["training"]["class_counts"]["val"] == {"cat": 4, "dog": 4}  # val and test as without corrections
    assert meta["training"]["initialised_from"]["version"] == "v1"
    assert 0 < meta["uncertainty"]["threshold"] <= 1 and meta["uncertainty"]["split"] == "val"
    with sessions_for(fresh_pg_url)() as session:  # registered, with its card
        registered = session.scalars(select(ModelVersion).where(ModelVersion.version == "v2")).one()
        assert json.loads(json.dumps(registered.meta))["corrections"] == corrections


def _correct_through_the_page(url: str, job_id: int, wanted: list[tuple[int, str]]) -> None:
    """Sign in, open the job's results, and give each result its label by keyboard, in page order."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make services does)")
    keys = {"cat": "c", "dog": "d", "neither": "x"}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.set_default_timeout(20_000)
        page.goto(url)
        page.get_by_label("API token").fill(API_TOKEN)
        page.get_by_label("Your name").fill("trainer test")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Jobs").wait_for()
        page.goto(f"{url}/view/{job_id}")
        page.locator(f'.card[data-id="{wanted[0][0]}"]').focus()
        for result_id, label in wanted:  # each key moves the focus on, to the next page after the last card
            sync_api.expect(page.locator(f'.card[data-id="{result_id}"]')).to_be_focused()
            page.keyboard.press(keys[label])
        sync_api.expect(page.locator("#corrections")).to_have_text(str(len(wanted)))
        browser.close()
