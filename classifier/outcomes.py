"""What became of one image: the plain data that serving produces and the database records."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """A label and confidence for an image, or the reason it failed."""

    path: str
    label: str | None = None
    confidence: float | None = None
    error: str | None = None
