"""Crafted and mutated image files: decoding returns an array or raises ImageDecodeError, nothing else."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.preprocess import MAX_DECODED_BYTES, ImageDecodeError, decode_image, load_image
from tests.factories import fuzz_seeds, jpeg_with_mistyped_exif, mutate, tiff16_with_rational_strip_offset

FUZZ_SEED = 20261203
FUZZ_CASES = 10_000


@pytest.mark.parametrize(
    ("make", "cause"),
    [(jpeg_with_mistyped_exif, "struct.error"), (tiff16_with_rational_strip_offset, "TypeError")],
)
def test_crafted_files_that_break_pillow_fail_with_the_exception_named(make, cause: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageDecodeError, match=f"^cannot decode: {cause.split('.')[-1]}: "):
        decode_image(io.BytesIO(make()))


def test_a_seeded_mutation_fuzz_of_every_format_raises_only_decode_errors(photos: list[Path]) -> None:
    seeds, rng = fuzz_seeds(photos[0]), random.Random(FUZZ_SEED)
    outcomes = {"decoded": 0, "refused": 0}
    started = time.monotonic()
    for case in range(FUZZ_CASES):
        name = rng.choice(sorted(seeds))
        data = mutate(seeds[name], rng)
        try:
            array = decode_image(io.BytesIO(data))
        except ImageDecodeError:
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # the failure this test exists for: say which case, to reproduce it
            raise AssertionError(f"case {case} ({name}, seed {FUZZ_SEED}) raised {exc!r}") from exc
        assert array.shape == (64, 64) and array.dtype == np.uint8
        outcomes["decoded"] += 1
    assert outcomes["decoded"] > FUZZ_CASES // 10 and outcomes["refused"] > FUZZ_CASES // 10, outcomes
    assert time.monotonic() - started < 60


def test_an_image_over_the_decode_budget_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (6000, 6000), (10, 20, 30)).save(path)  # 36 megapixels, under the pixel limit
    started = time.monotonic()
    with pytest.raises(ImageDecodeError, match=r"^refused: 6000x6000 RGB would take 137 MiB to decode \(at most 128"):
        load_image(path)
    assert time.monotonic() - started < 1  # refused before decoding
    assert 6000 * 6000 * 4 > MAX_DECODED_BYTES


def test_a_large_sixteen_bit_png_under_the_budget_decodes_without_full_size_copies(tmp_path: Path) -> None:
    pixels = np.zeros((7000, 7000), np.uint16)
    pixels[::7, ::3] = 40000
    path = tmp_path / "big16.png"
    Image.fromarray(pixels).save(path)  # about 100 KB on disk, 93 MiB decoded
    array = load_image(path)
    assert array.shape == (64, 64) and 0 < array.mean() < 40  # scaled on 0-65535, not clipped


def test_a_float_tiff_on_zero_to_one_is_scaled_not_black(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((40, 40), 0.5, np.float32)).save(path)
    assert abs(int(load_image(path).mean()) - 128) <= 1
    Image.fromarray(np.full((40, 40), 200.0, np.float32)).save(path)  # already on 0-255: kept
    assert int(load_image(path).mean()) == 200


def test_every_too_many_pixels_message_quotes_the_same_limit(tmp_path: Path) -> None:
    messages = []
    for size in [(10_000, 6_000), (10_000, 10_000), (20_000, 10_000)]:  # ours, Pillow's warning, Pillow's error
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.new("1", size).save(path)
        with pytest.raises(ImageDecodeError) as refused:
            load_image(path)
        messages.append(str(refused.value))
    assert all(m.startswith("refused: more than 50,000,000 pixels") for m in messages), messages
