"""The model store: a directory of published versions, each `vN/{model.pt,meta.json}`.

A version appears atomically: it is written under a hidden temporary name and
renamed into place, so readers never see a half-written version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier.model import CLASSES, IMAGE_SIZE, MEAN, STD, accelerate, build_model, for_inference

WEIGHTS_FILE = "model.pt"
META_FILE = "meta.json"
_VERSION_RE = re.compile(r"^v(\d+)$")


class UnknownModelVersion(LookupError):
    def __init__(self, version: str, available: list[str]) -> None:
        shown = ", ".join(available) if available else "none published yet"
        super().__init__(f"unknown model version {version!r}; available: {shown}")
        self.version = version
        self.available = available


@dataclass(frozen=True)
class LoadedModel:
    net: nn.Module
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    def serving(self, backend: str, batch_size: int, precision: str = "fp32") -> LoadedModel:
        """This model with its net in a serving backend and precision (classifier.model.accelerate)."""
        return replace(self, net=accelerate(self.net, backend, batch_size, precision))


def list_versions(store: Path) -> list[str]:
    """Return the published versions in `store`, oldest first."""
    if not store.is_dir():
        return []
    found = [
        (int(m.group(1)), p.name)
        for p in store.iterdir()
        if (m := _VERSION_RE.match(p.name)) and (p / META_FILE).is_file()
    ]
    return [name for _, name in sorted(found)]


def latest_version(store: Path) -> str | None:
    versions = list_versions(store)
    return versions[-1] if versions else None


def read_all_meta(store: Path) -> list[dict[str, Any]]:
    """The metadata of every published version in `store`, oldest first: what the registry records."""
    return [read_meta(store, version) for version in list_versions(store)]


def read_meta(store: Path, version: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((_version_folder(store, version) / META_FILE).read_text())
    return meta


def update_meta(folder: Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Add or replace top-level sections of a model folder's meta.json (a store version, or an exported copy
    such as models/reference) and return the new meta. The weights, and so weights_sha256, are untouched.

    The file is replaced atomically: readers see the old card or the new one.
    """
    meta: dict[str, Any] = {**json.loads((folder / META_FILE).read_text()), **sections}
    fd, staging = tempfile.mkstemp(prefix=f".{META_FILE}.", dir=folder)
    os.close(fd)
    try:
        shutil.copymode(folder / META_FILE, staging)  # mkstemp's file is private (0600)
        _write_synced(Path(staging), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(staging, folder / META_FILE)
    finally:
        Path(staging).unlink(missing_ok=True)
    return meta


def version_folder(store: Path, version: str) -> Path:
    """The folder of a published version (UnknownModelVersion if there is none of that name)."""
    return _version_folder(store, version)


def _version_folder(store: Path, version: str) -> Path:
    """The folder of a published version; UnknownModelVersion for any other name."""
    folder = store / version
    if not _VERSION_RE.match(version) or not (folder / META_FILE).is_file():
        raise UnknownModelVersion(version, list_versions(store))
    return folder


def base_meta(stem: str = "imagenet", **extra: Any) -> dict[str, Any]:
    """Metadata every artifact carries: what a reader needs to rebuild and feed the network."""
    return {
        "architecture": "resnet18",
        "stem": stem,
        "input": {"channels": 1, "height": IMAGE_SIZE, "width": IMAGE_SIZE, "color": "grayscale"},
        "normalization": {"mean": MEAN, "std": STD},
        "classes": list(CLASSES),
        "temperature": 1.0,
        **extra,
    }


def publish(net: nn.Module, meta: dict[str, Any], store: Path, half: bool = False) -> str:
    """Write `net` and `meta` as the next version in `store` and return its name."""
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=store))
    try:
        torch.save(_state_dict(net, half), staging / WEIGHTS_FILE)
        digest = file_sha256(staging / WEIGHTS_FILE)
        return _move_into_place(staging, store, meta, digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _state_dict(net: nn.Module, half: bool) -> dict[str, torch.Tensor]:
    # Contiguous, whatever layout the weights were trained in: files that load the same into any net.
    return {
        k: (v.half() if half and v.is_floating_point() else v).cpu().contiguous() for k, v in net.state_dict().items()
    }


def export(store: Path, version: str, dest: Path, half: bool = True) -> dict[str, Any]:
    """Write a published version to `dest` (model.pt + meta.json), in half precision by default.

    This is how a version becomes the shipped reference model (see install_reference).
    """
    loaded = load(store, version)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(_state_dict(loaded.net, half), dest / WEIGHTS_FILE)
    meta = {
        **loaded.meta,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": file_sha256(dest / WEIGHTS_FILE),
        "weights_dtype": "float16" if half else "float32",
    }
    _write_synced(dest / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def install_reference(reference: Path, store: Path) -> str | None:
    """Publish the model in `reference` (model.pt + meta.json) when `store` has no version yet."""
    if list_versions(store) or not (reference / META_FILE).is_file():
        return None
    meta = json.loads((reference / META_FILE).read_text())
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=store))
    try:
        shutil.copyfile(reference / meta["weights_file"], staging / WEIGHTS_FILE)
        digest = file_sha256(staging / WEIGHTS_FILE)
        if digest != meta["weights_sha256"]:
            raise ValueError(f"reference model in {reference}: weights do not match their sha256")
        reserved = ("version", "weights_file", "weights_sha256", "created_at")
        extra = {
            "reference": {
                "from": str(reference),
                "published_as": meta.get("version"),
                "created_at": meta.get("created_at"),
            }
        }
        return _move_into_place(staging, store, {k: v for k, v in meta.items() if k not in reserved} | extra, digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, store: Path, meta: dict[str, Any], digest: str) -> str:
    latest = latest_version(store)
    number = int(latest[1:]) + 1 if latest else 1
    while True:
        version = f"v{number}"
        full_meta = {
            **meta,
            "version": version,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": digest,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_synced(staging / META_FILE, json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(staging, store / version)  # atomic; fails if another publisher took the name
        except OSError:
            if (store / version).exists():
                number += 1
                continue
            raise
        return version


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(store: Path, version: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a published version (the latest when None), check its checksum, and return it in eval mode."""
    if version is None:
        version = latest_version(store)
        if version is None:
            raise UnknownModelVersion("latest", [])
    return load_folder(_version_folder(store, version), device)


def load_folder(folder: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (a store version, or an exported copy such as models/reference), checksum checked."""
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {META_FILE}: not a published or exported model")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    weights = folder / meta["weights_file"]
    if file_sha256(weights) != meta["weights_sha256"]:
        raise ValueError(f"model {folder}: weights do not match their sha256; the model is corrupt")
    net = build_model(len(meta["classes"]), stem=meta.get("stem", "imagenet"))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return LoadedModel(net=for_inference(net, device), meta=meta)
