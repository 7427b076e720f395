"""Training and evaluation data, as (1, 64, 64) uint8 tensors, from three layouts.

`--data` may be:

- an ImageFolder root with train/, val/ and test/, each holding cat/ and dog/;
- a flat folder whose file names carry the label, as in Kaggle's set: cat.123.jpg, dog.4.jpg;
- a CSV file with the header `path,label` and an optional third column `split`
  (train, val or test); paths are relative to the CSV's folder, or absolute. Further
  columns are ignored.

Extra data (`trainer fit --extra-data`, e.g. corrections people made) are such CSVs,
added to the train split only (`add_extra_train`).

The flat folder and a CSV without `split` are split by `split_samples`: seeded,
stratified by class, 80/10/10 by default, so every run and `trainer test` see
the same test images. Evaluation decodes with `classifier.preprocess.load_image`,
exactly what the workers call, so validation and test accuracy describe
production input.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets
from torchvision.transforms import v2

from classifier.files import IMAGE_SUFFIXES
from classifier.model import CLASSES, IMAGE_SIZE
from classifier.preprocess import load_image

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0  # fixed, not --seed: the test set must not change with the training seed
VAL_FRACTION = TEST_FRACTION = 0.1
LAYOUTS_HELP = (
    "an ImageFolder root with train/, val/, test/, a folder of cat.N.jpg and dog.N.jpg files, "
    "or a CSV file with path,label[,split]"
)

Sample = tuple[str, int]  # (image path, class index in CLASSES)
Samples = dict[str, list[Sample]]


class DataSourceError(ValueError):
    """A --data path that is none of the layouts, or a CSV row that cannot be used; the message says which."""


# --- decoding ---------------------------------------------------------------


AUGMENTATIONS = ("basic", "trivial")


def train_transform(size: int = IMAGE_SIZE, policy: str = "basic") -> v2.Compose:
    """Map an RGB PIL image to an augmented (1, size, size) uint8 tensor.

    basic: random resized crop, flip, rotation up to 10 degrees, brightness and contrast jitter.
    trivial: basic, then one TrivialAugment operation of random strength, then, on half the images, one
    degradation of the photos people have (blur, sensor noise, JPEG artefacts, a low-resolution source).
    """
    if policy not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {policy!r}; choose one of {', '.join(AUGMENTATIONS)}")
    # trivial crops at twice the input and shrinks last, as load_image shrinks a large photo through
    # 128x128: its degradations act at the scale a photo has before that step.
    crop = size if policy == "basic" else 2 * size
    steps: list[v2.Transform] = [
        v2.Grayscale(num_output_channels=1),
        v2.RandomResizedCrop(crop, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(10),
        v2.ColorJitter(brightness=0.25, contrast=0.25),
    ]
    if policy == "trivial":
        steps += [v2.TrivialAugmentWide(), v2.RandomApply([Degrade()], p=0.5), v2.Resize(size, antialias=True)]
    return v2.Compose([*steps, v2.PILToTensor()])


class Degrade(v2.Transform):  # type: ignore[misc]
    """One degradation at random strength, on a grayscale PIL image: Gaussian blur, Gaussian noise,
    JPEG re-encoding, or a trip through a lower resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds = (self._blur, self._noise, self._jpeg, self._downscale)

    def forward(self, *inputs: Any) -> Any:
        img = inputs[0]
        kind = self.kinds[int(torch.randint(len(self.kinds), ()))]
        return kind(img, float(torch.rand(())))

    @staticmethod
    def _blur(img: Image.Image, strength: float) -> Image.Image:
        return img.filter(ImageFilter.GaussianBlur(radius=0.3 + 1.5 * strength))

    @staticmethod
    def _noise(img: Image.Image, strength: float) -> Image.Image:
        pixels = np.asarray(img, dtype=np.float32)
        noise = torch.randn(pixels.shape).numpy() * (4 + 24 * strength)
        return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), mode=img.mode)

    @staticmethod
    def _jpeg(img: Image.Image, strength: float) -> Image.Image:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(60 - 45 * strength))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert(img.mode)

    @staticmethod
    def _downscale(img: Image.Image, strength: float) -> Image.Image:
        side = max(16, int(min(img.size) * (0.6 - 0.4 * strength)))
        return img.resize((side, side), Image.Resampling.BILINEAR).resize(img.size, Image.Resampling.BILINEAR)


class AugmentedImage:
    """Decode an image file with PIL and augment it: path -> (1, IMAGE_SIZE, IMAGE_SIZE) uint8 tensor."""

    def __init__(self, policy: str = "basic") -> None:
        self.transform = train_transform(policy=policy)

    def __call__(self, path: str) -> torch.Tensor:
        with Image.open(path) as img:
            return self.transform(img.convert("RGB"))  # type: ignore[no-any-return]


