"""Reports end to end in one process: `trainer fit` calibrates and reports, `trainer test` and `trainer publish` too."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from classifier.store import list_versions, read_meta
from settings import get_settings
from trainer.cli import main
from trainer.release import training_stages

QUICK = ["--accelerator", "cpu", "--limit-per-class", "8", "--num-workers", "0"]
REPORT_KEYS = {"n", "classes", "temperature", "accuracy", "per_class", "roc_auc", "ece", "nll", "confusion_matrix",
               "predicted_share", "reliability", "uncalibrated", "mistakes", "data"}  # fmt: skip
PICTURES = {"confusion_matrix.png", "reliability.png", "mistakes.png"}


@dataclass(frozen=True)
class Fitted:
    root: Path
    store: Path
    run_dir: Path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Fitted]:
    """A one-process, two-epoch fit on 16 photos per split that publishes v1 into a fresh store and SQLite database."""
    root = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", f"sqlite:///{root}/db.sqlite")
        get_settings.cache_clear()
        argv = ["fit", "--data", str(data_dir), "--runs-dir", str(root), "--model-store", str(root / "store"),
                "--max-epochs", "2", "--batch-size", "8", *QUICK]  # fmt: skip
        assert main(argv) == 0
        yield Fitted(root=root, store=root / "store", run_dir=root / "catsdogs" / "version_0")
    get_settings.cache_clear()


def _report(folder: Path) -> dict[str, Any]:
    assert PICTURES <= {p.name for p in folder.iterdir()}
    assert all((folder / name).read_bytes().startswith(b"\x89PNG") for name in PICTURES)
    result: dict[str, Any] = json.loads((folder / "report.json").read_text())
    assert REPORT_KEYS <= set(result)
    return result


def test_fit_publishes_a_calibrated_model_with_its_report(fitted: Fitted) -> None:
    result = _report(fitted.run_dir)
    assert (fitted.run_dir / "learning_curves.png").is_file()
    assert result["n"] == 16 and result["validation"]["n"] == 16 and result["published"] == "v1"
    assert [row["epoch"] for row in result["history"]] == [0, 1]  # every epoch, whichever was best
    per_epoch = {"val_acc", "val_loss", "val_pred_dog_share", "train_loss_epoch"}
    assert all(per_epoch <= set(row) for row in result["history"])
    meta = read_meta(fitted.store, "v1")
    assert meta["temperature"] == result["temperature"] > 0
    metrics = meta["metrics"]
    assert {"val_accuracy", "test_accuracy", "test_ece", "test_nll", "test_roc_auc"} <= set(metrics)
    assert metrics["test_accuracy"] == result["accuracy"] and metrics["test_ece"] == result["ece"]
    assert metrics["val_accuracy"] == result["validation"]["accuracy"]
    [stage] = meta["training"]["stages"]  # from scratch: one stage, this run
    assert stage["command"] == meta["training"]["command"] and stage["epochs"] == meta["training"]["epochs"]
    assert {"seconds", "hardware", "data"} <= set(stage)
    images = EventAccumulator(str(fitted.run_dir)).Reload().Tags()["images"]
    pictures = ("confusion_matrix", "reliability", "mistakes", "learning_curves")
    assert {f"report/{name}" for name in pictures} <= set(images)


def test_a_model_card_lists_the_stages_of_the_model_it_started_from() -> None:
    earlier = {"git_commit": "abc", "data": "d", "training": {
        "command": "trainer fit --lr 1e-3", "epochs": 30, "seconds": 5.0, "hardware": "cpu",
        "initialised_from": {"command": "trainer fit", "epochs": 20, "metrics": {}}}}  # fmt: skip
    stages = training_stages(earlier, {"command": "trainer fit --ema 0.998", "epochs": 4, "data": "d"})
    assert [(s["command"], s["epochs"]) for s in stages] == [
        ("trainer fit", 20),
        ("trainer fit --lr 1e-3", 30),
        ("trainer fit --ema 0.998", 4),
    ]
    assert stages[1] == {"command": "trainer fit --lr 1e-3", "epochs": 30, "seconds": 5.0, "hardware": "cpu",
                         "git_commit": "abc", "data": "d"}  # fmt: skip
    later = training_stages({"training": {"stages": stages}}, {"command": "trainer fit --mixup 0.2", "epochs": 1})
    assert len(later) == 4 and later[:3] == stages


def test_trainer_test_reports_on_the_test_split(
    fitted: Fitted, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["test", "--model", "v1", "--data", str(data_dir), "--model-store", str(fitted.store),
            "--runs-dir", str(tmp_path)]  # fmt: skip
    assert main([*argv, *QUICK]) == 0
    result = _report(tmp_path / "reports" / "v1" / f"{data_dir.name}-test")
    # The fit's report saw the same 16 photos with the same weights and temperature.
    assert result["accuracy"] == read_meta(fitted.store, "v1")["metrics"]["test_accuracy"]
    assert result["model"] == "v1" and result["n"] == 16
    assert result["temperature"] == read_meta(fitted.store, "v1")["temperature"]
    out = capsys.readouterr().out
    assert all(word in out for word in ("model v1", "(16 images)", "ROC AUC", "ECE", "confusion matrix"))


def test_trainer_test_reads_a_folder_of_class_folders(fitted: Fitted, data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fullres-like"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for photo in sorted((data_dir.parent / "catsdogs-fullres" / name).glob("*.jpg"))[:3]:
            (folder / name / photo.name).symlink_to(photo)
    argv = ["test", "--data", str(folder), "--model-store", str(fitted.store), "--runs-dir", str(tmp_path), *QUICK]
    assert main(argv) == 0
    result = _report(tmp_path / "reports" / "v1" / "fullres-like")
    assert result["n"] == 6 and result["data"] == str(folder.resolve())
    assert [row["support"] for row in result["per_class"].values()] == [3, 3]


def test_publish_from_a_checkpoint_reproduces_the_fit(
    fitted: Fitted, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = read_meta(fitted.store, "v1")
    checkpoint = Path(v1["training"]["best_checkpoint"])
    argv = ["publish", "--checkpoint", str(checkpoint), "--data", str(data_dir), "--model-store", str(fitted.store),
            *QUICK]  # fmt: skip
    assert main(argv) == 0  # registers in the fixture's DATABASE_URL
    assert list_versions(fitted.store) == ["v1", "v2"]
    v2 = read_meta(fitted.store, "v2")
    assert v2["weights_sha256"] == v1["weights_sha256"]
    assert v2["temperature"] == pytest.approx(v1["temperature"], rel=1e-6)
    assert v2["metrics"] == pytest.approx(v1["metrics"], rel=1e-6)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    training = v2["training"]
    assert training["source"] == f"published from checkpoint {checkpoint}"
    assert (training["epoch"], training["global_step"]) == (saved["epoch"], saved["global_step"])
    assert training["hyperparameters"]["stem"] == "imagenet"
    result = _report(fitted.run_dir)
    assert result["published"] == "v2"
    # The checkpoint's history ends at its own validation, which scored the weights v1 was published with.
    assert result["history"][-1]["val_acc"] == pytest.approx(v1["metrics"]["val_accuracy"])
    with sqlite3.connect(fitted.root / "db.sqlite") as db:
        assert [v for (v,) in db.execute("SELECT version FROM model_version ORDER BY version")] == ["v1", "v2"]
    assert "published v2" in capsys.readouterr().out


def test_publish_needs_an_existing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no such checkpoint"):
        main(["publish", "--checkpoint", str(tmp_path / "missing.ckpt")])


def test_checkpoints_keep_the_epoch_history(fitted: Fitted) -> None:
    for path in (fitted.run_dir / "checkpoints").glob("*.ckpt"):
        saved = torch.load(path, map_location="cpu", weights_only=False)
        history = saved["callbacks"]["EpochHistory"]["history"]
        assert [row["epoch"] for row in history] == list(range(saved["epoch"] + 1)) and "val_acc" in history[-1]
