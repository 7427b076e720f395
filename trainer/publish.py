"""Publishing a trained network: write it to the model store, then register it in the database."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier.store import base_meta, publish, read_meta
from db.migrate import upgrade
from db.registry import register_model
from db.session import make_engine, make_session_factory

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """Return the HEAD commit of `repo`, or None outside a git checkout (e.g. in a container image)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def hardware(on_cuda: bool, devices: int, num_nodes: int) -> str:
    """Describe the run's hardware, e.g. '1 node x 4 NVIDIA H200' or '1 node x 2 cpu processes (AMD EPYC, family
    25, x86_64, 2 cores)'."""
    nodes = f"{num_nodes} node{'s' if num_nodes > 1 else ''}"
    if on_cuda:
        return f"{nodes} x {devices} {torch.cuda.get_device_name(0)}"
    return (
        f"{nodes} x {devices} cpu process{'es' if devices > 1 else ''} ({cpu_model()}{platform.machine()}, "
        f"{os.cpu_count()} cores)"
    )


def cpu_model() -> str:
    """'AMD EPYC, family 25, ' from /proc/cpuinfo (the model name alone can hide the generation), or ''."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    named = [fields.get("model name"), f"family {fields['cpu family']}" if "cpu family" in fields else None]
    return "".join(f"{part}, " for part in named if part)


def publish_and_register(
    net: nn.Module,
    *,
    stem: str,
    metrics: dict[str, float],
    data_dir: Path,
    training: dict[str, Any],
    store: Path,
    database_url: str,
    temperature: float = 1.0,
    card: dict[str, Any] | None = None,
) -> str:
    """Publish `net` as the next version in `store`, register it in the database, and return the version.

    `temperature` divides the logits before softmax wherever the model predicts. `card` holds more
    top-level sections of meta.json (e.g. uncertainty, corrections).
    Call on one process only (global rank 0): publishing twice would create two versions.
    """
    meta = base_meta(
        stem,
        temperature=temperature,
        metrics=metrics,
        data=str(data_dir.resolve()),
        git_commit=git_commit(),
        training=training,
        **(card or {}),
    )
    version = publish(net, meta, store)
    register(store, version, database_url)
    return version


def register(store: Path, version: str, database_url: str) -> None:
    """Bring the schema up to date and record `version` from its meta.json (idempotent)."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            register_model(session=session, meta=read_meta(store, version))
    finally:
        engine.dispose()
