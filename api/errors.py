"""Every error the API answers, in one shape (`ErrorOut`), declared on every route that can answer it.

A request the API cannot serve gets a 4xx saying why; a database or broker that does not answer
gets a 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the invalid value is: `body`, `query` or `path`, then its name.")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """The body of every error answer."""

    detail: str = Field(description="What went wrong, for a person to read.")
    errors: list[FieldError] | None = Field(default=None, description="On a 422: each invalid value.")


_DESCRIPTIONS = {
    400: "The request could not be read.",
    401: "Missing or wrong bearer token.",
    403: "The folder is outside the allowed roots, or not readable.",
    404: "No such job, model version or folder.",
    409: "The job has already ended (or, to be deleted, not yet), or no model is published.",
    413: "The request body is too large.",
    422: "A value in the request is invalid.",
    503: "The database or the broker does not answer; try again after `Retry-After` seconds.",
}
COMMON_ERRORS = (400, 401, 413, 422, 503)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers for these error statuses, each with ErrorOut as its body."""
    answers: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        answers[code] = {"model": ErrorOut, "description": _DESCRIPTIONS[code]}
        if code == 503:
            answers[code]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return answers


def error_response(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    # ASCII escapes: a lone surrogate echoed from the input ("\udcff", which JSON allows) cannot be UTF-8.
    body = json.dumps({"detail": detail, **extra})
    return Response(body, status, headers=headers, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    error = cast(HTTPException, exc)
    headers = dict(error.headers or {})
    if error.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(error.status_code, str(error.detail), headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path answers to. Starlette names only those of the first route that matches the path,
    and a path may have several (GET and POST /jobs, each its own route)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _validation_error(_: Request, exc: Exception) -> Response:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in jsonable_encoder(cast(RequestValidationError, exc).errors())
    ]
    summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
    return error_response(422, f"invalid request: {summary}", errors=errors)


async def _database_unavailable(_: Request, exc: Exception) -> Response:
    log.warning("the database did not answer: %s", type(exc).__name__)
    return _unavailable("the database is unavailable")


async def _broker_unavailable(_: Request, exc: Exception) -> Response:
    log.warning("the broker did not answer: %s", type(exc).__name__)
    return _unavailable("the broker is unavailable")


def _unavailable(what: str) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return error_response(503, f"{what}; try again in {RETRY_AFTER_SECONDS} s", headers)


async def _database_error(request: Request, exc: Exception) -> Response:
    """A DBAPI error that is not an outage: a lost connection is one, a value the database refused is a 422."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return await _database_unavailable(request, exc)
    if isinstance(exc, DataError):
        return error_response(422, "a value in the request cannot be stored or looked up in the database")
    raise exc


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for outage in (OperationalError, InterfaceError):
        app.add_exception_handler(outage, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_error)
    for broker in (BrokerError, RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(broker, _broker_unavailable)
