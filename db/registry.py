"""The model registry: published versions, recorded from their metadata as plain data (the store is read by callers).

Each function takes a keyword-only `session` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ModelVersion


def register_model(*, session: Session, meta: dict[str, Any]) -> ModelVersion:
    """Record a published version from its metadata; registering the same version twice is a no-op."""
    existing = session.scalar(select(ModelVersion).where(ModelVersion.version == meta["version"]))
    if existing is not None:
        return existing
    metrics = meta.get("metrics", {})
    row = ModelVersion(
        version=meta["version"],
        architecture=f"{meta['architecture']}-{meta.get('stem', 'imagenet')}",
        val_accuracy=metrics.get("val_accuracy"),
        test_accuracy=metrics.get("test_accuracy"),
        weights_sha256=meta["weights_sha256"],
        meta=meta,
        created_at=datetime.fromisoformat(meta["created_at"]),
    )
    session.add(row)
    session.flush()
    return row


def register_missing(*, session: Session, metas: Iterable[dict[str, Any]]) -> list[str]:
    """Register each version of `metas` the database lacks; return the newly registered versions."""
    known = set(session.scalars(select(ModelVersion.version)))
    added = [meta for meta in metas if meta["version"] not in known]
    for meta in added:
        register_model(session=session, meta=meta)
    return [meta["version"] for meta in added]


def list_models(*, session: Session) -> Sequence[ModelVersion]:
    return session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)).all()


def latest_model_version(*, session: Session) -> str | None:
    return session.scalar(select(ModelVersion.version).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()))
