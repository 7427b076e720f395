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
    content_hash: bytes | None = None  # SHA-256 of the bytes read (None where the file could not be read)
    reused: bool = False  # the label and confidence are an earlier result's, for the same bytes and model
