"""ImageFolder data for training and evaluation, as (1, 64, 64) uint8 tensors.

Evaluation decodes with `classifier.preprocess.load_image`, exactly what the
workers call, so validation and test accuracy describe production input.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from classifier.model import CLASSES, IMAGE_SIZE
from classifier.preprocess import load_image

SPLITS = ("train", "val", "test")


def train_transform(size: int = IMAGE_SIZE) -> v2.Compose:
    """Map an RGB PIL image to an augmented (1, size, size) uint8 tensor."""
    return v2.Compose(
        [
            v2.Grayscale(num_output_channels=1),
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10),
            v2.ColorJitter(brightness=0.25, contrast=0.25),
            v2.PILToTensor(),
        ]
    )


def eval_tensor(image: np.ndarray) -> torch.Tensor:
    """Map `load_image`'s (H, W) uint8 array to a (1, H, W) uint8 tensor; no augmentation."""
    return torch.tensor(image).unsqueeze(0)  # a copy: load_image may return a read-only view of PIL memory


def image_folder(root: Path, split: str, train: bool, limit_per_class: int | None = None) -> Dataset:
    """Return `root/split` as (image, class index) pairs; class folders must be exactly CLASSES."""
    if train:
        dataset = datasets.ImageFolder(root / split, transform=train_transform())
    else:
        dataset = datasets.ImageFolder(root / split, loader=load_image, transform=eval_tensor)
    if tuple(dataset.classes) != CLASSES:
        raise ValueError(f"{root / split}: class folders {dataset.classes} are not {list(CLASSES)}")
    return dataset if limit_per_class is None else _first_per_class(dataset, limit_per_class)


def _first_per_class(dataset: datasets.ImageFolder, limit: int) -> Subset:
    """Keep the first `limit` samples of each class, in ImageFolder's sorted order."""
    targets = np.asarray(dataset.targets)
    keep = [int(i) for c in range(len(dataset.classes)) for i in np.flatnonzero(targets == c)[:limit]]
    return Subset(dataset, keep)


def default_num_workers(processes_per_node: int = 1) -> int:
    """Loader workers per process: the node's cores shared out, one left for the training loop."""
    return max(0, min(8, (os.cpu_count() or 1) // max(1, processes_per_node) - 1))


class CatsDogsData(L.LightningDataModule):
    """The ImageFolder splits under `data_dir`; `batch_size` is per process."""

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 128,
        num_workers: int = 0,
        limit_per_class: int | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit_per_class = limit_per_class
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = image_folder(self.data_dir, split, split == "train", self.limit_per_class)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        # drop_last on train only: a tiny last batch gives a noisy BatchNorm step; evaluation keeps every image.
        dataset = self.datasets[split]
        per_process = len(dataset) // (self.trainer.world_size if self.trainer else 1)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last and per_process > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
