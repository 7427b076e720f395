from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.files import iter_image_files, path_to_text, text_to_path
from classifier.preprocess import ImageDecodeError, load_image
from tests.factories import corrupt_files, png_bytes


def test_photo_becomes_64x64_grayscale_uint8(photos: list[Path]) -> None:
    array = load_image(photos[0])
    assert array.shape == (64, 64)
    assert array.dtype == np.uint8
    assert 0 < array.mean() < 255


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("zero_bytes", "empty file"),
        ("truncated", "cannot decode"),
        ("text", "not a recognised image"),
        ("garbage", "not a recognised image"),
    ],
)
def test_undecodable_files_raise_with_a_reason(tmp_path: Path, photos: list[Path], kind: str, reason: str) -> None:
    files = corrupt_files(tmp_path, photos[0])
    with pytest.raises(ImageDecodeError, match=reason):
        load_image(files[kind])


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "gone.jpg")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "L", "1"])
def test_png_modes_decode(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes(mode))
    assert load_image(path).shape == (64, 64)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    path.write_bytes(png_bytes("I;16"))  # every pixel 40000 of 65535
    assert load_image(path).mean() == pytest.approx(40000 / 65535 * 255, abs=1)


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(path)
    assert load_image(path).min() == 255


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = np.zeros((20, 40), dtype=np.uint8)
    array[:, :20] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=95)
    shown = load_image(path, size=32)
    assert shown[:8].mean() > 200 and shown[-8:].mean() < 50  # the white half is now on top


def test_cmyk_jpeg_decodes(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (30, 30), (0, 0, 0, 255)).save(path)
    assert load_image(path).max() < 50


def test_formats_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "icon.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="ICO")
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ImageDecodeError, match="not allowed"):
        load_image(path)


def test_listing_is_recursive_sorted_and_skips_other_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ["b/2.JPG", "a.png", "b/1.jpeg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)] == ["a.png", "b/1.jpeg", "b/2.JPG"]


def test_listing_skips_symlinks_leading_outside_and_survives_loops(tmp_path: Path) -> None:
    folder, outside = tmp_path / "photos", tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in [folder / "a.jpg", folder / "sub" / "b.jpg", outside / "secret.jpg"]:
        path.write_bytes(b"")
    (folder / "alias.jpg").symlink_to(folder / "sub" / "b.jpg")
    (folder / "stolen.jpg").symlink_to(outside / "secret.jpg")
    (folder / "up.jpg").symlink_to(folder / ".." / "outside" / "secret.jpg")
    (folder / "outside").symlink_to(outside, target_is_directory=True)
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "ping.jpg").symlink_to(folder / "pong.jpg")
    (folder / "pong.jpg").symlink_to(folder / "ping.jpg")
    names = [p.relative_to(folder).as_posix() for p in iter_image_files(folder)]
    assert names == ["a.jpg", "alias.jpg", "sub/b.jpg"]
    wider = [p.relative_to(folder).as_posix() for p in iter_image_files(folder, within=[folder, outside])]
    assert wider == ["a.jpg", "alias.jpg", "stolen.jpg", "up.jpg", "sub/b.jpg"]


def test_animated_gif_uses_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "blink.gif"
    white, black = Image.new("L", (20, 20), 255), Image.new("L", (20, 20), 0)
    white.save(path, save_all=True, append_images=[black], duration=100, loop=0)
    assert load_image(path).min() == 255


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 6_000)).save(path)  # 60 megapixels in a few kilobytes
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageDecodeError, match="refused"):
        load_image(path)


ODD_NAMES = [
    b"plain.jpg",
    b"a cat with spaces.jpg",
    b"two\nlines.jpg",
    b"cat\xff.jpg",  # not UTF-8
    b"cat\\xff.jpg",  # the text of the name above, as a real name
    b"cat\\\\xff.jpg",
    b"back\\slash.jpg",
    b"\xed\xb3\xbf.jpg",  # an encoded surrogate: not UTF-8 either
    b"caf\xc3\xa9.jpg",  # NFC
    b"cafe\xcc\x81.jpg",  # NFD: the same name once normalised, a different file
]


