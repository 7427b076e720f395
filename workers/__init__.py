"""Celery workers: `celery -A workers worker -Q gpu` finds the application here (built when Celery asks for it)."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from workers.app import get_app

        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
