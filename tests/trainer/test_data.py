"""trainer.data on real photos: evaluation input is exactly load_image's, training input is augmented."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from classifier.model import IMAGE_SIZE
from classifier.preprocess import load_image
from trainer.data import CatsDogsData, DataSourceError, Degrade, image_folder, load_samples, train_transform


def test_eval_images_are_exactly_what_workers_decode(data_dir: Path) -> None:
    data = CatsDogsData(data_dir, limit_per_class=2)
    data.setup("validate")
    dataset = data.datasets["val"]
    for (path, _), (image, _) in zip(dataset.samples, dataset, strict=False):
        assert image.dtype == torch.uint8 and image.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
        assert torch.equal(image[0], torch.tensor(load_image(path)))


def test_training_images_without_augmentation_are_decoded_like_evaluation(data_dir: Path) -> None:
    data = CatsDogsData(data_dir, limit_per_class=1, augment=False)
    data.setup("fit")
    (path, _), (image, _) = data.datasets["train"].samples[0], data.datasets["train"][0]
    assert torch.equal(image[0], torch.tensor(load_image(path)))


def test_limit_per_class_keeps_the_first_images_of_each_class(data_dir: Path) -> None:
    samples = CatsDogsData(data_dir, limit_per_class=3).samples()["train"]
    expected = [
        (str(p), label)
        for label, name in enumerate(("cat", "dog"))
        for p in sorted((data_dir / "train" / name).iterdir())[:3]
    ]
    assert sorted(samples) == sorted(expected)
    assert [label for _, label in samples] == [0, 0, 0, 1, 1, 1]
    assert image_folder(data_dir, "train", train=True, limit_per_class=3).samples == samples


def test_class_counts_cover_every_split(data_dir: Path) -> None:
    counts = CatsDogsData(data_dir, limit_per_class=5).class_counts()
    assert counts == {split: {"cat": 5, "dog": 5} for split in ("train", "val", "test")}


def test_train_transform_augments_to_grayscale_uint8(cat_and_dog: list[Path]) -> None:
    with Image.open(cat_and_dog[0]) as img:
        rgb = img.convert("RGB")
    torch.manual_seed(0)
    first = train_transform()(rgb)
    second = train_transform()(rgb)
    assert first.dtype == torch.uint8 and first.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert not torch.equal(first, second)


def test_trivial_augmentation_and_each_degradation_keep_grayscale_uint8(cat_and_dog: list[Path]) -> None:
    with Image.open(cat_and_dog[0]) as img:
        rgb = img.convert("RGB")
    torch.manual_seed(0)
    out = train_transform(policy="trivial")(rgb)
    assert out.dtype == torch.uint8 and out.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    gray = rgb.convert("L")
    for kind in Degrade().kinds:
        for strength in (0.0, 1.0):
            degraded = kind(gray, strength)
            assert degraded.mode == "L" and degraded.size == gray.size
    with pytest.raises(ValueError, match="augmentation"):
        train_transform(policy="heavy")


def test_folders_other_than_cat_and_dog_are_refused(tmp_path: Path) -> None:
    for name in ("bird", "cat"):
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / name / "x.jpg")
    with pytest.raises(DataSourceError, match="bird"):
        load_samples(tmp_path)


def test_datamodule_batches_are_uint8(data_dir: Path) -> None:
    data = CatsDogsData(data_dir, batch_size=3, limit_per_class=4)
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (3, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert labels.shape == (3,)
    assert len(data.val_dataloader().dataset) == 8


def test_unshuffled_training_interleaves_ranks_in_order(data_dir: Path) -> None:
    # Lightning's own DistributedSampler would shuffle training data even without shuffle=True.
    data = CatsDogsData(data_dir, batch_size=2, limit_per_class=4, augment=False, shuffle=False)
    data.setup("fit")
    data.trainer = SimpleNamespace(world_size=2, global_rank=1)  # type: ignore[assignment]
    assert list(data.train_dataloader().sampler) == [1, 3, 5, 7]  # type: ignore[arg-type]