def test_path_text_is_storable_reversible_and_never_shared() -> None:
    paths = [b"/photos/" + name for name in ODD_NAMES]
    texts = [path_to_text(os.fsdecode(p)) for p in paths]
    assert texts[:5] == [
        "/photos/plain.jpg",
        "/photos/a cat with spaces.jpg",
        "/photos/two\nlines.jpg",
        "/photos/cat\\xff.jpg",
        "/photos/cat\\\\xff.jpg",
    ]
    assert all(t.encode("utf-8") for t in texts)  # no surrogates: PostgreSQL, SQLite and JSON can hold them
    assert len(set(texts)) == len(texts)
    assert [os.fsencode(text_to_path(t)) for t in texts] == paths


def test_path_text_round_trips_every_byte() -> None:
    rng = random.Random(0)
    names = [bytes([b]) for b in range(1, 256) if b != ord("/")]
    names += [
        bytes(rng.choice(range(1, 256)) for _ in range(rng.randint(1, 12))).replace(b"/", b"") for _ in range(2000)
    ]
    texts = {path_to_text(os.fsdecode(n)): n for n in names if n}
    assert len(texts) == len(set(n for n in names if n))
    assert all(os.fsencode(text_to_path(text)) == name for text, name in texts.items())


def test_listed_odd_names_open_by_their_text(tmp_path: Path, photos: list[Path]) -> None:
    for name in ODD_NAMES:
        (tmp_path / os.fsdecode(name)).write_bytes(photos[0].read_bytes())
    texts = [path_to_text(p) for p in iter_image_files(tmp_path)]
    assert sorted(os.fsencode(text_to_path(t).name) for t in texts) == sorted(ODD_NAMES)
    assert all(load_image(text_to_path(t)).shape == (64, 64) for t in texts)


def test_reduced_jpeg_decode_stays_close_to_a_full_decode(photos: list[Path]) -> None:
    from tests.conftest import FULLRES

    big = sorted(FULLRES.glob("*/*.jpg"))[:20]
    diffs = []
    for path in [*photos[:5], *big]:
        full = load_image(path, reduced_decode=False).astype(np.int16)
        reduced = load_image(path).astype(np.int16)
        assert reduced.shape == full.shape == (64, 64)
        diffs.append(np.abs(reduced - full).mean())
    assert max(diffs) < 4.0 and np.mean(diffs) < 1.5  # of 255; docs/performance.md measures the accuracy


def test_reduced_decode_leaves_other_formats_alone(tmp_path: Path, photos: list[Path]) -> None:
    png = tmp_path / "photo.png"
    with Image.open(photos[0]) as img:
        img.save(png)
    assert np.array_equal(load_image(png), load_image(png, reduced_decode=False))


def test_a_pipe_or_device_named_like_a_photo_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would wait for a writer forever
    (tmp_path / "zeros.jpg").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "folder.jpg").mkdir()
    for name, reason in [("pipe.jpg", "not a regular file"), ("zeros.jpg", "not a regular file"),
                         ("folder.jpg", "is a directory")]:  # fmt: skip
        with pytest.raises(ImageDecodeError, match=reason):
            load_image(tmp_path / name)


@pytest.mark.parametrize("size", [(1, 1), (1, 20000), (20000, 1), (7000, 7000)])
def test_absurd_but_allowed_dimensions_still_give_64x64(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "odd.png"
    Image.new("L", size, 128).save(path)
    assert load_image(path).shape == (64, 64)


def test_dimensions_past_the_pixel_limit_are_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("1", (200_000, 300), 0).save(path)  # 60 million pixels in a tiny file
    with pytest.raises(ImageDecodeError, match="more than 50,000,000 pixels"):
        load_image(path)
