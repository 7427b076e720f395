"""The LightningModule: ResNet18 on (N, 1, 64, 64) uint8 batches, AdamW with warm-up and cosine decay."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassRecall

from classifier.model import CLASSES, MEAN, STD, build_model, normalize

DOG = CLASSES.index("dog")

Batch = tuple[torch.Tensor, torch.Tensor]


class CatsDogsModule(L.LightningModule):
    """Trains `build_model(stem=stem)`; logs val_acc, val_pred_dog_share, test_acc and per-class test recall."""

    def __init__(
        self,
        stem: str = "imagenet",
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.1,
        mean: float = MEAN,
        std: float = STD,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = build_model(len(CLASSES), stem=stem)
        self.train_loss = MeanMetric()
        self.val_loss, self.val_acc, self.val_dog = MeanMetric(), _accuracy(), MeanMetric()
        self.test_loss, self.test_acc, self.test_dog = MeanMetric(), _accuracy(), MeanMetric()
        self.test_recall = MulticlassRecall(num_classes=len(CLASSES), average=None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return (N, C) logits for a (N, 1, H, W) uint8 batch."""
        return self.net(normalize(images, self.hparams.mean, self.hparams.std))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.hparams.label_smoothing)
        self.train_loss(loss)
        self.log("train_loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_loss, self.val_acc, self.val_dog)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        preds = self._evaluate(batch, "test", self.test_loss, self.test_acc, self.test_dog)
        self.test_recall.update(preds, batch[1])

    def on_test_epoch_end(self) -> None:
        # self.log takes scalars only, so log the per-class vector by hand. compute() has already
        # synced it across ranks; sync_dist=True averages equal values and silences Lightning's warning.
        for name, recall in zip(CLASSES, self.test_recall.compute()):
            self.log(f"test_recall_{name}", recall, sync_dist=True)
        self.test_recall.reset()

    def _evaluate(
        self, batch: Batch, stage: str, loss_metric: MeanMetric, acc: MulticlassAccuracy, dog: MeanMetric
    ) -> torch.Tensor:
        """Update and log one evaluation batch's loss, accuracy and share of 'dog' predictions; return (N,) predictions."""
        images, labels = batch
        logits = self(images)
        preds = logits.argmax(dim=1)
        loss_metric(F.cross_entropy(logits.float(), labels))  # unsmoothed, so comparable across --label-smoothing
        acc(preds, labels)
        dog((preds == DOG).float())
        self.log(f"{stage}_loss", loss_metric, prog_bar=stage == "val")
        self.log(f"{stage}_acc", acc, prog_bar=True)
        self.log(f"{stage}_pred_dog_share", dog)
        return preds

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = _split_decay(self.net)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # LambdaLR rather than OneCycleLR: its checkpointed state holds no step count, so
        # --resume with a larger --max-epochs stretches the schedule instead of raising.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup=max(1, total // 20)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """Return step -> LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=len(CLASSES), average="micro")


def _split_decay(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (weights, biases and norm scales): decaying the latter only hurts (timm's default)."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return decay, no_decay
