"""The FastAPI application. Run it with `catsdogs-api` (uvicorn); OpenAPI docs at /docs.

Every route but GET /health needs `Authorization: Bearer $API_TOKEN` (api/security.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import cast

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from api.limits import BodySizeLimit
from api.routes import public_router, router
from api.security import InsecureConfigError, check_config, log_startup_warnings, require_token
from db.session import make_engine, make_session_factory
from settings import Settings, get_settings
from workers.app import CLASSIFY_BATCH, make_celery
from workers.sweep import Sweeper


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API; while it runs, a background thread re-sends batches the broker lost.

    Raises InsecureConfigError when no API_TOKEN is set and DEV_MODE is off.
    """
    settings = settings or get_settings()
    check_config(settings)
    celery = make_celery(settings)

    def enqueue(batch_id: int) -> None:
        celery.send_task(CLASSIFY_BATCH, args=[batch_id], queue=settings.queue_name)

    sessions = make_session_factory(make_engine(settings.database_url))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log_startup_warnings(settings)
        sweeper = Sweeper(celery, sessions, enqueue, settings)
        sweeper.start()
        yield
        sweeper.stop()

    app = FastAPI(
        title="catsdogs",
        version="0.1.0",
        description="Batch cat/dog classification of photo folders.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.enqueue = enqueue
    app.include_router(router, dependencies=[Depends(require_token)])
    app.include_router(public_router)
    app.add_middleware(BodySizeLimit)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


async def _validation_error(_: Request, exc: Exception) -> Response:
    """FastAPI's 422, rendered with ASCII escapes: its own handler fails (500) on a lone surrogate in
    the echoed input, which JSON allows ("\\udcff": Python's json.dumps of an undecodable file name)."""
    errors = jsonable_encoder(cast(RequestValidationError, exc).errors())
    return Response(json.dumps({"detail": errors}), 422, media_type="application/json")


def run() -> None:
    settings = get_settings()
    try:
        app = create_app(settings)
    except InsecureConfigError as exc:
        raise SystemExit(f"catsdogs-api: {exc}") from None
    uvicorn.run(app, host=settings.api_host, port=settings.api_port)
