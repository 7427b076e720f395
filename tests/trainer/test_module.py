"""CatsDogsModule: shapes, the LR schedules, the class-weighted loss, and a fast_dev_run on real photos."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from trainer.data import CatsDogsData
from trainer.module import CatsDogsModule, inverse_frequency_weights, lr_scheduler, warmup_cosine
from trainer.release import from_checkpoint


def test_forward_maps_uint8_batch_to_logits() -> None:
    module = CatsDogsModule()
    assert module(torch.zeros(2, 1, 64, 64, dtype=torch.uint8)).shape == (2, 2)


def test_warmup_cosine_rises_then_decays_to_zero() -> None:
    factor = warmup_cosine(total=100, warmup=10)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0)
    assert factor(150) == pytest.approx(0.0)  # resumed with more steps than planned: stays at the floor


def test_fast_dev_run_on_real_photos(tmp_path: Path, data_dir: Path) -> None:
    module = CatsDogsModule()
    data = CatsDogsData(data_dir, batch_size=4, limit_per_class=4)
    before = module.net.fc.weight.detach().clone()
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    assert not torch.equal(before, module.net.fc.weight)
    assert {"train_loss_epoch", "val_loss", "val_acc", "val_pred_dog_share"} <= set(trainer.callback_metrics)
    tested = trainer.test(module, datamodule=data, verbose=False)[0]
    assert {"test_acc", "test_loss", "test_recall_cat", "test_recall_dog", "test_pred_dog_share"} <= set(tested)
    assert 0.0 <= tested["test_acc"] <= 1.0


def test_channels_last_trains_to_the_same_loss() -> None:
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    losses = []
    for channels_last in (False, True):
        torch.manual_seed(1)
        module = CatsDogsModule(stem="medium", channels_last=channels_last)
        weight = module.net.layer1[0].conv1.weight  # (64, 64, 3, 3): the two layouts differ
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        losses.append(module.training_step((images, labels), 0))
    torch.testing.assert_close(losses[0], losses[1])


def test_inverse_frequency_weights_have_mean_one() -> None:
    assert inverse_frequency_weights({"cat": 300, "dog": 100}) == pytest.approx([0.5, 1.5])
    assert inverse_frequency_weights({"dog": 7, "cat": 7}) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="no training images of dog"):
        inverse_frequency_weights({"cat": 5, "dog": 0})


def test_weighted_loss_is_the_weighted_sum_over_the_batch_size() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    module = CatsDogsModule(label_smoothing=0.0, class_weights=[0.5, 1.5])
    per_image = F.cross_entropy(logits, labels, reduction="none") * torch.tensor([0.5, 1.5])[labels]
    assert module._train_loss(logits, labels) == pytest.approx(per_image.mean().item())
    # What makes DDP exact: the loss of a batch is the mean of its halves' losses, as DDP averages them.
    halves = (module._train_loss(logits[i::2], labels[i::2]) for i in range(2))
    assert module._train_loss(logits, labels) == pytest.approx(sum(halves).item() / 2)
    unweighted = CatsDogsModule(label_smoothing=0.1)
    assert unweighted._train_loss(logits, labels) == pytest.approx(
        F.cross_entropy(logits, labels, label_smoothing=0.1).item()
    )


def test_lr_schedules_are_configured_for_lightning() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    plateau = lr_scheduler("plateau", optimizer, 1e-3, total_steps=100)
    assert {k: v for k, v in plateau.items() if k != "scheduler"} == {"interval": "epoch", "monitor": "val_acc"}
    scheduler = plateau["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (scheduler.mode, scheduler.factor, scheduler.patience) == ("max", 0.5, 2)
    onecycle = lr_scheduler("onecycle", optimizer, 1e-3, total_steps=100)
    assert isinstance(onecycle["scheduler"], torch.optim.lr_scheduler.OneCycleLR) and onecycle["interval"] == "step"
    assert onecycle["scheduler"].total_steps == 100
    assert isinstance(lr_scheduler("cosine", optimizer, 1e-3, 100)["scheduler"], torch.optim.lr_scheduler.LambdaLR)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        CatsDogsModule(lr_schedule="step")


def test_resuming_with_another_lr_schedule_is_refused() -> None:
    checkpoint = {"hyper_parameters": {"lr_schedule": "cosine"}, "lr_schedulers": [{}]}
    CatsDogsModule().on_load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="trained with --lr-schedule cosine, not plateau"):
        CatsDogsModule(lr_schedule="plateau").on_load_checkpoint(checkpoint)


def test_ema_weights_are_evaluated_checkpointed_and_published(tmp_path: Path, data_dir: Path) -> None:
    module = CatsDogsModule(ema_decay=0.9, mixup=0.2, cutmix=1.0)
    data = CatsDogsData(data_dir, batch_size=4, limit_per_class=4, augment="trivial")
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, accelerator="cpu", default_root_dir=tmp_path,
                        enable_progress_bar=False, logger=False)  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert module.ema is not None and module.serving_net() is module.ema.module
    assert int(module.ema.n_averaged) == 3  # one update per step; the first copied the weights
    assert not torch.equal(module.ema.module.fc.weight, module.net.fc.weight)
    assert {"val_acc", "val_raw_acc"} <= set(trainer.callback_metrics)
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    published = from_checkpoint(path)
    assert torch.equal(published.net.fc.weight, module.ema.module.fc.weight)


def test_mixing_gives_soft_targets_and_a_loss_over_them() -> None:
    module = CatsDogsModule(mixup=0.4)
    assert module.mix is not None
    inputs, targets = module.mix(torch.rand(8, 1, 64, 64), torch.tensor([0, 1] * 4))
    assert inputs.shape == (8, 1, 64, 64) and targets.shape == (8, 2)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert module._train_loss(torch.zeros(8, 2), targets).item() == pytest.approx(math.log(2), rel=1e-4)
    assert CatsDogsModule().mix is None


def test_ema_decay_outside_zero_and_one_is_refused() -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        CatsDogsModule(ema_decay=1.0)
