"""Fixtures for the trainer tests: the real photos under ../shared/data/catsdogs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The ImageFolder root with train/val/test: CATSDOGS_DATA/catsdogs, as in tests/conftest.py."""
    path = (Path(os.environ.get("CATSDOGS_DATA") or REPO_ROOT / "../shared/data") / "catsdogs").resolve()
    if not (path / "train").is_dir():
        pytest.skip(f"no cats-vs-dogs data at {path}; set CATSDOGS_DATA to the folder that holds catsdogs/")
    return path


@pytest.fixture(scope="session")
def cat_and_dog(data_dir: Path) -> list[Path]:
    """Two real test photos: one cat, one dog."""
    return [data_dir / "test" / "cat" / "cat.10000.jpg", data_dir / "test" / "dog" / "dog.10000.jpg"]
