"""The web page in a real browser (Debian's Chromium, driven by Playwright) against a real API process, a real
Celery worker, the control plane and PostgreSQL, on real photos: sign in, review by keyboard, submit a folder.

Screenshots go to var/screenshots/. Needs /usr/bin/chromium (`make services` installs it) and playwright.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cli import services
from db.models import Correction, Result
from tests.conftest import CATSDOGS, ROOT, service_env, sessions_for
from tests.factories import copy_photos

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "var" / "screenshots"
FINAL = {"succeeded", "failed", "partially_failed", "cancelled"}
REVIEW_KEYS = ["c", "d", "x", "c", "d"]
REVIEW_LABELS = ["cat", "dog", "neither", "cat", "dog"]


def _photos(split: str, per_class: int, skip: int = 0) -> list[Path]:
    return [
        p for label in ("cat", "dog") for p in sorted((CATSDOGS / split / label).glob("*.jpg"))[skip : skip + per_class]
    ]


@pytest.fixture
def stack(
    tmp_path: Path, fresh_pg_url: str, reference_store: Path, queue_name: str, start_worker: Callable[..., Any]
) -> Iterator[dict[str, Any]]:
    """The API, the sweeper and a worker as processes, sharing a PostgreSQL database of this test's own."""
    token = secrets.token_urlsafe(24)
    env = service_env(fresh_pg_url, reference_store, queue_name, BATCH_SIZE="8", TORCH_THREADS="1",
                      API_TOKEN=token, ALLOWED_ROOTS=json.dumps([str(tmp_path)]),
                      THUMBNAIL_CACHE=str(tmp_path / "thumbnails"))  # fmt: skip
    start_worker(env)
    sweeper = services.start_sweeper(env, tmp_path / "sweeper.log")
    api, url = services.start_api(env, tmp_path / "api.log")
    try:
        yield {"url": url, "token": token, "db": fresh_pg_url}
    finally:
        services.stop(api)
        services.stop(sweeper)


def _finished_job(url: str, token: str, folder: Path) -> int:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        job_id: int = client.post("/jobs", json={"folder": str(folder)}).json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/jobs/{job_id}").json()["status"] not in FINAL:
            assert time.monotonic() < deadline, "the first job did not finish within 60 s"
            time.sleep(0.3)
    return job_id


def test_sign_in_review_by_keyboard_and_watch_a_submitted_folder(stack: dict[str, Any], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make services does)")
    copy_photos(_photos("test", 20), tmp_path / "first")
    (tmp_path / "first" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    copy_photos(_photos("val", 12), tmp_path / "second")
    job_id = _finished_job(stack["url"], stack["token"], tmp_path / "first")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1366, "height": 768})  # a laptop's screen
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(20_000)
        _sign_in(page, stack)
        _review(sync_api.expect, page, stack, job_id)
        _submit_and_watch(sync_api.expect, page, tmp_path / "second")
        browser.close()
    assert errors == []


def _sign_in(page: Any, stack: dict[str, Any]) -> None:
    page.goto(stack["url"])
    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").filter(has_text="wrong token").wait_for()
    page.screenshot(path=str(SCREENSHOTS / "login.png"))
    page.get_by_label("API token").fill(stack["token"])
    page.get_by_label("Your name").fill("Ann Reviewer")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Jobs").wait_for()


def _review(expect: Any, page: Any, stack: dict[str, Any], job_id: int) -> None:
    page.get_by_role("link", name=f"#{job_id}").click()
    page.get_by_role("heading", name=f"Job {job_id}").wait_for()
    expect(page.locator("#grid")).to_have_attribute("aria-busy", "false")
    expect(page.locator("#grid .card")).to_have_count(41)
    _wait_for_thumbnails(page)
    page.get_by_label("Outcome").select_option("failed")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#grid .card")).to_have_count(1)
    expect(page.locator("#grid .card .failure")).to_have_text("Failed: not a recognised image (20 bytes)")
    page.get_by_label("Outcome").select_option("")
    page.get_by_label("Order").select_option("confidence")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(f"{stack['url']}/view/{job_id}?order=confidence")  # a failed one has no confidence
    expect(page.locator("#grid")).to_have_attribute("aria-busy", "false")
    shown = _confidences(page)
    assert len(shown) == 40 and shown == sorted(shown)  # least confident first
    _wait_for_thumbnails(page)
    page.locator('.card[data-index="0"]').focus()
    for key in REVIEW_KEYS:
        page.keyboard.press(key)
    expect(page.locator("#corrections")).to_have_text("5")
    page.keyboard.press("u")  # undoes the last: the fifth
    expect(page.locator("#corrections")).to_have_text("4")
    expect(page.locator("#grid .card .corrected")).to_have_count(4)
    expect(page.locator('.card[data-index="4"]')).to_be_focused()
    page.keyboard.press("ArrowLeft")
    page.screenshot(path=str(SCREENSHOTS / "review.png"))
    page.keyboard.press("Enter")
    expect(page.locator("#large-image")).to_have_attribute("src", f"/results/{_card_id(page, 3)}/thumbnail?size=large")
    page.wait_for_function("() => document.getElementById('large-image').naturalWidth > 0")
    page.screenshot(path=str(SCREENSHOTS / "large-view.png"))
    page.keyboard.press("Escape")
    _check_corrections(stack["db"], job_id, [_card_id(page, i) for i in range(4)])


def _wait_for_thumbnails(page: Any) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid img')].every(img => img.complete && img.naturalWidth > 0)"
    )


def _confidences(page: Any) -> list[float]:
    texts = page.locator("#grid .card .label").all_inner_texts()
    return [float(text.rsplit(" ", 1)[1].rstrip("%")) for text in texts]


def _card_id(page: Any, index: int) -> int:
    return int(page.locator(f'.card[data-index="{index}"]').get_attribute("data-id"))


def _check_corrections(db_url: str, job_id: int, result_ids: list[int]) -> None:
    with sessions_for(db_url)() as session:
        rows = session.execute(
            select(Correction.result_id, Correction.old_label, Correction.new_label, Correction.who)
            .where(Correction.job_id == job_id)
            .order_by(Correction.id)
        ).all()
        models = dict(session.execute(select(Result.id, Result.label).where(Result.id.in_(result_ids))).tuples().all())
    assert [(r.result_id, r.new_label, r.who) for r in rows] == [
        (rid, label, "Ann Reviewer") for rid, label in zip(result_ids, REVIEW_LABELS[:4], strict=True)
    ]
    assert [r.old_label for r in rows] == [models[rid] for rid in result_ids]  # the model's label, kept in result


def _submit_and_watch(expect: Any, page: Any, folder: Path) -> None:
    page.get_by_role("link", name="Jobs").click()
    page.get_by_label("Folder of photos to classify").fill(str(folder))
    page.get_by_role("button", name="Classify folder").click()
    message = page.locator("#submit-message")
    expect(message).to_contain_text("created for")
    job_id = int(message.inner_text().split()[1])
    row = page.locator(f'tr[data-id="{job_id}"]')
    expect(row.locator(".status")).to_have_text("succeeded", timeout=60_000)
    expect(row.locator(".progress-text")).to_have_text("24 / 24")
    assert row.locator("progress").evaluate("bar => [bar.value, bar.max]") == [24, 24]
    page.screenshot(path=str(SCREENSHOTS / "jobs.png"))
