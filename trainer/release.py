"""The end of a training run, shared by `trainer fit` and `trainer publish --checkpoint`.

Calibrate the trained network's temperature on the validation split, report on
the test split (report.json and pictures in the run's folder and TensorBoard),
then publish and register it. Runs on one process only: global rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier.model import CLASSES, MEAN, STD, build_model
from classifier.uncertainty import TARGET_ACCURACY
from trainer.data import CatsDogsData
from trainer.evaluate import calibrate_and_report, summary, uncertainty_summary, write_report_json
from trainer.plots import FigureWriter, report_figures, save_figures
from trainer.publish import publish_and_register

# Copied from the test report into meta["metrics"]; val_accuracy and test_accuracy are also database columns.
PUBLISHED_METRICS = ("accuracy", "roc_auc", "ece", "nll")


@dataclass(frozen=True)
class Trained:
    """A trained network and what is known of its training; `history` holds `EpochHistory` rows."""

    net: nn.Module
    stem: str
    training: dict[str, Any]
    mean: float = MEAN
    std: float = STD
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    card: dict[str, Any] = field(default_factory=dict)  # more top-level model card sections, e.g. corrections


def report_and_publish(
    trained: Trained,
    data: CatsDogsData,
    *,
    run_dir: Path,
    writer: FigureWriter | None,
    store: Path | None,
    database_url: str,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    uncertainty_target: float = TARGET_ACCURACY,
) -> dict[str, Any]:
    """Calibrate on the val split, report on test into `run_dir` (and `writer`), then publish unless `store` is None.

    `data` must be set up for "validate" and "test". Return the report; its
    "published" key names the new version (None when not published). The model card
    gains the uncertainty threshold chosen on val for `uncertainty_target`.
    """
    val, test = data.datasets["val"], data.datasets["test"]
    result = calibrate_and_report(
        trained.net, val, test, device, trained.mean, trained.std,
        num_workers=num_workers, uncertainty_target=uncertainty_target,
    )  # fmt: skip
    result |= {"data": data.describe("test"), "history": trained.history, "published": None}
    write_report_json(result, run_dir)
    save_figures(report_figures(result, trained.history), run_dir, writer, trained.step)
    print(summary(result, result["data"]))
    print(f"report and pictures in {run_dir}")
    if store is not None:
        metrics = published_metrics(result)
        result["published"] = publish_and_register(
            trained.net, stem=trained.stem, metrics=metrics, data_dir=data.data_dir, training=trained.training,
            store=store, database_url=database_url, temperature=result["temperature"],
            card={"uncertainty": result["uncertainty"], **trained.card},
        )  # fmt: skip
        write_report_json(result, run_dir)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"published {result['published']} to {store}: temperature {result['temperature']:.4f}, {shown}")
        print(uncertainty_summary(result["uncertainty"]))
    return result


def published_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Return meta["metrics"]: val_accuracy, test_accuracy, test_roc_auc, test_ece, test_nll, test_ece_uncalibrated."""
    metrics = {"val_accuracy": float(result["validation"]["accuracy"])}
    metrics |= {f"test_{key}": float(result[key]) for key in PUBLISHED_METRICS if result[key] is not None}
    metrics["test_ece_uncalibrated"] = float(result["uncalibrated"]["ece"])
    return metrics


def from_checkpoint(path: Path, stem: str | None = None, command: str | None = None) -> Trained:
    """Rebuild the network of a Lightning checkpoint of `CatsDogsModule`, with its epoch, step, hparams and history."""
    # weights_only=False: a Lightning checkpoint also pickles hparams and callback state.
    # Like Lightning's own loader, this is for checkpoints you trust.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    stem = stem or hparams.get("stem", "imagenet")
    net = build_model(len(CLASSES), stem=stem)
    # A run with --ema evaluated and published the moving average: publish it from a checkpoint too.
    prefix = "ema.module." if hparams.get("ema_decay") else "net."
    state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    net.load_state_dict(state)
    history = checkpoint.get("callbacks", {}).get("EpochHistory", {}).get("history", [])
    training = {
        "command": command,
        "source": f"published from checkpoint {path.resolve()}",
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "hyperparameters": hparams,
        "best_checkpoint": str(path.resolve()),
    }
    return Trained(
        net=net, stem=stem, training=training, history=list(history), step=int(checkpoint.get("global_step", 0)),
        mean=float(hparams.get("mean", MEAN)), std=float(hparams.get("std", STD)),
    )  # fmt: skip


STAGE_KEYS = ("command", "epochs", "seconds", "hardware", "precision", "git_commit", "data")


def training_stages(earlier: dict[str, Any] | None, training: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage a model was trained in, oldest first: the stages of the model it started from
    (`earlier`, that model's card, or None from scratch), then this run's (`training`)."""
    stages: list[dict[str, Any]] = []
    if earlier is not None:
        before = earlier.get("training", {})
        if "stages" in before:
            stages = list(before["stages"])
        else:  # a card from before stages were recorded: its own run, after the one it started from
            if "initialised_from" in before:
                stages.append(_stage(before["initialised_from"]))
            stages.append(_stage(before | {"git_commit": earlier.get("git_commit"), "data": earlier.get("data")}))
    return [*stages, _stage(training)]


def _stage(training: dict[str, Any]) -> dict[str, Any]:
    return {key: training[key] for key in STAGE_KEYS if training.get(key) is not None}


def run_dir_of(checkpoint: Path) -> Path:
    """Return the run folder of a checkpoint: RUN/version_N for RUN/version_N/checkpoints/x.ckpt, else its folder."""
    folder = checkpoint.resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder
