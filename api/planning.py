"""Checking a folder before a job is made of it: its text, its place inside the allowed roots, its contents.

Listing it into batches is the control plane's work (control.planning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from classifier.files import (
    IMAGE_SUFFIXES,
    is_within,
    iter_image_files,
    listing_roots,
    resolve_path,
    text_to_path,
)

log = logging.getLogger(__name__)


class FolderError(ValueError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def validate_folder(folder: str, allowed_roots: Sequence[Path] | None) -> Path:
    """Return the folder's resolved path, or raise FolderError with an HTTP status and a clear reason.

    `folder` is a path's text, in the form the API shows paths in (classifier.files.path_to_text).

    The folder, with its symlinks and ".." resolved, must lie inside one of `allowed_roots`
    (resolved too), which is checked before anything else, so that a folder elsewhere is
    refused without saying whether it exists. An empty list refuses every folder; None
    allows any (development mode).
    """
    path = _checked_path(folder)
    resolved = resolve_path(path)
    if allowed_roots is not None:
        _check_within(folder, resolved, allowed_roots)
    _check_lengths(folder, path)
    if resolved is None:
        raise FolderError(422, f"folder cannot be resolved (symlink loop): {folder}")
    if not resolved.exists():
        raise FolderError(404, f"folder does not exist: {folder}")
    if not resolved.is_dir():
        raise FolderError(422, f"not a folder: {folder}")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise FolderError(403, f"folder is not readable: {folder}")
    if next(iter_image_files(resolved, listing_roots(resolved, allowed_roots)), None) is None:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise FolderError(422, f"no images in folder {folder} (searched recursively for {suffixes})")
    return resolved


NAME_MAX, PATH_MAX = 255, 4096  # bytes, as Linux limits a file name and a whole path


def _checked_path(folder: str) -> Path:
    """The path `folder` names, or FolderError(422) for text that cannot name a folder on this system."""
    if "\x00" in folder:
        raise FolderError(422, "folder must not contain a NUL character")
    path = text_to_path(folder)
    if not path.is_absolute():
        hint = " ('~' is not expanded: the API's home folder means nothing to a client)" if folder[:1] == "~" else ""
        raise FolderError(422, f"folder must be an absolute path{hint}: {folder!r}")
    return path


def _check_lengths(folder: str, path: Path) -> None:
    """404 for a path longer than the system allows any path to be: no such folder can exist."""
    raw = os.fsencode(path)
    if len(raw) >= PATH_MAX:
        raise FolderError(
            404, f"folder does not exist: its path is {len(raw):,} bytes, over the {PATH_MAX - 1:,} allowed"
        )
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise FolderError(404, f"folder does not exist: a name on its path is over {NAME_MAX} bytes: {folder}")


def _check_within(folder: str, resolved: Path | None, allowed_roots: Sequence[Path]) -> None:
    if not allowed_roots:
        raise FolderError(
            403, "ALLOWED_ROOTS is not set, so the API accepts no folder: set it to the folders jobs may read"
        )
    roots = [r for r in map(resolve_path, allowed_roots) if r is not None]
    if resolved is None or not is_within(resolved, roots):
        names = ", ".join(str(r) for r in allowed_roots)
        raise FolderError(403, f"folder {folder} is outside the allowed roots ({names}); see ALLOWED_ROOTS")
