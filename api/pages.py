"""The web page: jobs, a job's results, and reviewing them by keyboard.

Plain HTML from Jinja2 templates (api/templates), with CSS and a little JavaScript (api/static), no build
step. The page holds no data of its own: its scripts call the JSON API with the session cookie that
POST /login sets, and send the page's CSRF token with every change (api.security).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from api.deps import SettingsDep
from api.routes import JobId
from api.security import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    SignInThrottle,
    csrf_token,
    new_session,
    session_is_valid,
    token_matches,
)

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

# Pages hold the session's CSRF token: never cached, never framed, and only this origin's scripts run.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class LoginIn(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


def install(app: FastAPI) -> None:
    """Serve the page at / and its static files at /static."""
    app.state.sign_in_throttle = SignInThrottle()
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, settings: SettingsDep) -> Response:
    return _page(request, settings, "jobs.html", {})


@router.get("/view/{job_id}", response_class=HTMLResponse)
def results_page(job_id: JobId, request: Request, settings: SettingsDep) -> Response:
    return _page(request, settings, "results.html", {"job_id": job_id})


def _page(request: Request, settings: SettingsDep, template: str, context: dict[str, Any]) -> Response:
    """The page, with the session's CSRF token; the sign-in form instead when there is no valid session."""
    token = settings.api_token
    cookie = request.cookies.get(SESSION_COOKIE)
    if token is None:  # DEV_MODE: nothing to sign in to
        csrf = ""
    elif cookie is not None and session_is_valid(token.get_secret_value(), cookie):
        csrf = csrf_token(token.get_secret_value(), cookie)
    else:
        template, context = "login.html", {}
    page = {"csrf": csrf if template != "login.html" else "", "signed_in": token is not None, **context}
    return templates.TemplateResponse(request, template, page, headers=PAGE_HEADERS)


@router.post("/login")
def login(body: LoginIn, request: Request, settings: SettingsDep) -> JSONResponse:
    """Check the token once and set the session cookie; answer the session's CSRF token. Ten wrong tokens
    from one address within five minutes shut it out for the rest of them (429, Retry-After)."""
    token = settings.api_token
    if token is None:
        return JSONResponse({"csrf_token": ""})
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    address = request.client.host if request.client else ""
    if (wait := throttle.retry_after(address)) is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many wrong tokens from this address: wait",
                            headers={"Retry-After": str(math.ceil(wait))})  # fmt: skip
    if not token_matches(body.token, token.get_secret_value()):
        throttle.failed(address)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong token: enter the API's API_TOKEN")
    cookie = new_session(token.get_secret_value())
    response = JSONResponse({"csrf_token": csrf_token(token.get_secret_value(), cookie)})
    response.headers["Cache-Control"] = "no-store"
    secure = request.url.scheme == "https"
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, httponly=True, samesite="strict", secure=secure
    )
    return response


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request) -> Response:
    """End the session in this browser (the cookie is deleted; a copy of it stays valid until it expires)."""
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response
