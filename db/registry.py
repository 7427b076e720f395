"""The model registry: published versions, recorded from their metadata as plain data (the store is read by callers).

Each function takes a keyword-only `session` and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifier.uncertainty import threshold_of
from db.models import ModelVersion


def register_model(*, session: Session, meta: dict[str, Any]) -> ModelVersion:
    """Record a published version from its metadata; registering it again refreshes its recorded metadata.

    A version's weights never change, but its model card may gain sections later (e.g. `trainer
    calibrate-uncertainty` adds meta["uncertainty"]): the registry keeps the store's latest meta.json.
    """
    existing = session.scalar(select(ModelVersion).where(ModelVersion.version == meta["version"]))
    if existing is not None:
        _refresh(existing, meta)
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


def _refresh(row: ModelVersion, meta: dict[str, Any]) -> None:
    """Take a changed model card of the same weights; one naming other weights is not this version's (the
    first registration stands, as before)."""
    if row.meta != meta and row.weights_sha256 == meta["weights_sha256"]:
        row.meta = meta


def register_missing(*, session: Session, metas: Iterable[dict[str, Any]]) -> list[str]:
    """Register each version of `metas` the database lacks, and refresh the recorded metadata of those whose
    meta.json changed since; return the newly registered versions."""
    known = {row.version: row for row in session.scalars(select(ModelVersion))}
    added = []
    for meta in metas:
        if meta["version"] in known:
            _refresh(known[meta["version"]], meta)
        else:
            register_model(session=session, meta=meta)
            added.append(meta["version"])
    return added


def uncertainty_thresholds(*, session: Session, versions: Iterable[str]) -> dict[str, float]:
    """The uncertainty threshold of each of these versions, from its registered model card (a version that
    has none, or is not registered, gets classifier.uncertainty.FALLBACK_THRESHOLD)."""
    wanted = set(versions)
    if not wanted:
        return {}
    rows = session.execute(select(ModelVersion.version, ModelVersion.meta).where(ModelVersion.version.in_(wanted)))
    metas: dict[str, dict[str, Any]] = dict(rows.tuples().all())
    return {version: threshold_of(metas.get(version)) for version in wanted}


def list_models(*, session: Session) -> Sequence[ModelVersion]:
    return session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)).all()


def latest_model_version(*, session: Session) -> str | None:
    return session.scalar(select(ModelVersion.version).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()))
