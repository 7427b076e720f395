"""The model registry's one way in from the store: register every published version the database lacks.

The trainer registers what it publishes (trainer.publish); `catsdogs migrate` and the API's start-up
call `sync_model_store` for versions that reached the store another way (the reference model, a copy).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from classifier.store import list_versions, read_meta
from db.queries import known_versions, register_model


def sync_model_store(*, session: Session, store: Path) -> list[str]:
    """Register every version found in the store directory; return the newly registered ones."""
    known = known_versions(session=session)
    added = [version for version in list_versions(store) if version not in known]
    for version in added:
        register_model(session=session, meta=read_meta(store, version))
    return added
