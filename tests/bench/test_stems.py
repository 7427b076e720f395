"""bench/stems.py, small: both of its measurements run and write their rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.stems import main

pytestmark = pytest.mark.slow  # the forward pass compiles two TorchInductor backends


@pytest.mark.parametrize(("train", "forms"), [(True, 4), (False, 6)])
def test_the_stems_bench_writes_a_row_per_form(tmp_path: Path, train: bool, forms: int) -> None:
    out = tmp_path / "stems.json"
    argv = ["--stems", "imagenet", "--batch-size", "4", "--seconds", "0", "--json", str(out)]
    main([*argv, "--train"] if train else argv)
    result = json.loads(out.read_text())
    assert result["train"] is train and len(result["rows"]) == forms
    assert all(row["images_per_second"] > 0 and row["gflop_per_image"] > 0 for row in result["rows"])
