"""End to end: a real 2-process DDP fit on the CPU publishes and registers v1; test and predict use it."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from classifier.model import CLASSES
from classifier.store import list_versions, load, read_meta
from trainer.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
META_FIELDS = {"version", "architecture", "input", "normalization", "classes", "metrics", "data", "git_commit",
               "created_at", "weights_sha256", "training"}  # fmt: skip

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Run:
    root: Path
    store: Path
    stdout: str
    log: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Run:
    """Run `trainer fit` as a user types it, as its own process: Lightning relaunches that argv for rank 1."""
    root = tmp_path_factory.mktemp("ddp")
    command = [
        str(Path(sys.executable).with_name("trainer")), "fit", "--data", os.path.relpath(data_dir, REPO_ROOT),
        "--devices", "2", "--accelerator", "cpu", "--max-epochs", "1", "--limit-per-class", "32",
        "--batch-size", "16", "--num-workers", "0", "--runs-dir", str(root), "--model-store", str(root / "store"),
    ]  # fmt: skip
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{root}/db.sqlite"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return Run(root=root, store=root / "store", stdout=done.stdout, log=done.stdout + done.stderr)


def test_rank_zero_alone_publishes_v1(run: Run, data_dir: Path) -> None:
    assert "Starting with 2 processes" in run.log
    assert list_versions(run.store) == ["v1"]
    meta = read_meta(run.store, "v1")
    assert META_FIELDS <= set(meta)
    metrics = meta["metrics"]
    assert {"val_accuracy", "test_accuracy", "test_ece", "test_nll", "test_roc_auc"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("val_accuracy", "test_accuracy", "test_ece", "test_roc_auc"))
    assert meta["temperature"] > 0 and metrics["test_nll"] > 0
    assert meta["data"] == str(data_dir)
    assert meta["classes"] == list(CLASSES) and meta["input"]["height"] == 64
    assert re.fullmatch(r"[0-9a-f]{40}", meta["git_commit"])
    training = meta["training"]
    assert training["devices"] == 2 and training["world_size"] == 2 and training["global_batch_size"] == 32
    assert training["command"].startswith("trainer fit --data ") and training["seconds"] > 0
    assert "published v1" in run.stdout


def test_v1_is_registered_in_the_database(run: Run) -> None:
    meta = read_meta(run.store, "v1")
    with sqlite3.connect(run.root / "db.sqlite") as db:
        rows = db.execute("SELECT version, val_accuracy, test_accuracy, weights_sha256 FROM model_version").fetchall()
    metrics = meta["metrics"]
    assert rows == [("v1", metrics["val_accuracy"], metrics["test_accuracy"], meta["weights_sha256"])]


def test_published_weights_are_the_best_checkpoint(run: Run) -> None:
    best = read_meta(run.store, "v1")["training"]["best_checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    published = load(run.store, "v1").net.state_dict()
    assert published.keys() == {k.removeprefix("net.") for k in state if k.startswith("net.")}
    assert all(torch.equal(published[k], state[f"net.{k}"]) for k in published)


def test_metrics_and_report_pictures_reach_tensorboard(run: Run) -> None:
    run_dir = run.root / "catsdogs" / "version_0"
    events = EventAccumulator(str(run_dir)).Reload()
    scalars = {"train_loss_epoch", "val_loss", "val_acc", "val_pred_dog_share", "test_acc"}
    assert scalars <= set(events.Tags()["scalars"])
    pictures = ("confusion_matrix", "reliability", "mistakes", "learning_curves")
    assert {f"report/{name}" for name in pictures} <= set(events.Tags()["images"])
    assert all((run_dir / f"{name}.png").is_file() for name in pictures)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n"] == 64 and report["published"] == "v1" and len(report["history"]) == 1


def test_trainer_test_reproduces_the_published_test_accuracy(
    run: Run, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["test", "--model", "v1", "--data", str(data_dir), "--model-store", str(run.store),
            "--runs-dir", str(run.root)]  # fmt: skip
    assert main([*argv, "--limit-per-class", "32", "--num-workers", "0"]) == 0
    assert (run.root / "reports" / "v1" / "catsdogs-test" / "report.json").is_file()
    out = capsys.readouterr().out
    assert "model v1" in out and "(64 images)" in out
    assert all(re.search(rf"^\s+{name}(\s+[0-9.]+){{3}}\s+32$", out, re.M) for name in CLASSES)  # P, R, F1, support
    accuracy = float(re.search(r"accuracy\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    # Same 64 photos, same weights, same decoding, both scored on one process.
    assert accuracy == pytest.approx(read_meta(run.store, "v1")["metrics"]["test_accuracy"], abs=1e-4)


def test_predict_labels_real_photos_and_reports_a_broken_one(
    run: Run, cat_and_dog: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jpg"
    empty.touch()
    cat, dog = (str(p) for p in cat_and_dog)
    assert main(["predict", cat, str(empty), dog, "--model-store", str(run.store)]) == 0
    captured = capsys.readouterr()
    lines = [line.split("\t") for line in captured.out.splitlines()]
    assert [line[0] for line in lines] == [cat, dog]
    assert all(label in CLASSES and 0.5 <= float(confidence) <= 1.0 for _, label, confidence in lines)
    assert f"{empty}\terror: empty file (0 bytes)" in captured.err
