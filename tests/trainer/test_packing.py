"""trainer pack and fit --resume-from: a run carried to another machine as a small file, and continued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import packing
from trainer.cli import main
from trainer.packing import load, pack, parts, unpack

QUICK = ["--accelerator", "cpu", "--limit-per-class", "8", "--batch-size", "8", "--num-workers", "0", "--no-publish"]
LAST = Path("catsdogs/version_0/checkpoints/last.ckpt")


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The last.ckpt of a one-epoch fit with a moving average: its weights, EMA and AdamW state."""
    runs = tmp_path_factory.mktemp("first")
    assert (
        main(["fit", "--data", str(data_dir), *QUICK, "--ema", "0.9", "--runs-dir", str(runs), "--max-epochs", "1"])
        == 0
    )
    return runs / LAST


def _load(path: Path) -> dict[str, Any]:
    return load(path)  # a packed file with its parts


def test_packing_keeps_the_run_in_less_than_half_the_bytes(one_epoch: Path, tmp_path: Path) -> None:
    packed, restored = tmp_path / "run.packed.ckpt", tmp_path / "restored.ckpt"
    session = pack(one_epoch, packed)
    assert packed.stat().st_size < one_epoch.stat().st_size / 2
    assert (session["first_epoch"], session["last_epoch"], session["global_step"]) == (0, 0, 2)
    assert session["seconds"] > 0 and "cores" in session["hardware"]

    assert unpack(packed, restored) == [session]
    before, after = _load(one_epoch), _load(restored)
    for name, tensor in before["state_dict"].items():
        assert after["state_dict"][name].dtype == tensor.dtype, name
        torch.testing.assert_close(after["state_dict"][name], tensor, rtol=1e-3, atol=1e-4)
    for pid, state in before["optimizer_states"][0]["state"].items():
        again = after["optimizer_states"][0]["state"][pid]
        torch.testing.assert_close(again["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-2, atol=1e-12)
        assert not again["exp_avg"].any()  # restarts at zero: smaller first steps, never larger ones
        assert again["step"] == state["step"]
    assert after["lr_schedulers"] == before["lr_schedulers"]
    assert after["callbacks"]["EpochHistory"] == before["callbacks"]["EpochHistory"]


def test_a_packed_run_resumes_where_it_stopped(
    one_epoch: Path, tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packed = tmp_path / "run.packed.ckpt"
    assert main(["pack", str(one_epoch), str(packed)]) == 0
    assert "resume with" in capsys.readouterr().out
    elsewhere = tmp_path / "elsewhere"
    argv = ["fit", "--data", str(data_dir), *QUICK, "--ema", "0.9", "--runs-dir", str(elsewhere)]
    assert main([*argv, "--max-epochs", "2", "--resume-from", str(packed)]) == 0
    assert "epochs 0-0 done in 1 session(s)" in capsys.readouterr().out

    resumed = _load(elsewhere / LAST)
    assert resumed["global_step"] == 4  # epoch 1 only: 16 images, batches of 8
    history = resumed["callbacks"]["EpochHistory"]["history"]
    assert [row["epoch"] for row in history] == [0, 1]
    assert all(row["epoch_seconds"] > 0 for row in history)
    assert [(s["first_epoch"], s["last_epoch"]) for s in resumed["resumed_sessions"]] == [(0, 0)]

    again = tmp_path / "again.packed.ckpt"
    assert pack(elsewhere / LAST, again)["first_epoch"] == 1  # the second session starts after the first
    assert len(_load(again)["catsdogs_pack"]["sessions"]) == 2


def test_a_packed_file_is_written_in_parts_small_enough_to_commit(
    one_epoch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed = tmp_path / "run.packed.ckpt"
    monkeypatch.setattr(packing, "PART_BYTES", 2**20)
    pack(one_epoch, packed)
    written = parts(packed)
    assert len(written) > 2 and all(part.stat().st_size <= 2**20 for part in written)
    assert unpack(packed, tmp_path / "restored.ckpt")[0]["last_epoch"] == 0

    monkeypatch.setattr(packing, "PART_BYTES", 2**30)
    pack(one_epoch, packed)  # packed again in one part: the old continuations go
    assert parts(packed) == [packed] and not list(tmp_path.glob("*.part*"))
    assert load(packed)["catsdogs_pack"]["sessions"][0]["last_epoch"] == 0


def test_packing_refuses_the_wrong_kind_of_file(one_epoch: Path, tmp_path: Path) -> None:
    packed = tmp_path / "run.packed.ckpt"
    pack(one_epoch, packed)
    with pytest.raises(ValueError, match="packed already"):
        pack(packed, tmp_path / "twice.ckpt")
    with pytest.raises(SystemExit, match="--resume-from: .* is not a packed checkpoint"):
        main(["fit", *QUICK, "--runs-dir", str(tmp_path), "--resume-from", str(one_epoch)])
    with pytest.raises(SystemExit, match="no such checkpoint file"):
        main(["pack", str(tmp_path / "missing.ckpt"), str(tmp_path / "out.ckpt")])
