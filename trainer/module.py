"""The LightningModule: ResNet18 on (N, 1, 64, 64) uint8 batches, AdamW with a choice of LR schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassRecall
from torchvision.transforms import v2

from classifier.model import CLASSES, MEAN, STD, build_model, normalize

DOG = CLASSES.index("dog")
SESSIONS_KEY = "resumed_sessions"  # see trainer.packing

LR_SCHEDULES = ("cosine", "onecycle", "plateau")

Batch = tuple[torch.Tensor, torch.Tensor]


class CatsDogsModule(L.LightningModule):
    """Trains `build_model(stem=stem)`; logs val_acc, val_pred_dog_share, test_acc and per-class test recall.

    lr_schedule is one of LR_SCHEDULES (see `lr_scheduler`); class_weights, one per class in CLASSES,
    weight the training loss (see `inverse_frequency_weights`). With ema_decay, an exponential moving
    average of the weights (and BatchNorm statistics), updated every step, is what validation, test and
    `serving_net` use; val_raw_acc logs the raw weights beside it. mixup and cutmix are the Beta(alpha,
    alpha) parameters of torchvision's MixUp and CutMix, applied to every training batch (one of the two,
    at random, when both are set). channels_last trains in that memory layout, faster on CPUs for the stems
    with large feature maps (docs/model.md#the-stem).
    """

    class_weights: torch.Tensor | None

    def __init__(
        self,
        stem: str = "imagenet",
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.1,
        mean: float = MEAN,
        std: float = STD,
        lr_schedule: str = "cosine",
        class_weights: list[float] | None = None,
        ema_decay: float | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if class_weights is not None and len(class_weights) != len(CLASSES):
            raise ValueError(f"class_weights needs {len(CLASSES)} values, one per class, not {class_weights}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie strictly between 0 and 1, not {ema_decay}")
        self.save_hyperparameters()
        self.net: nn.Module = build_model(len(CLASSES), stem=stem)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = _moving_average(self.net, ema_decay) if ema_decay is not None else None
        self.mix = _mixer(mixup, cutmix)
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)  # follows the device; not in checkpoints
        self.train_loss = MeanMetric()
        self.val_loss, self.val_acc, self.val_dog = MeanMetric(), _accuracy(), MeanMetric()
        self.val_raw_acc = _accuracy()
        self.test_loss, self.test_acc, self.test_dog = MeanMetric(), _accuracy(), MeanMetric()
        self.test_recall = MulticlassRecall(num_classes=len(CLASSES), average=None)
        self.resumed_sessions: list[dict[str, Any]] = []  # trainer.packing: the sessions before a packed resume

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return (N, C) logits of the serving weights (`serving_net`) for a (N, 1, H, W) uint8 batch."""
        return self._logits(self.serving_net(), self._inputs(images))

    def serving_net(self) -> nn.Module:
        """The weights to evaluate and publish: the moving average with ema_decay, else the trained ones."""
        return self.net if self.ema is None else self.ema.module

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        # normalize() returns float32; match the weights under --precision 64-true (or bf16-true).
        inputs = normalize(images, self.hparams["mean"], self.hparams["std"]).to(self.dtype)
        return inputs.contiguous(memory_format=torch.channels_last) if self.hparams["channels_last"] else inputs

    @staticmethod
    def _logits(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = net(inputs)
        return logits

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        inputs, targets = self._inputs(images), labels
        if self.mix is not None:
            inputs, targets = self.mix(inputs, labels)  # targets become (N, C) class probabilities
        loss = self._train_loss(self._logits(self.net, inputs), targets)
        self.train_loss(loss)
        self.log("train_loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def _train_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The sum over the batch divided by its size, not by its total weight as F.cross_entropy's
        # "mean" does with weights: each DDP rank would divide by a different total, and N processes
        # with batch B would no longer take the step one process takes with batch N*B.
        # Without weights this is the plain mean.
        total = F.cross_entropy(
            logits, labels, weight=self.class_weights, label_smoothing=self.hparams["label_smoothing"], reduction="sum"
        )
        return total / len(labels)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_loss, self.val_acc, self.val_dog)
        if self.ema is not None:
            images, labels = batch
            self.val_raw_acc(self._logits(self.net, self._inputs(images)).argmax(dim=1), labels)
            self.log("val_raw_acc", self.val_raw_acc)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        preds = self._evaluate(batch, "test", self.test_loss, self.test_acc, self.test_dog)
        self.test_recall.update(preds, batch[1])

    def on_test_epoch_end(self) -> None:
        # self.log takes scalars only, so log the per-class vector by hand. compute() has already
        # synced it across ranks; sync_dist=True averages equal values and silences Lightning's warning.
        for name, recall in zip(CLASSES, self.test_recall.compute(), strict=False):
            self.log(f"test_recall_{name}", recall, sync_dist=True)
        self.test_recall.reset()

    def _evaluate(
        self, batch: Batch, stage: str, loss_metric: MeanMetric, acc: MulticlassAccuracy, dog: MeanMetric
    ) -> torch.Tensor:
        """Log one evaluation batch's loss, accuracy and share of 'dog' predictions; return (N,) predictions."""
        images, labels = batch
        logits: torch.Tensor = self(images)
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
            [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp["lr"],
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler(hp["lr_schedule"], optimizer, hp["lr"], total)}

    def teardown(self, stage: str) -> None:
        # After a --precision 64-true (or bf16-true) fit or test, hand back float32 weights, the
        # dtype that evaluation, the model store and the workers expect.
        self.float()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.resumed_sessions:
            checkpoint[SESSIONS_KEY] = self.resumed_sessions

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resumed_sessions = list(checkpoint.get(SESSIONS_KEY, []))
        # A scheduler's state loads silently into another kind of scheduler; refuse instead.
        saved = checkpoint.get("hyper_parameters", {}).get("lr_schedule", "cosine")
        current = self.hparams["lr_schedule"]
        if saved != current and "lr_schedulers" in checkpoint:
            raise ValueError(f"the checkpoint was trained with --lr-schedule {saved}, not {current}")


def lr_scheduler(schedule: str, optimizer: torch.optim.Optimizer, lr: float, total_steps: int) -> dict[str, Any]:
    """Return Lightning's lr_scheduler dict for `schedule`, one of LR_SCHEDULES.

    cosine: linear warm-up over the first 5% of `total_steps`, then cosine decay to 0, per step.
    onecycle: torch's OneCycleLR peaking at `lr`, per step; it cannot be resumed with a larger --max-epochs.
    plateau: halve the LR after 2 epochs without a better val_acc, per epoch.
    """
    if schedule == "cosine":
        # LambdaLR rather than OneCycleLR: its checkpointed state holds no step count, so
        # --resume with a larger --max-epochs stretches the schedule instead of raising.
        cosine = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(total_steps, warmup=max(1, total_steps // 20))
        )
        return {"scheduler": cosine, "interval": "step"}
    if schedule == "onecycle":
        onecycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
        return {"scheduler": onecycle, "interval": "step"}
    if schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
        return {"scheduler": plateau, "interval": "epoch", "monitor": "val_acc"}
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def inverse_frequency_weights(train_counts: dict[str, int]) -> list[float]:
    """Return inverse-frequency loss weights, one per class in CLASSES order, normalised to mean 1.

    {"cat": 300, "dog": 100} -> [0.5, 1.5]; balanced counts give all ones.
    """
    missing = [name for name in CLASSES if train_counts.get(name, 0) < 1]
    if missing:
        raise ValueError(f"no training images of {', '.join(missing)}: cannot weight by inverse frequency")
    inverse = [1.0 / train_counts[name] for name in CLASSES]
    return [w * len(inverse) / sum(inverse) for w in inverse]


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """Return step -> LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _moving_average(net: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `net`'s parameters and buffers; its first update copies them."""
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)  # type: ignore[no-untyped-call]
    ema.requires_grad_(False)  # never trained: DDP must not wait for its gradients
    return ema


def _mixer(mixup: float, cutmix: float) -> v2.Transform | None:
    """torchvision's MixUp and/or CutMix over a batch of float images and class indices, or None for neither."""
    mixers = [m(alpha=a, num_classes=len(CLASSES)) for m, a in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if a > 0]
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def _accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes=len(CLASSES), average="micro")


def _split_decay(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into (weights, biases and norm scales): decaying the latter only hurts (timm's default)."""
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return decay, no_decay
