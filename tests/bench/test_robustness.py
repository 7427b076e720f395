"""bench/robustness.py on a few real photos with the reference model: the benchmark must not rot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.robustness import CORRUPTIONS, SEVERITIES, corrupted_bytes, decoded, main
from tests.conftest import CATSDOGS


@pytest.fixture(scope="module")
def data() -> Path:
    if not (CATSDOGS / "test").is_dir():
        pytest.skip(f"no cats-vs-dogs data at {CATSDOGS}; set CATSDOGS_DATA to the folder that holds catsdogs/")
    return CATSDOGS


def _change(path: str, corruption: str, severity: int) -> float:
    """Mean absolute difference, in grey levels, between the workers' decoding of the photo and of its corruption."""
    clean = decoded(path, "clean", 0).numpy().astype(np.int16)
    return float(np.abs(decoded(path, corruption, severity).numpy().astype(np.int16) - clean).mean())


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_stronger_severity_changes_the_photo_more(data: Path, corruption: str) -> None:
    path = str(data / "test" / "dog" / "dog.10000.jpg")
    assert corrupted_bytes(path, corruption, 2) == corrupted_bytes(path, corruption, 2)  # seeded per image
    assert 0 < _change(path, corruption, 1) < _change(path, corruption, 3)


@pytest.mark.slow
def test_the_benchmark_scores_every_corruption_at_every_severity(data: Path, tmp_path: Path) -> None:
    result = main(["--data", str(data), "--limit-per-class", "4", "--workers", "2", "--shift-calibration",
                   "--json", str(tmp_path / "r.json")])  # fmt: skip
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["images"] == result["images"] == 8
    rows = written["rows"]
    assert [(row["corruption"], row["severity"]) for row in rows] == [("clean", 0)] + [
        (name, severity) for name in CORRUPTIONS for severity in SEVERITIES
    ]
    assert all(0 <= row[key] <= 1 for row in rows for key in ("accuracy", "recall_cat", "recall_dog", "ece"))
    assert rows[0]["accuracy"] >= 0.75  # the reference model gets about 91% of the test split right
    summary = written["summary"]
    assert summary["clean_accuracy"] == rows[0]["accuracy"]
    assert set(summary["targets"]) == {"mean_accuracy", "mean_ece", "worst_severity1_drop_points"}
    shifted = result["shift_calibration"]
    assert 0.05 <= shifted["temperature"] <= 20 and len(shifted["rows"]) == len(rows)
    assert [row["accuracy"] for row in shifted["rows"]] == [row["accuracy"] for row in rows]  # only confidence moves
