"""trainer.plots: every picture renders to a PNG file and to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from trainer.evaluate import confident_mistakes, report
from trainer.plots import learning_curves_figure, mistakes_grid_figure, report_figures, save_figures

HISTORY = [
    {"epoch": 0, "train_loss_epoch": 0.69, "val_loss": 0.68, "val_acc": 0.55, "val_pred_dog_share": 0.9},
    {"epoch": 1, "train_loss_epoch": 0.60, "val_loss": 0.62, "val_acc": 0.66, "val_pred_dog_share": 0.5},
]


def test_report_pictures_are_written_as_png_and_logged(tmp_path: Path, photos: list[Path]) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(photos), 2, generator=generator) * 3
    labels = torch.tensor([0 if p.parent.name == "cat" else 1 for p in photos])
    result = report(logits, labels, temperature=1.3)
    result["mistakes"] = confident_mistakes(logits, labels, [str(p) for p in photos], temperature=1.3, k=8)
    assert result["mistakes"]  # random logits on 12 photos get some wrong
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        files = save_figures(report_figures(result, HISTORY), tmp_path / "out", writer, step=7)
    names = {"confusion_matrix", "reliability", "mistakes", "learning_curves"}
    assert {f.stem for f in files} == names
    assert all(f.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and f.stat().st_size > 5000 for f in files)
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert set(events.Tags()["images"]) == {f"report/{name}" for name in names}


def test_empty_inputs_still_draw(tmp_path: Path) -> None:
    files = save_figures({"none": mistakes_grid_figure([]), "curves": learning_curves_figure([])}, tmp_path)
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in files)
