"""What became of one image: the plain data that serving produces and the database records."""

from __future__ import annotations

from typing import NamedTuple


class Outcome(NamedTuple):
    """A label and confidence for an image, or the reason it failed. A tuple: a batch makes thousands, and
    a tuple is made four times faster than a frozen dataclass."""

    path: str
    label: str | None = None
    confidence: float | None = None
    error: str | None = None
