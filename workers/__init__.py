"""Celery workers: `celery -A workers worker -Q gpu` finds the application here."""

from workers.app import app

__all__ = ["app"]
