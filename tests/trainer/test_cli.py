"""trainer.cli in-process: argument checks, --resume, and predict's exit status."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifier.model import build_model
from classifier.store import base_meta, load, publish, read_meta
from trainer.cli import main

QUICK = ["--accelerator", "cpu", "--limit-per-class", "8", "--batch-size", "8", "--num-workers", "0", "--no-publish"]


def test_devices_must_be_positive() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--devices", "0"])
    assert exc.value.code == 2


def test_missing_data_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no train, val, test folder"):
        main(["fit", "--data", str(tmp_path), "--runs-dir", str(tmp_path)])


def test_multi_process_fit_refuses_an_argv_it_cannot_relaunch(tmp_path: Path, data_dir: Path) -> None:
    # Lightning would start rank 1 by re-running pytest's own command line.
    argv = ["fit", "--data", str(data_dir), "--devices", "2", "--runs-dir", str(tmp_path), *QUICK]
    with pytest.raises(SystemExit, match="re-runs sys.argv"):
        main(argv)
    assert not (tmp_path / "catsdogs").exists()


def test_resume_continues_the_last_run(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["fit", "--data", str(data_dir), "--runs-dir", str(tmp_path), *QUICK]
    last = tmp_path / "catsdogs" / "version_0" / "checkpoints" / "last.ckpt"
    assert main([*common, "--max-epochs", "1"]) == 0
    assert _global_step(last) == 2  # 16 images, batches of 8
    assert main([*common, "--max-epochs", "2", "--resume"]) == 0
    assert _global_step(last) == 4
    assert not (tmp_path / "catsdogs" / "version_1").exists()
    assert "test on" in capsys.readouterr().out


def _global_step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


def test_resume_without_a_checkpoint_fails(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(SystemExit, match="--resume: no"):
        main(["fit", "--data", str(data_dir), "--runs-dir", str(tmp_path), "--resume", *QUICK])


def test_predict_fails_only_when_every_image_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    publish(build_model(), base_meta(), tmp_path)
    empty = tmp_path / "empty.jpg"
    empty.touch()
    assert main(["predict", str(empty), str(tmp_path / "missing.jpg"), "--model-store", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "empty file" in err and "file not found" in err


def test_unknown_model_version_is_reported(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--model", "v9", "--data", str(data_dir), "--model-store", str(tmp_path)]) == 2
    assert "unknown model version 'v9'" in capsys.readouterr().err


def test_init_from_starts_at_a_saved_model_and_says_so(tmp_path: Path, data_dir: Path) -> None:
    torch.manual_seed(3)
    start = build_model()
    version = publish(start, base_meta(training={"epochs": 7}), tmp_path / "start")
    store = tmp_path / "store"
    argv = ["fit", "--data", str(data_dir), "--runs-dir", str(tmp_path), *QUICK[:-1], "--model-store", str(store),
            "--max-epochs", "1", "--lr", "0", "--init-from", str(tmp_path / "start" / version)]  # fmt: skip
    assert main(argv) == 0
    trained = load(store)
    assert torch.equal(trained.net.conv1.weight, start.conv1.weight)  # lr 0: the weights it started from
    origin = trained.meta["training"]["initialised_from"]
    assert origin["weights_sha256"] == read_meta(tmp_path / "start", version)["weights_sha256"]
    assert origin["epochs"] == 7


def test_init_from_takes_the_stem_of_the_model_it_starts_from(tmp_path: Path, data_dir: Path) -> None:
    torch.manual_seed(3)
    start = build_model(stem="medium")
    version = publish(start, base_meta(stem="medium"), tmp_path / "start")
    store = tmp_path / "store"
    argv = ["fit", "--data", str(data_dir), "--runs-dir", str(tmp_path), *QUICK[:-1], "--model-store", str(store),
            "--max-epochs", "1", "--lr", "0", "--init-from", str(tmp_path / "start" / version)]  # fmt: skip
    assert main(argv) == 0  # no --stem: the shipped reference model has the medium stem
    trained = load(store)
    assert trained.meta["stem"] == "medium" and trained.meta["training"]["hyperparameters"]["stem"] == "medium"
    assert torch.equal(trained.net.conv1.weight, start.conv1.weight)


def test_init_from_refuses_another_stem(tmp_path: Path, data_dir: Path) -> None:
    version = publish(build_model(), base_meta(), tmp_path / "start")
    argv = ["fit", "--data", str(data_dir), "--runs-dir", str(tmp_path), *QUICK, "--stem", "small",
            "--init-from", str(tmp_path / "start" / version)]  # fmt: skip
    with pytest.raises(SystemExit, match="stem"):
        main(argv)
