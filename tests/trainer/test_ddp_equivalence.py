"""--devices 2 --batch-size B trains exactly like --devices 1 --batch-size 2B (real 2-process CPU DDP).

Both runs use the same seed, no augmentation and no shuffling, so each global batch holds the
same images; BatchNorm is synchronised over the global batch. They run in float64: in float32,
a 1e-7 difference flips a few ReLU and max-pool decisions, Adam turns such near-zero gradients
into whole LR-sized steps, and the runs drift apart by about 1% of the weights within a few steps
whatever the code does. In float64 they agree to about 1e-10, while per-process BatchNorm
(--no-sync-batchnorm) or shuffled batches put them about 20% apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _fit_argv(data_dir: Path, runs: Path, devices: int, batch_size: int) -> list[str]:
    # 16 training images, global batch 8: 2 epochs of 2 steps.
    return ["fit", "--data", os.path.relpath(data_dir, REPO_ROOT), "--runs-dir", str(runs),
            "--devices", str(devices), "--batch-size", str(batch_size), "--accelerator", "cpu", "--max-epochs", "2",
            "--limit-per-class", "8", "--num-workers", "0", "--no-publish", "--precision", "64-true",
            "--no-augment", "--no-shuffle"]  # fmt: skip


def _last_state(runs: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = torch.load(runs / "catsdogs/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    return int(checkpoint["global_step"]), checkpoint["state_dict"]


def test_two_processes_train_like_one_with_the_global_batch(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the relative --data of both runs
    two = [str(Path(sys.executable).with_name("trainer")), *_fit_argv(data_dir, tmp_path / "two", 2, 4)]
    done = subprocess.run(two, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    assert main(_fit_argv(data_dir, tmp_path / "one", 1, 8)) == 0

    (steps_one, one), (steps_two, two_state) = _last_state(tmp_path / "one"), _last_state(tmp_path / "two")
    assert steps_one == steps_two == 4
    assert one.keys() == two_state.keys()
    for name, value in one.items():  # weights and BatchNorm running statistics
        assert torch.allclose(value.double(), two_state[name].double(), rtol=1e-5, atol=1e-6), name
