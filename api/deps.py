"""FastAPI dependencies: settings, a database session per request, the task sender, the planning request, the
thumbnail cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from classifier.thumbnails import ThumbnailCache
from settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def get_db(sessions: Annotated[sessionmaker[Session], Depends(get_sessions)]) -> Iterator[Session]:
    with sessions() as session:
        yield session


def get_enqueue(request: Request) -> Callable[[int], None]:
    enqueue: Callable[[int], None] = request.app.state.enqueue
    return enqueue


def get_plan(request: Request) -> Callable[[int], None]:
    plan: Callable[[int], None] = request.app.state.request_planning
    return plan


def get_thumbnails(request: Request) -> ThumbnailCache:
    thumbnails: ThumbnailCache = request.app.state.thumbnails
    return thumbnails


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_db)]
EnqueueDep = Annotated[Callable[[int], None], Depends(get_enqueue)]
PlanDep = Annotated[Callable[[int], None], Depends(get_plan)]
ThumbnailsDep = Annotated[ThumbnailCache, Depends(get_thumbnails)]
