from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from classifier import store
from classifier.model import build_model


def _publish(path: Path, **meta: object) -> str:
    torch.manual_seed(1)
    return store.publish(build_model(), store.base_meta(**meta), path)


def test_round_trip_keeps_weights_and_logits(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = build_model().eval()
    version = store.publish(net, store.base_meta(), tmp_path)
    loaded = store.load(tmp_path, version)
    saved = loaded.net.state_dict()
    assert all(torch.equal(value, saved[name]) for name, value in net.state_dict().items())
    batch = torch.randn(2, 1, 64, 64)
    # The same weights; on CUDA in channels-last layout, summed in another order.
    torch.testing.assert_close(net(batch), loaded.net(batch), atol=1e-5, rtol=1e-5)


def test_weights_trained_channels_last_are_stored_contiguous(tmp_path: Path) -> None:
    net = build_model(stem="medium").to(memory_format=torch.channels_last)
    version = store.publish(net, store.base_meta(stem="medium"), tmp_path)
    saved = torch.load(tmp_path / version / store.WEIGHTS_FILE, weights_only=True)
    assert all(tensor.is_contiguous() for tensor in saved.values())
    assert torch.equal(store.load(tmp_path, version).net.conv1.weight, net.conv1.weight)


def test_versions_count_up_and_latest_is_the_newest(tmp_path: Path) -> None:
    assert [_publish(tmp_path), _publish(tmp_path), _publish(tmp_path)] == ["v1", "v2", "v3"]
    assert store.latest_version(tmp_path) == "v3"
    assert store.load(tmp_path).version == "v3"


def test_metadata_describes_the_model(tmp_path: Path) -> None:
    version = _publish(tmp_path, metrics={"val_accuracy": 0.9})
    meta = json.loads((tmp_path / version / "meta.json").read_text())
    assert meta["version"] == version
    assert meta["architecture"] == "resnet18"
    assert meta["classes"] == ["cat", "dog"]
    assert meta["input"] == {"channels": 1, "height": 64, "width": 64, "color": "grayscale"}
    assert set(meta["normalization"]) == {"mean", "std"}
    assert len(meta["weights_sha256"]) == 64
    assert meta["metrics"] == {"val_accuracy": 0.9}


def test_half_precision_artifact_loads_as_float(tmp_path: Path) -> None:
    version = store.publish(build_model(), store.base_meta(), tmp_path, half=True)
    loaded = store.load(tmp_path, version)
    assert next(loaded.net.parameters()).dtype == torch.float32


def test_unfinished_publication_is_invisible(tmp_path: Path) -> None:
    (tmp_path / ".incoming-abc").mkdir()
    (tmp_path / "v1").mkdir()  # a leftover without meta.json: not a version
    (tmp_path / "v1" / "model.pt").write_bytes(b"partial")
    assert store.list_versions(tmp_path) == []
    assert _publish(tmp_path) == "v2"
    assert store.list_versions(tmp_path) == ["v2"]
    with pytest.raises(store.UnknownModelVersion):
        store.read_meta(tmp_path, ".incoming-abc")


def test_unknown_version_names_the_available_ones(tmp_path: Path) -> None:
    _publish(tmp_path)
    with pytest.raises(store.UnknownModelVersion, match="available: v1"):
        store.load(tmp_path, "v9")


def test_corrupted_weights_are_detected(tmp_path: Path) -> None:
    version = _publish(tmp_path)
    with open(tmp_path / version / "model.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        store.load(tmp_path, version)


def test_reference_model_is_installed_into_an_empty_store_only(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _publish(tmp_path / "elsewhere", metrics={"test_accuracy": 0.93})
    (tmp_path / "elsewhere" / "v1").rename(reference)
    store_dir = tmp_path / "store"
    assert store.install_reference(reference, store_dir) == "v1"
    assert store.install_reference(reference, store_dir) is None
    installed = store.read_meta(store_dir, "v1")
    assert installed["metrics"] == {"test_accuracy": 0.93}
    assert installed["reference"]["published_as"] == "v1"
    assert store.load(store_dir, "v1").meta["weights_sha256"] == installed["weights_sha256"]


def test_exported_half_precision_model_predicts_like_the_original(tmp_path: Path) -> None:
    version = _publish(tmp_path / "store")
    meta = store.export(tmp_path / "store", version, tmp_path / "reference")
    assert meta["weights_dtype"] == "float16"
    assert store.install_reference(tmp_path / "reference", tmp_path / "fresh") == "v1"
    batch = torch.randn(4, 1, 64, 64)
    original, shipped = store.load(tmp_path / "store", version).net, store.load(tmp_path / "fresh", "v1").net
    assert torch.allclose(original(batch), shipped(batch), atol=1e-2)