def eval_image(path: str) -> torch.Tensor:
    """Decode exactly as the workers do (`load_image`): path -> (1, IMAGE_SIZE, IMAGE_SIZE) uint8 tensor."""
    return torch.tensor(load_image(path)).unsqueeze(0)  # a copy: load_image may return a read-only view


class ImageSamples(Dataset[tuple[torch.Tensor, int]]):
    """(path, class index) pairs served as (image tensor, class index), decoded by `decode(path)`."""

    def __init__(self, samples: list[Sample], decode: Callable[[str], torch.Tensor]) -> None:
        self.samples = samples
        self.decode = decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.decode(path), label


# --- layouts ----------------------------------------------------------------


def load_samples(
    source: Path, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> Samples:
    """Return {split: [(path, class index), ...]} for the layout at `source`.

    An ImageFolder root's missing splits are absent.
    """
    if source.is_file():
        samples, splits = _read_csv(source)
        if splits is not None:
            return {split: [x for x, s in zip(samples, splits, strict=False) if s == split] for split in SPLITS}
    elif any((source / split).is_dir() for split in SPLITS):
        return _image_folder_samples(source)
    elif source.is_dir():
        samples = _flat_samples(source)
    else:
        raise DataSourceError(f"{source}: no such file or folder; expected {LAYOUTS_HELP}")
    if not samples:
        raise DataSourceError(f"{source}: no train, val, test folder and no labelled images; expected {LAYOUTS_HELP}")
    return split_samples(samples, val_fraction, test_fraction, seed)


def _image_folder_samples(root: Path) -> Samples:
    return {split: class_folder_samples(root / split) for split in SPLITS if (root / split).is_dir()}


def class_folder_samples(folder: Path) -> list[Sample]:
    """List `folder`/cat/* and `folder`/dog/* in ImageFolder's order; its class folders must be exactly CLASSES."""
    found = datasets.ImageFolder(folder)  # lists files; decodes nothing
    if tuple(found.classes) != CLASSES:
        raise DataSourceError(f"{folder}: class folders {found.classes} are not {list(CLASSES)}")
    samples: list[Sample] = found.samples
    return samples


def _flat_samples(folder: Path) -> list[Sample]:
    """Label each image file in `folder` (not below) by its name's prefix: Cat.12.jpg -> cat."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    prefixes = [p.name.split(".")[0].lower() for p in images]
    labelled = [
        (str(p), CLASSES.index(prefix)) for p, prefix in zip(images, prefixes, strict=False) if prefix in CLASSES
    ]
    if skipped := len(images) - len(labelled):
        rank_zero_warn(f"{folder}: skipped {skipped} image files whose name does not start with cat. or dog.")
    return labelled


def _read_csv(path: Path) -> tuple[list[Sample], list[str] | None]:
    """Read `path,label[,split]` rows: return the samples, and each row's split if the CSV has that column.

    Other columns after path and label (e.g. the job_id of `catsdogs corrections export`) are ignored.
    """
    if path.suffix.lower() != ".csv":
        raise DataSourceError(f"{path}: not a .csv file; expected {LAYOUTS_HELP}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if columns[:2] != ["path", "label"]:
            raise DataSourceError(f"{path}: header must be path,label, then split or other columns if any, "
                                  f"not {','.join(columns)!r}")  # fmt: skip
        reader.fieldnames = columns
        rows = [_csv_row(path, line, row, "split" in columns) for line, row in enumerate(reader, start=2)]
    return [sample for sample, _ in rows], [split for _, split in rows] if "split" in columns else None


def read_csv_samples(path: Path) -> list[Sample]:
    """Every row of a `path,label[,...]` CSV as a sample, whatever its split column says (for --extra-data)."""
    return _read_csv(path)[0]


def add_extra_train(samples: Samples, extra: list[Sample]) -> tuple[Samples, ExtraUse]:
    """Add `extra` samples to the train split only, their labels replacing those of the same files there.

    Files that are in val or test are left out, so that the reported metrics stay comparable with and
    without extra data; of an extra file listed twice, the last row counts.
    """
    held_out = {os.path.realpath(p) for split in ("val", "test") for p, _ in samples.get(split, [])}
    latest = {os.path.realpath(p): (p, label) for p, label in extra}
    used = {real: sample for real, sample in latest.items() if real not in held_out}
    train, replaced = [], 0
    for path, label in samples.get("train", []):
        real = os.path.realpath(path)
        replaced += real in used
        if real not in used:
            train.append((path, label))
    merged = {**samples, "train": train + list(used.values())}
    return merged, ExtraUse(list(used.values()), replaced, len(latest) - len(used))


@dataclass(frozen=True)
class ExtraUse:
    """What `add_extra_train` did: the extra samples in train, how many train files they relabelled (or
    confirmed), and how many it left out as val or test files."""

    used: list[Sample]
    replaced: int
    held_out: int


def _csv_row(csv_path: Path, line: int, row: dict[str, str], has_split: bool) -> tuple[Sample, str]:
    """Return ((absolute path, class index), split) for one CSV row, or raise DataSourceError naming the row."""
    where = f"{csv_path} line {line}"
    label = (row.get("label") or "").strip().lower()
    if label not in CLASSES:
        raise DataSourceError(f"{where}: unknown label {row.get('label')!r}; expected one of {', '.join(CLASSES)}")
    split = (row.get("split") or "").strip().lower() if has_split else "train"
    if split not in SPLITS:
        raise DataSourceError(f"{where}: unknown split {row.get('split')!r}; expected one of {', '.join(SPLITS)}")
    image = csv_path.parent / (row.get("path") or "").strip()  # an absolute path replaces the folder
    if not image.is_file():
        raise DataSourceError(f"{where}: no such image file {str(image)!r}")
    return (str(image), CLASSES.index(label)), split


def image_folder(root: Path, split: str, train: bool, limit_per_class: int | None = None) -> ImageSamples:
    """Return the class folders of `root/split` as a dataset: augmented if `train`, else decoded like the workers."""
    samples = class_folder_samples(root / split)
    return make_dataset(first_per_class(samples, limit_per_class) if limit_per_class else samples, train)


def eval_dataset(
    data: Path,
    split: str = "test",
    limit_per_class: int | None = None,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
) -> ImageSamples:
    """Return `split` of any layout at `data`, decoded like the workers.

    A folder holding cat/ and dog/ directly is taken whole.
    """
    if not (data / split).is_dir() and all((data / name).is_dir() for name in CLASSES):
        samples = class_folder_samples(data)
    else:
        samples = load_samples(data, val_fraction, test_fraction).get(split, [])
    if not samples:
        raise DataSourceError(f"{data}: no {split} images; expected {LAYOUTS_HELP}, or a folder of cat/ and dog/")
    return make_dataset(first_per_class(samples, limit_per_class) if limit_per_class else samples, train=False)


def make_dataset(samples: list[Sample], train: bool, augment: bool | str = True) -> ImageSamples:
    """Serve `samples` augmented (train and augment: True for "basic", or a policy of AUGMENTATIONS)
    or exactly as the workers decode them."""
    policy = "basic" if augment is True else augment
    decode: Callable[[str], torch.Tensor] = AugmentedImage(policy) if train and policy else eval_image
    return ImageSamples(samples, decode)


def describe(data: Path, split: str) -> str:
    """Where `split` of `data` comes from, for reports: DATA/SPLIT for an ImageFolder root, else DATA (SPLIT split)."""
    return str(data / split) if (data / split).is_dir() else f"{data} ({split} split)"


# --- splitting --------------------------------------------------------------


def split_samples(
    samples: list[Sample],
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> Samples:
    """Split into train/val/test, stratified: each class is permuted by (seed, class) and cut at the fractions.

    The result depends only on `samples` (in order), the fractions and the seed; each split keeps the input order.
    """
    check_fractions(val_fraction, test_fraction)
    assigned = ["train"] * len(samples)
    for label in range(len(CLASSES)):
        members = [i for i, (_, c) in enumerate(samples) if c == label]
        n_test, n_val = _share(len(members), test_fraction), _share(len(members), val_fraction)
        order = np.random.default_rng([seed, label]).permutation(len(members))
        for rank, k in enumerate(order[: n_test + n_val]):
            assigned[members[k]] = "test" if rank < n_test else "val"
    return {split: [s for s, a in zip(samples, assigned, strict=False) if a == split] for split in SPLITS}


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ValueError unless both fractions are in [0, 1) and leave some training data."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val fraction {val_fraction} and test fraction {test_fraction} must be >= 0 and sum below 1")


def _share(n: int, fraction: float) -> int:
    return int(n * fraction + 0.5)  # round half up, so 5 images at 0.1 give 1, not Python's round-half-even 0


def first_per_class(samples: list[Sample], limit: int) -> list[Sample]:
    """Keep the first `limit` samples of each class, in their order."""
    seen = [0] * len(CLASSES)
    kept = []
    for path, label in samples:
        if seen[label] < limit:
            seen[label] += 1
            kept.append((path, label))
    return kept


def count_classes(samples: list[Sample]) -> dict[str, int]:
    """Return {class name: number of samples}, every class present."""
    counts = np.bincount([label for _, label in samples], minlength=len(CLASSES))
    return {name: int(n) for name, n in zip(CLASSES, counts, strict=False)}


def _format_counts(counts: dict[str, dict[str, int]]) -> str:
    """{"train": {"cat": 8, "dog": 8}, ...} -> 'train cat 8 dog 8; ...'."""
    return "; ".join(
        f"{split} " + " ".join(f"{c} {n}" for c, n in per_class.items()) for split, per_class in counts.items()
    )


def check_source(
    path: Path,
    splits: tuple[str, ...] = SPLITS,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
) -> Path:
    """Return `path` resolved if it is a layout providing non-empty `splits`; else raise DataSourceError saying why."""
    samples = load_samples(path, val_fraction, test_fraction)
    if missing := [s for s in splits if s not in samples]:
        raise DataSourceError(f"{path}: no {', '.join(missing)} folder; expected {LAYOUTS_HELP}")
    if empty := [s for s in splits if not samples[s]]:
        raise DataSourceError(f"{path}: the {', '.join(empty)} split is empty")
    return path.resolve()


def default_num_workers(processes_per_node: int = 1) -> int:
    """Loader workers per process: the node's cores shared out, one left for the training loop."""
    return max(0, min(8, (os.cpu_count() or 1) // max(1, processes_per_node) - 1))


# --- the DataModule ---------------------------------------------------------


class CatsDogsData(L.LightningDataModule):
    """The train/val/test splits of `data_dir` (any of the three layouts); `batch_size` is per process.

    augment=False decodes training images like evaluation ones and shuffle=False keeps their order: with
    both, N processes with batch B see the same global batches as one process with batch N*B, since
    rank r then takes the samples r, r+N, r+2N, ...
    """

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 128,
        num_workers: int = 0,
        limit_per_class: int | None = None,
        val_fraction: float = VAL_FRACTION,
        test_fraction: float = TEST_FRACTION,
        augment: bool | str = True,
        shuffle: bool = True,
        extra_train: list[Sample] | None = None,
    ) -> None:
        super().__init__()
        check_fractions(val_fraction, test_fraction)
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit_per_class = limit_per_class
        self.fractions = (val_fraction, test_fraction)
        self.augment = augment
        self.shuffle = shuffle
        self.extra_train = extra_train or []  # added to train only, after --limit-per-class (add_extra_train)
        self.extra_use: ExtraUse | None = None
        self.datasets: dict[str, ImageSamples] = {}
        self._samples: Samples | None = None

    def samples(self) -> Samples:
        """Return {split: [(path, class index), ...]} after --limit-per-class, listing the source once."""
        if self._samples is None:
            found = load_samples(self.data_dir, *self.fractions)
            limit = self.limit_per_class
            self._samples = {s: first_per_class(v, limit) if limit else v for s, v in found.items()}
            if self.extra_train:
                self._samples, self.extra_use = add_extra_train(self._samples, self.extra_train)
        return self._samples

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Return {split: {class: images}} for every split the source has.

        For example {"train": {"cat": 8000, "dog": 8000}, ...}.
        """
        return {split: count_classes(samples) for split, samples in self.samples().items()}

    def describe(self, split: str) -> str:
        """Where `split` comes from, for reports: DATA/SPLIT for an ImageFolder root, else DATA (SPLIT split)."""
        return describe(self.data_dir, split)

    def setup(self, stage: str) -> None:
        if not self.datasets:
            rank_zero_info(f"data {self.data_dir}: {_format_counts(self.class_counts())}")
        for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ()):
            if split not in self.datasets:
                self.datasets[split] = self._dataset(split)

    def _dataset(self, split: str) -> ImageSamples:
        samples = self.samples().get(split)
        if not samples:
            raise DataSourceError(f"{self.data_dir}: no {split} images")
        return make_dataset(samples, train=split == "train", augment=self.augment)

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        return self._loader("train", shuffle=self.shuffle, drop_last=True)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        return self._loader("test")

    def _loader(
        self, split: str, shuffle: bool = False, drop_last: bool = False
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        # drop_last on train only: a tiny last batch gives a noisy BatchNorm step; evaluation keeps every image.
        # It depends on the global batch only (N processes x B vs one x N*B), so both drop the same images.
        dataset = self.datasets[split]
        world_size = self.trainer.world_size if self.trainer else 1
        per_process = len(dataset) // world_size
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=self._ordered_sampler(dataset, world_size) if split == "train" and not shuffle else None,
            drop_last=drop_last and per_process > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _ordered_sampler(self, dataset: ImageSamples, world_size: int) -> DistributedSampler[int] | None:
        """Rank r of N takes samples r, r+N, ...

        Lightning's own DistributedSampler shuffles training data regardless.
        """
        if world_size == 1 or self.trainer is None:
            return None
        return DistributedSampler(dataset, num_replicas=world_size, rank=self.trainer.global_rank, shuffle=False)
