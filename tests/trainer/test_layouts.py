"""The three --data layouts (ImageFolder root, flat Kaggle folder, CSV) and the seeded, stratified split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifier.store import read_meta
from settings import get_settings
from trainer.cli import main
from trainer.data import CatsDogsData, DataSourceError, Sample, check_source, load_samples, split_samples


def _photos(data_dir: Path, name: str, n: int) -> list[Path]:
    return sorted((data_dir / "train" / name).iterdir())[:n]


@pytest.fixture
def flat(tmp_path: Path, data_dir: Path) -> Path:
    """Kaggle's layout, as symlinks to real photos: 12 cats, 6 dogs (one named Dog.*), a bird and a text file."""
    folder = tmp_path / "flat"
    folder.mkdir()
    for name, n in (("cat", 12), ("dog", 6)):
        for i, photo in enumerate(_photos(data_dir, name, n)):
            (folder / f"{'Dog' if name == 'dog' and i == 0 else name}.{i}.jpg").symlink_to(photo)
    (folder / "bird.1.jpg").symlink_to(_photos(data_dir, "cat", 1)[0])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_flat_folder_is_labelled_by_name_and_split_80_10_10(flat: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 1 image files"):
        samples = load_samples(flat)
    counts = {split: [label for _, label in found].count(1) for split, found in samples.items()}
    assert {split: len(found) for split, found in samples.items()} == {"train": 14, "val": 2, "test": 2}
    assert counts == {"train": 4, "val": 1, "test": 1}  # dogs: 6 -> 4/1/1; cats: 12 -> 10/1/1
    assert all(
        Path(path).name.lower().startswith(("cat.", "dog.")[label])
        for found in samples.values()
        for path, label in found
    )


def test_flat_folder_split_follows_the_fractions(flat: Path) -> None:
    with pytest.warns(UserWarning):
        samples = load_samples(flat, val_fraction=0.25, test_fraction=0.0)
    assert {split: len(found) for split, found in samples.items()} == {"train": 13, "val": 5, "test": 0}
    with pytest.raises(DataSourceError, match="test split is empty"), pytest.warns(UserWarning):
        check_source(flat, val_fraction=0.25, test_fraction=0.0)


def test_csv_with_a_split_column_keeps_its_splits(tmp_path: Path, data_dir: Path) -> None:
    cat, dog = _photos(data_dir, "cat", 1)[0], _photos(data_dir, "dog", 1)[0]
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").symlink_to(cat)
    rows = ["path,label,split", "photos/a.jpg,cat,train", f"{dog},DOG,val", "photos/a.jpg,cat,test"]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    samples = load_samples(tmp_path / "list.csv")
    relative = str(tmp_path / "photos" / "a.jpg")
    assert samples == {"train": [(relative, 0)], "val": [(str(dog), 1)], "test": [(relative, 0)]}


def test_csv_without_a_split_column_is_split_like_a_flat_folder(tmp_path: Path, data_dir: Path) -> None:
    photos = [(p, "cat") for p in _photos(data_dir, "cat", 10)] + [(p, "dog") for p in _photos(data_dir, "dog", 10)]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in photos))
    data = CatsDogsData(tmp_path / "list.csv", batch_size=4)
    assert data.class_counts() == {
        "train": {"cat": 8, "dog": 8},
        "val": {"cat": 1, "dog": 1},
        "test": {"cat": 1, "dog": 1},
    }
    data.setup("test")
    images, labels = next(iter(data.test_dataloader()))
    assert images.shape == (2, 1, 64, 64) and labels.tolist() == [0, 1]
    assert data.describe("test") == f"{tmp_path / 'list.csv'} (test split)"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["path,label", "a.jpg,cat", "a.jpg,horse"], r"list.csv line 3: unknown label 'horse'"),
        (["path,label,split", "a.jpg,cat,holdout"], r"list.csv line 2: unknown split 'holdout'"),
        (["path,label", "missing.jpg,cat"], r"list.csv line 2: no such image file"),
        (["file,class", "a.jpg,cat"], r"header must be path,label"),
    ],
)
def test_csv_errors_name_the_row(tmp_path: Path, cat_and_dog: list[Path], rows: list[str], message: str) -> None:
    (tmp_path / "a.jpg").symlink_to(cat_and_dog[0])
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataSourceError, match=message):
        load_samples(tmp_path / "list.csv")


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    samples: list[Sample] = [(f"c{i}", 0) for i in range(100)] + [(f"d{i}", 1) for i in range(30)]
    split = split_samples(samples, 0.1, 0.2, seed=7)
    assert split == split_samples(list(samples), 0.1, 0.2, seed=7)
    assert split != split_samples(samples, 0.1, 0.2, seed=8)
    per_class = {s: [[label for _, label in found].count(c) for c in (0, 1)] for s, found in split.items()}
    assert per_class == {"train": [70, 21], "val": [10, 3], "test": [20, 6]}
    assert sorted(x for found in split.values() for x in found) == sorted(samples)
    assert all(found == sorted(found, key=samples.index) for found in split.values())  # input order kept


def test_split_fractions_are_checked() -> None:
    with pytest.raises(ValueError, match="sum below 1"):
        split_samples([("a", 0)], 0.5, 0.5)


def test_fit_on_a_flat_folder_with_class_weights_and_plateau(
    flat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite")
    get_settings.cache_clear()  # and again after the run, for the next test
    argv = ["fit", "--data", str(flat), "--runs-dir", str(tmp_path / "runs"), "--model-store", str(tmp_path / "store"),
            "--accelerator", "cpu", "--max-epochs", "1", "--batch-size", "8", "--num-workers", "0",
            "--class-weights", "--lr-schedule", "plateau"]  # fmt: skip
    try:
        with pytest.warns(UserWarning, match="skipped 1 image files"):
            assert main(argv) == 0
    finally:
        get_settings.cache_clear()
    checkpoint = torch.load(
        tmp_path / "runs/catsdogs/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["hyper_parameters"]["lr_schedule"] == "plateau"
    plateau = checkpoint["lr_schedulers"][0]
    assert (plateau["mode"], plateau["factor"], plateau["patience"]) == ("max", 0.5, 2)
    training = read_meta(tmp_path / "store", "v1")["training"]
    assert training["class_counts"] == {
        "train": {"cat": 10, "dog": 4},
        "val": {"cat": 1, "dog": 1},
        "test": {"cat": 1, "dog": 1},
    }
    assert training["hyperparameters"]["class_weights"] == pytest.approx([4 / 7, 10 / 7])  # inverse of 10:4, mean 1
