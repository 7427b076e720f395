"""The FastAPI application. Run it with `catsdogs-api` (uvicorn); OpenAPI docs at /docs, the web page at /.

Every route but the probes needs `Authorization: Bearer $API_TOKEN`, or the web page's session (api/security.py).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

import uvicorn
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session, sessionmaker

from api import corrections, exports, pages, review
from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.metrics import RequestMetrics
from api.routes import public_router, router
from api.security import (
    InsecureConfigError,
    check_config,
    hide_secrets_in_access_log,
    log_startup_warnings,
    require_token,
)
from classifier.store import read_all_meta
from classifier.thumbnails import ThumbnailCache
from db.registry import register_missing
from db.session import make_engine, make_session_factory
from dispatch import batch_sender, broker_answers, control_client, make_sender_app, request_planning
from settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API: stateless, so any number of replicas may run. It creates jobs and answers from the database;
    the control plane (`catsdogs sweeper`) lists folders and supervises the work.

    Raises InsecureConfigError when no API_TOKEN is set and DEV_MODE is off.
    """
    settings = settings or get_settings()
    check_config(settings)
    celery = make_sender_app(settings)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log_startup_warnings(settings)
        hide_secrets_in_access_log()
        _sync_models(sessions, settings)
        gc.freeze()  # what start-up loaded (torch, via classifier) stays out of the collector's walks
        yield
        engine.dispose()

    app = FastAPI(
        title="catsdogs",
        version="0.1.0",
        description="Batch cat/dog classification of photo folders.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.enqueue = batch_sender(celery, settings.queue_name)
    app.state.broker_answers = lambda: broker_answers(celery)
    app.state.request_planning = _planning_requester(settings)
    app.state.thumbnails = ThumbnailCache(settings.thumbnail_cache, settings.thumbnail_cache_bytes)
    app.include_router(router, dependencies=[Depends(require_token)])
    app.include_router(exports.router, dependencies=[Depends(require_token)])
    app.include_router(corrections.router, dependencies=[Depends(require_token)])
    app.include_router(review.router, dependencies=[Depends(require_token)])
    app.include_router(public_router)
    pages.install(app)  # the web page at /
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestMetrics)  # added last: the outermost, so it also sees the 413s
    install_error_handlers(app)
    return app


def _sync_models(sessions: sessionmaker[Session], settings: Settings) -> None:
    """Register the store's versions the database lacks; a database that does not answer yet is not fatal."""
    try:
        with sessions.begin() as session:
            register_missing(session=session, metas=read_all_meta(settings.model_store))
    except Exception as exc:
        log.warning("could not sync the model store at start-up (%s); POST /jobs syncs it again", type(exc).__name__)


def _planning_requester(settings: Settings) -> Callable[[int], None]:
    """Wake the control plane for a job's listing (raises when the broker does not answer)."""
    client = control_client(settings)
    return lambda job_id: request_planning(client, settings.queue_name, job_id)


def run() -> None:
    settings = get_settings()
    try:
        app = create_app(settings)
    except InsecureConfigError as exc:
        raise SystemExit(f"catsdogs-api: {exc}") from None
    uvicorn.run(app, host=settings.api_host, port=settings.api_port)
