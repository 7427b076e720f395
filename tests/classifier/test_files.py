"""Opening files only inside the allowed folders, and listing a folder with every left-out file counted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from classifier.files import OUTSIDE, FileRefused, Skipped, iter_image_files, open_within
from classifier.preprocess import ImageDecodeError, load_image


@pytest.fixture
def tree(tmp_path: Path, photos: list[Path]) -> tuple[Path, Path]:
    """An allowed root holding photos/ (with a photo and a sub-folder), and a folder outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "photos" / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in [root / "photos" / "a.jpg", root / "photos" / "sub" / "b.jpg", outside / "secret.jpg"]:
        path.write_bytes(photos[0].read_bytes())
    return root, outside


def _read(path: Path, roots: list[Path]) -> bytes:
    fd = open_within(path, roots)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def test_a_file_inside_the_root_opens(tree: tuple[Path, Path], photos: list[Path]) -> None:
    root, _ = tree
    assert _read(root / "photos" / "sub" / "b.jpg", [root]) == photos[0].read_bytes()
    assert _read(root / "photos" / "sub" / ".." / "a.jpg", [root]) == photos[0].read_bytes()


@pytest.mark.parametrize("target", ["outside_file", "/etc/passwd", "/dev/zero", "relative_escape"])
def test_a_file_replaced_by_a_symlink_out_of_the_root_is_refused(tree: tuple[Path, Path], target: str) -> None:
    root, outside = tree
    path = root / "photos" / "a.jpg"
    path.unlink()
    link = {"outside_file": str(outside / "secret.jpg"), "relative_escape": "../../outside/secret.jpg"}.get(
        target, target
    )
    path.symlink_to(link)
    with pytest.raises(FileRefused) as refused:
        open_within(path, [root])
    assert str(refused.value) == OUTSIDE  # nothing about the target: not its name, size or kind


def test_a_folder_replaced_by_a_symlink_out_of_the_root_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    sub = root / "photos" / "sub"
    (sub / "b.jpg").unlink()
    sub.rmdir()
    sub.symlink_to(outside, target_is_directory=True)
    (outside / "b.jpg").write_bytes(b"outside")
    with pytest.raises(FileRefused, match=OUTSIDE):
        open_within(sub / "b.jpg", [root])


def test_a_symlink_that_stays_inside_the_roots_is_followed(tree: tuple[Path, Path], photos: list[Path]) -> None:
    root, outside = tree
    (root / "photos" / "alias.jpg").symlink_to("sub/b.jpg")
    (root / "photos" / "abs.jpg").symlink_to(root / "photos" / "a.jpg")
    (root / "photos" / "other.jpg").symlink_to(outside / "secret.jpg")
    assert _read(root / "photos" / "alias.jpg", [root]) == photos[0].read_bytes()
    assert _read(root / "photos" / "abs.jpg", [root]) == photos[0].read_bytes()
    assert _read(root / "photos" / "other.jpg", [root, outside]) == photos[0].read_bytes()  # a second root


def test_loops_fifos_devices_and_folders_are_refused_without_blocking(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    photos = root / "photos"
    (photos / "loop.jpg").symlink_to("loop.jpg")
    os.mkfifo(photos / "pipe.jpg")
    os.mknod(photos / "null.jpg", 0o600 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
    (photos / "folder.jpg").mkdir()
    expected = {"loop.jpg": "symlink loop", "pipe.jpg": "not a regular file", "null.jpg": "not a regular file",
                "folder.jpg": "is a directory", "missing.jpg": "file not found"}  # fmt: skip
    for name, reason in expected.items():
        with pytest.raises(FileRefused, match=reason):
            open_within(photos / name, [root])


def test_paths_outside_every_root_are_refused_before_anything_is_opened(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    for path in [outside / "secret.jpg", Path("/etc/passwd"), root.parent / "root-sibling.jpg"]:
        with pytest.raises(FileRefused, match=OUTSIDE):
            open_within(path, [root])
    with pytest.raises(FileRefused, match=OUTSIDE):
        open_within(root / ".." / "outside" / "secret.jpg", [root])


def test_load_image_with_roots_turns_a_refusal_into_its_reason(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "photos" / "passwd.jpg").symlink_to("/etc/passwd")
    with pytest.raises(ImageDecodeError) as refused:
        load_image(root / "photos" / "passwd.jpg", roots=[root])
    assert str(refused.value) == OUTSIDE
    assert load_image(root / "photos" / "a.jpg", roots=[root]).shape == (64, 64)


def test_listing_counts_every_file_it_leaves_out(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    photos = root / "photos"
    (photos / "notes.txt").write_text("not a photo")
    (photos / "stolen.jpg").symlink_to(outside / "secret.jpg")
    (photos / "loop.jpg").symlink_to("loop.jpg")
    (photos / "x.jpg").mkdir()
    (photos / "x.jpg" / "inside.png").write_bytes(b"")
    os.mkfifo(photos / "pipe.jpg")
    (photos / "linked").symlink_to(photos / "sub", target_is_directory=True)
    skipped = Skipped()
    listed = [p.relative_to(photos).as_posix() for p in iter_image_files(photos, [root], skipped)]
    assert listed == ["a.jpg", "sub/b.jpg", "x.jpg/inside.png"]
    assert skipped.counts == {"extension_not_allowed": 1, "outside_roots": 1, "symlink_loop": 1,
                              "not_regular_file": 2, "symlinked_folder": 1}  # fmt: skip
    assert skipped.examples["outside_roots"] == [str(photos / "stolen.jpg")]
    assert sorted(skipped.examples["not_regular_file"]) == [str(photos / "pipe.jpg"), str(photos / "x.jpg")]
    assert skipped.total == 6


def test_listing_keeps_only_the_first_few_examples_of_each_reason(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"{i:02}.txt").write_text("")
    skipped = Skipped()
    assert list(iter_image_files(tmp_path, skipped=skipped)) == []
    assert skipped.counts == {"extension_not_allowed": 20}
    assert skipped.examples["extension_not_allowed"] == [str(tmp_path / f"{i:02}.txt") for i in range(5)]


def test_the_whole_file_system_as_the_root_still_refuses_loops(tree: tuple[Path, Path], photos: list[Path]) -> None:
    root, _ = tree
    anywhere = [Path("/")]
    assert _read(Path("/../..") / root.relative_to("/") / "photos" / "a.jpg", anywhere) == photos[0].read_bytes()
    (root / "photos" / "loop.jpg").symlink_to("loop.jpg")
    with pytest.raises(FileRefused, match="symlink loop"):
        open_within(root / "photos" / "loop.jpg", anywhere)
