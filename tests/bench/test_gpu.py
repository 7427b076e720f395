"""bench/gpu.py's CPU path, small: the GPU check must run whenever a GPU is lent, so it must not rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu import main

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    results = main(["--device", "cpu", "--quick", "--json", str(tmp_path / "gpu.json")])
    assert {(row["precision"], row["batch"]) for row in results["forward"]} == {("bf16", 16), ("fp32", 16)}
    assert all(row["images_per_second"] > 0 for row in results["forward"])
    assert results["decode"]["cpu_reduced_decode"] > 0 and results["decode"]["nvjpeg"] is None
    assert results["system"]["status"] == "succeeded" and results["system"]["images"] == 64
    assert results["training"]["seconds"] > 0
    assert json.loads((tmp_path / "gpu.json").read_text())["device"] == "cpu"
