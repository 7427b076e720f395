"""Thumbnails from real photos: made only inside the allowed folders, cached by the file's state, bounded."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from classifier.files import path_to_text
from classifier.thumbnails import SIZES, ThumbnailCache, ThumbnailError
from tests.conftest import FULLRES
from tests.factories import copy_photos


@pytest.fixture
def root(tmp_path: Path, photos: list[Path]) -> Path:
    copy_photos(photos, tmp_path / "root")
    return (tmp_path / "root").resolve()


@pytest.fixture
def cache(tmp_path: Path) -> ThumbnailCache:
    return ThumbnailCache(tmp_path / "cache", max_bytes=10 * 2**20)


def _size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as img:
        assert img.format == "JPEG"
        return img.size


def test_a_thumbnail_is_a_jpeg_no_larger_than_asked(cache: ThumbnailCache, root: Path, tmp_path: Path) -> None:
    small_photo = next(root.iterdir())  # 128x128: not enlarged
    assert _size(cache.get(str(small_photo), [root], SIZES["large"]).jpeg) == (128, 128)
    big = Path(shutil.copy(sorted((FULLRES / "cat").glob("*.jpg"))[0], root / "big.jpg"))
    width, height = Image.open(big).size
    assert max(width, height) > SIZES["small"]
    for size in SIZES.values():
        got = _size(cache.get(str(big), [root], size).jpeg)
        assert max(got) == min(size, max(width, height))
        assert abs(got[0] / got[1] - width / height) < 0.02


def test_the_cache_serves_an_unchanged_file_and_remakes_a_changed_one(
    cache: ThumbnailCache, root: Path, photos: list[Path]
) -> None:
    photo = root / photos[0].name
    first = cache.get(str(photo), [root], 256)
    cached = cache._file(first.key)
    cached.write_bytes(b"what the cache holds")  # so that a hit is told from a remake
    again = cache.get(str(photo), [root], 256)
    assert (again.key, again.jpeg) == (first.key, b"what the cache holds")
    assert cache.get(str(photo), [root], 512).key != first.key  # another size, another key
    photo.write_bytes(photos[-1].read_bytes())  # a dog in place of the cat: new size and mtime
    changed = cache.get(str(photo), [root], 256)
    assert changed.key != first.key and changed.jpeg != b"what the cache holds"
    assert _size(changed.jpeg) == (128, 128)


def test_the_key_changes_with_the_mtime_alone(cache: ThumbnailCache, root: Path, photos: list[Path]) -> None:
    photo = root / photos[0].name
    first = cache.get(str(photo), [root], 256)
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.get(str(photo), [root], 256).key != first.key


def test_the_cache_stays_within_its_bound_evicting_the_least_recently_used(
    tmp_path: Path, root: Path, photos: list[Path]
) -> None:
    one = len(ThumbnailCache(tmp_path / "probe", 10**9).get(str(root / photos[0].name), [root], 256).jpeg)
    cache = ThumbnailCache(tmp_path / "bounded", max_bytes=4 * one)
    kept = root / photos[0].name
    for photo in photos:
        cache.get(str(kept), [root], 256)  # used again and again: never the least recently used
        cache.get(str(root / photo.name), [root], 256)
        files = list((tmp_path / "bounded").glob("*/*.jpg"))
        assert sum(f.stat().st_size for f in files) <= 4 * one * 1.2  # thumbnails differ a little in size
    assert len(files) < len(photos)
    assert cache._file(cache.get(str(kept), [root], 256).key).exists()
    newest = cache.get(str(root / photos[-1].name), [root], 256)
    assert cache._file(newest.key).exists()
    assert not list((tmp_path / "bounded").glob("*/.*.tmp"))


@pytest.mark.parametrize(
    ("where", "kind", "reason"),
    [
        (lambda root, outside: outside / "cat.jpg", "outside", "outside the allowed folders"),
        (lambda root, outside: root / ".." / "outside" / "cat.jpg", "outside", "outside the allowed folders"),
        (lambda root, outside: root / "link.jpg", "outside", "outside the allowed folders"),
        (lambda root, outside: root / "missing.jpg", "not_found", "file not found"),
        (lambda root, outside: root / "notes.jpg", "unreadable", "not a recognised image"),
        (lambda root, outside: root / "empty.jpg", "unreadable", "not a recognised image"),
        (lambda root, outside: root / "folder.jpg", "unreadable", "is a directory"),
    ],
)
def test_files_are_opened_only_inside_the_roots_and_refusals_say_why(
    cache: ThumbnailCache, root: Path, photos: list[Path], where, kind: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    outside = root.parent / "outside"
    copy_photos(photos[:1], outside)
    (outside / photos[0].name).rename(outside / "cat.jpg")
    (root / "link.jpg").symlink_to(outside / "cat.jpg")
    (root / "notes.jpg").write_text("not a photo")
    (root / "empty.jpg").write_bytes(b"")
    (root / "folder.jpg").mkdir()
    with pytest.raises(ThumbnailError, match=reason) as refused:
        cache.get(path_to_text(where(root, outside)), [root], 256)
    assert refused.value.kind == kind
    assert not list(cache.folder.glob("*/*.jpg"))  # nothing was cached for a refused file


def test_a_symlink_inside_the_roots_is_followed(cache: ThumbnailCache, root: Path, photos: list[Path]) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "link.jpg").symlink_to(root / photos[0].name)
    assert _size(cache.get(str(root / "sub" / "link.jpg"), [root], 256).jpeg) == (128, 128)


def test_a_cache_that_cannot_be_written_still_serves_the_thumbnail(
    tmp_path: Path, root: Path, photos: list[Path]
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    cache = ThumbnailCache(tmp_path / "not-a-folder", max_bytes=10**6)
    assert _size(cache.get(str(root / photos[0].name), [root], 256).jpeg) == (128, 128)
