"""The web page's sign-in, session cookie and CSRF defence, against a real (SQLite) database and real Redis.

Like tests/api/test_security.py, these do not depend on the database backend, so they run on SQLite only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import security
from api.security import CSRF_HEADER, SESSION_COOKIE, SignInThrottle
from settings import Settings
from tests.api.conftest import api_settings_for
from tests.conftest import API_TOKEN, ControlledClient
from tests.factories import copy_photos


@pytest.fixture
def folder(tmp_path: Path, photos: list[Path]) -> Path:
    copy_photos(photos[:2], tmp_path / "photos")
    return tmp_path / "photos"


@pytest.fixture
def app_client(sqlite_url: str, model_store: Path, queue_name: str, tmp_path: Path) -> Iterator[TestClient]:
    """The API with the control plane running, and no bearer token sent: a browser's view of it."""
    settings = api_settings_for(sqlite_url, model_store, queue_name, [tmp_path])
    with ControlledClient(settings) as controlled:
        browser = TestClient(controlled.app)
        yield browser
        browser.close()


def _sign_in(client: TestClient) -> str:
    response = client.post("/login", json={"token": API_TOKEN})
    assert response.status_code == 200, response.text
    csrf: str = response.json()["csrf_token"]
    return csrf


def test_the_page_asks_for_the_token_until_signed_in(app_client: TestClient) -> None:
    page = app_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="login"' in page.text and '<label for="token">' in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert app_client.get("/jobs").status_code == 401
    assert app_client.get("/static/app.css").status_code == 200


def test_signing_in_sets_a_strict_http_only_cookie_and_gives_the_page_its_csrf_token(app_client: TestClient) -> None:
    wrong = app_client.post("/login", json={"token": "not-the-token"})
    assert wrong.status_code == 401 and "wrong token" in wrong.json()["detail"]
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    response = app_client.post("/login", json={"token": API_TOKEN})
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and API_TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie and "Max-Age=43200" in cookie
    page = app_client.get("/")
    assert 'id="jobs"' in page.text and 'id="submit-job"' in page.text
    csrf = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert csrf is not None and csrf.group(1) == response.json()["csrf_token"]
    assert app_client.get("/jobs").status_code == 200
    assert 'id="grid"' in app_client.get("/view/1").text


def test_an_address_that_keeps_sending_wrong_tokens_is_shut_out_for_a_while(app_client: TestClient) -> None:
    for _ in range(10):
        assert app_client.post("/login", json={"token": "guess"}).status_code == 401
    refused = app_client.post("/login", json={"token": API_TOKEN})  # even the right one, until the window passes
    assert refused.status_code == 429 and 0 < int(refused.headers["retry-after"]) <= 300
    assert app_client.get("/jobs", headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 200


def test_the_sign_in_throttle_forgets_failures_older_than_its_window() -> None:
    throttle = SignInThrottle(limit=2, window=10.0, addresses=2)
    throttle.failed("a", now=0.0)
    assert throttle.retry_after("a", now=1.0) is None
    throttle.failed("a", now=1.0)
    assert throttle.retry_after("a", now=2.0) == 8.0
    assert throttle.retry_after("a", now=10.5) is None  # the first failure has aged out
    throttle.failed("b", now=3.0)
    throttle.failed("c", now=3.0)
    assert list(throttle.failures) == ["b", "c"]  # the oldest address is forgotten beyond `addresses`


def test_the_cookie_is_secure_over_https(app_client: TestClient) -> None:
    secure = TestClient(app_client.app, base_url="https://testserver")
    assert "Secure" in secure.post("/login", json={"token": API_TOKEN}).headers["set-cookie"]


def test_a_change_by_cookie_needs_the_csrf_token(app_client: TestClient, folder: Path) -> None:
    csrf = _sign_in(app_client)
    body = {"folder": str(folder)}
    missing = app_client.post("/jobs", json=body)
    assert missing.status_code == 403 and CSRF_HEADER in missing.json()["detail"]
    assert app_client.post("/jobs", json=body, headers={CSRF_HEADER: "0" * 64}).status_code == 403
    # What a form on another site can send: the cookie (were SameSite ignored), no custom header.
    form = app_client.post(
        "/jobs", content=f"folder={folder}", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 403
    created = app_client.post("/jobs", json=body, headers={CSRF_HEADER: csrf})
    assert created.status_code == 201, created.text
    assert app_client.get(f"/jobs/{created.json()['id']}").status_code == 200  # reading needs no CSRF token


def test_a_csrf_token_belongs_to_its_session(app_client: TestClient, folder: Path) -> None:
    old = _sign_in(app_client)
    _sign_in(app_client)  # a new session: a new cookie
    refused = app_client.post("/jobs", json={"folder": str(folder)}, headers={CSRF_HEADER: old})
    assert refused.status_code == 403


def test_a_forged_expired_or_signed_out_session_is_refused(
    app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sign_in(app_client)
    cookie = app_client.cookies[SESSION_COOKIE]
    issued, nonce, signature = cookie.split(".")
    for forged in [f"{int(issued) + 1}.{nonce}.{signature}", f"{issued}.{nonce}.{'0' * 64}", "garbage", ""]:
        app_client.cookies.set(SESSION_COOKIE, forged)
        response = app_client.get("/jobs")
        assert response.status_code == 401 and "sign in again" in response.json()["detail"]
        assert 'id="login"' in app_client.get("/").text
    app_client.cookies.set(SESSION_COOKIE, cookie)
    assert app_client.get("/jobs").status_code == 200
    monkeypatch.setattr(security, "SESSION_SECONDS", 0)  # as if it had been issued SESSION_SECONDS ago
    assert app_client.get("/jobs").status_code == 401
    monkeypatch.undo()
    app_client.cookies.clear()
    _sign_in(app_client)
    assert app_client.get("/jobs").status_code == 200
    assert app_client.post("/logout").status_code == 204
    assert SESSION_COOKIE not in app_client.cookies
    assert app_client.get("/jobs").status_code == 401


def test_a_token_in_the_url_is_refused_even_with_a_session(app_client: TestClient) -> None:
    _sign_in(app_client)
    response = app_client.get("/jobs", params={"token": API_TOKEN})
    assert response.status_code == 401 and "token in the URL" in response.json()["detail"]


def test_in_development_mode_the_page_needs_no_sign_in(
    sqlite_url: str, model_store: Path, queue_name: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=sqlite_url, model_store=model_store, queue_name=queue_name, dev_mode=True, allowed_roots=[tmp_path]
    )
    with ControlledClient(settings) as client:
        anonymous = TestClient(client.app)
        assert 'id="jobs"' in anonymous.get("/").text
        assert anonymous.post("/login", json={"token": "anything"}).json() == {"csrf_token": ""}
