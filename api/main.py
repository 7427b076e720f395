"""The FastAPI application. Run it with `catsdogs-api` (uvicorn); OpenAPI docs at /docs.

Every route but GET /health needs `Authorization: Bearer $API_TOKEN` (api/security.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import uvicorn
from fastapi import Depends, FastAPI

from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.routes import public_router, router
from api.security import (
    InsecureConfigError,
    check_config,
    hide_secrets_in_access_log,
    log_startup_warnings,
    require_token,
)
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
        hide_secrets_in_access_log()
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
    install_error_handlers(app)
    return app


def run() -> None:
    settings = get_settings()
    try:
        app = create_app(settings)
    except InsecureConfigError as exc:
        raise SystemExit(f"catsdogs-api: {exc}") from None
    uvicorn.run(app, host=settings.api_host, port=settings.api_port)
