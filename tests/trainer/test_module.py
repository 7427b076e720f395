"""CatsDogsModule: shapes, the LR schedule, and a fast_dev_run on real photos."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from trainer.data import CatsDogsData
from trainer.module import CatsDogsModule, warmup_cosine


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
