"""`trainer calibrate-uncertainty` on a published model, and --init-from a store version that is not there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from classifier import store
from db.migrate import upgrade
from db.models import ModelVersion
from db.registry import register_missing
from settings import get_settings
from tests.conftest import ROOT, sessions_for
from trainer.cli import main as trainer


def test_a_store_version_gains_a_threshold_its_weights_unchanged_and_is_registered_again(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models, url = tmp_path / "models", f"sqlite:///{tmp_path / 'db.sqlite'}"
    store.install_reference(ROOT / "models" / "reference", models)
    meta = store.read_meta(models, "v1")
    del meta["uncertainty"]  # as a store installed before thresholds existed
    (models / "v1" / "meta.json").write_text(json.dumps(meta))
    upgrade(url)
    with sessions_for(url).begin() as session:
        register_missing(session=session, metas=store.read_all_meta(models))
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        argv = ["calibrate-uncertainty", "--model", "v1", "--model-store", str(models), "--data", str(data_dir),
                "--limit-per-class", "20", "--accelerator", "cpu", "--num-workers", "0",
                "--uncertainty-target", "0.9"]  # fmt: skip
        assert trainer(argv) == 0
    finally:
        get_settings.cache_clear()
    assert "model v1: uncertain below confidence" in capsys.readouterr().out
    found = store.read_meta(models, "v1")["uncertainty"]
    assert (found["n"], found["split"], found["target_accuracy"]) == (40, "val", 0.9)
    assert found["accuracy"] >= 0.9 and 0 < found["coverage"] <= 1
    assert store.load(models, "v1").meta["uncertainty"] == found  # load checks the weights' sha256
    with sessions_for(url)() as session:
        registered = session.scalars(select(ModelVersion).where(ModelVersion.version == "v1")).one()
        assert registered.meta["uncertainty"] == found


def test_init_from_an_unknown_version_is_refused(tmp_path: Path, data_dir: Path) -> None:
    argv = ["fit", "--data", str(data_dir), "--init-from", "v9", "--model-store", str(tmp_path), "--runs-dir",
            str(tmp_path), "--accelerator", "cpu", "--limit-per-class", "4", "--no-publish"]  # fmt: skip
    with pytest.raises(SystemExit, match="--init-from v9: unknown model version 'v9'"):
        trainer(argv)
