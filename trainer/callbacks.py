"""Lightning callbacks of the `trainer fit` run."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochHistory(Callback):
    """Keep one row of scalar metrics per epoch, for learning curves: `history` is [{"epoch": 0, "val_acc": ...}, ...].

    Validation metrics are taken at each validation epoch end (not the sanity check),
    training metrics at each training epoch end: at validation time
    `callback_metrics` still holds the previous epoch's train_loss_epoch. The rows
    are saved in checkpoints, so --resume and `trainer publish` keep the epochs up to
    the checkpoint's own. epoch_seconds is each epoch's wall time, training and validation, so
    a run resumed on other machines still records what every epoch cost.
    """

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}
        self._epoch_started = 0.0

    @property
    def history(self) -> list[dict[str, float]]:
        return [{"epoch": epoch, **row} for epoch, row in sorted(self.rows.items())]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val_")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "train_")
        self.rows[trainer.current_epoch]["epoch_seconds"] = round(time.monotonic() - self._epoch_started, 1)

    def _record(self, trainer: L.Trainer, prefix: str) -> None:
        row = self.rows.setdefault(trainer.current_epoch, {})
        for name, value in trainer.callback_metrics.items():
            if name.startswith(prefix) and not name.endswith("_step") and value.numel() == 1:
                row[name] = float(value)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = {int(row["epoch"]): {k: v for k, v in row.items() if k != "epoch"} for row in state_dict["history"]}
