"""The FastAPI application. Run it with `catsdogs-api` (uvicorn); OpenAPI docs at /docs."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from api.routes import router
from db.session import make_engine, make_session_factory
from settings import Settings, get_settings


def celery_enqueue(settings: Settings) -> Callable[[int], None]:
    """Return a function that sends one batch task to the workers' queue."""
    from workers.app import CLASSIFY_BATCH, make_celery

    celery = make_celery(settings)

    def enqueue(batch_id: int) -> None:
        celery.send_task(CLASSIFY_BATCH, args=[batch_id], queue=settings.queue_name)

    return enqueue


def create_app(settings: Settings | None = None, enqueue: Callable[[int], None] | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="catsdogs", version="0.1.0", description="Batch cat/dog classification of photo folders.")
    app.state.settings = settings
    app.state.sessions = make_session_factory(make_engine(settings.database_url))
    app.state.enqueue = enqueue or celery_enqueue(settings)
    app.include_router(router)
    return app


def run() -> None:
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port)
