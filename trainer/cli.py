"""Train, evaluate and try the cats-vs-dogs classifier.

    trainer fit --data ../shared/data/catsdogs --devices 2 --accelerator cpu --max-epochs 1
    trainer fit --data DIR --devices 4                  # one GPU host, DDP over NCCL
    trainer fit --data DIR --devices 4 --num-nodes 2    # on every host, see below
    trainer test --model v3
    trainer predict photo1.jpg photo2.jpg --model v3

With more than one device, Lightning starts ranks 1..N-1 by re-running this
command line (sys.argv), so everything `fit` does before `trainer.fit` must be
safe to run once per rank, and only global rank 0 writes the published model.
Across hosts, run the same command on each with MASTER_ADDR, MASTER_PORT and
NODE_RANK set (or under SLURM or torchrun), with --runs-dir on a shared file
system: every rank loads the best checkpoint, which rank 0 wrote, to test it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from classifier.model import CLASSES
from classifier.store import LoadedModel, UnknownModelVersion, load
from settings import get_settings
from trainer.data import CatsDogsData, default_num_workers
from trainer.module import CatsDogsModule
from trainer.publish import hardware, publish_and_register

RUN_NAME = "catsdogs"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def main(argv: list[str] | None = None) -> int:
    """Run `trainer fit|test|predict ...`; return the exit status."""
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace, list[str]], int] = args.command
    return command(args, list(sys.argv[1:] if argv is None else argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="{fit,test,predict}")
    _add_fit(commands.add_parser("fit", help="train, test the best checkpoint, publish it"))
    _add_test(commands.add_parser("test", help="accuracy of a published model on DATA/test"))
    _add_predict(commands.add_parser("predict", help="label image files with a published model"))
    return parser


def _add_fit(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=fit)
    p.add_argument("--data", type=Path, help="ImageFolder root with train/val/test (default: settings.data_dir)")
    p.add_argument("--devices", type=_positive, default=1, help="processes (GPUs, or CPU processes) per node")
    p.add_argument("--num-nodes", type=_positive, default=1)
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto")
    p.add_argument("--max-epochs", type=_positive, default=30)
    p.add_argument("--batch-size", type=_positive, default=128, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--stem", choices=("imagenet", "small"), default="imagenet")
    p.add_argument("--num-workers", type=int, help="loader workers per process (default: cores shared out)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", help="Lightning precision (default: bf16-mixed on CUDA, 32-true on CPU)")
    p.add_argument("--limit-per-class", type=_positive, help="use only the first N images per class of each split")
    p.add_argument("--resume", action="store_true", help="continue the newest run in --runs-dir from its last.ckpt")
    p.add_argument("--runs-dir", type=Path, help="TensorBoard logs and checkpoints (default: settings.runs_dir)")
    p.add_argument("--model-store", type=Path, help="where to publish (default: settings.model_store)")
    p.add_argument("--no-publish", action="store_true", help="train and test only")


def _add_test(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=test)
    p.add_argument("--model", help="published version, e.g. v3 (default: the latest)")
    p.add_argument("--data", type=Path, help="ImageFolder root with test/ (default: settings.data_dir)")
    p.add_argument("--model-store", type=Path)
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--limit-per-class", type=_positive)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=predict)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", help="published version, e.g. v3 (default: the latest)")
    p.add_argument("--model-store", type=Path)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: settings.device)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# --- fit --------------------------------------------------------------------


def fit(args: argparse.Namespace, argv: list[str]) -> int:
    """Train, test the best checkpoint on every rank, then publish and register it from global rank 0."""
    settings = get_settings()
    data_dir = _data_dir(args.data or settings.data_dir, ("train", "val", "test"))
    runs_dir = args.runs_dir or settings.runs_dir
    on_cuda = _uses_cuda(args.accelerator)
    if on_cuda:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls; bf16 autocast covers the convolutions
    resume = _last_checkpoint(runs_dir) if args.resume else None
    L.seed_everything(args.seed, workers=True)
    module = CatsDogsModule(args.stem, args.lr, args.weight_decay, args.label_smoothing)
    workers = default_num_workers(args.devices) if args.num_workers is None else args.num_workers
    data = CatsDogsData(data_dir, args.batch_size, workers, args.limit_per_class)
    checkpoint = ModelCheckpoint(monitor="val_acc", mode="max", save_last=True, filename="{epoch:03d}-{val_acc:.4f}")
    trainer = _fit_trainer(args, runs_dir, on_cuda, checkpoint, resume[1] if resume else None)
    _check_relaunch(trainer, argv)
    started = time.monotonic()
    trainer.fit(module, datamodule=data, ckpt_path=resume[0] if resume else None)
    # Every rank tests: trainer.test is a collective. It leaves the best weights in module.net.
    # DistributedSampler repeats a few images when the world size does not divide the test
    # set (2,000 images); `trainer test` on one device gives the exact figure.
    tested = trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)[0]
    if not trainer.is_global_zero:
        return 0
    print(f"best checkpoint {checkpoint.best_model_path}")
    _print_test(tested, data_dir / "test", len(data.datasets["test"]))  # type: ignore[arg-type]
    if not args.no_publish:
        training = _training_meta(args, argv, trainer, module, time.monotonic() - started, on_cuda, checkpoint)
        metrics = {"val_accuracy": float(checkpoint.best_model_score), "test_accuracy": float(tested["test_acc"])}
        _publish(module, args.stem, metrics, data_dir, training, args.model_store or settings.model_store)
    return 0


def _publish(
    module: CatsDogsModule, stem: str, metrics: dict[str, float], data_dir: Path, training: dict[str, Any], store: Path
) -> None:
    version = publish_and_register(
        module.net, stem=stem, metrics=metrics, data_dir=data_dir, training=training,
        store=store, database_url=get_settings().database_url,
    )  # fmt: skip
    print(f"published {version} to {store}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _fit_trainer(
    args: argparse.Namespace, runs_dir: Path, on_cuda: bool, checkpoint: ModelCheckpoint, version: int | None
) -> L.Trainer:
    distributed = args.devices > 1 or args.num_nodes > 1
    return L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy="ddp" if distributed else "auto",  # Lightning picks NCCL on CUDA, gloo on CPU
        precision=args.precision or ("bf16-mixed" if on_cuda else "32-true"),
        max_epochs=args.max_epochs,
        logger=TensorBoardLogger(runs_dir, name=RUN_NAME, version=version, default_hp_metric=False),
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=10,
    )


def _check_relaunch(trainer: L.Trainer, argv: list[str]) -> None:
    """Refuse a multi-process fit whose ranks 1..N-1 would re-run some other command line than this one."""
    env = getattr(trainer.strategy, "cluster_environment", None)
    relaunches = trainer.num_devices > 1 and env is not None and not env.creates_processes_externally
    if relaunches and argv != sys.argv[1:]:
        raise SystemExit(
            "trainer fit with --devices > 1 re-runs sys.argv for the other ranks, which is not this command; "
            "run it as the `trainer` console script (or pass argv=None)"
        )


def _last_checkpoint(runs_dir: Path) -> tuple[str, int]:
    """Return (last.ckpt path, logger version) of the newest run under `runs_dir` that has one."""
    found = sorted(
        (int(p.parents[1].name.removeprefix("version_")), p)
        for p in (runs_dir / RUN_NAME).glob("version_*/checkpoints/last.ckpt")
        if p.parents[1].name.removeprefix("version_").isdigit()
    )
    if not found:
        raise SystemExit(f"--resume: no {RUN_NAME}/version_*/checkpoints/last.ckpt under {runs_dir}")
    version, path = found[-1]
    return str(path), version


def _training_meta(
    args: argparse.Namespace,
    argv: list[str],
    trainer: L.Trainer,
    module: CatsDogsModule,
    seconds: float,
    on_cuda: bool,
    checkpoint: ModelCheckpoint,
) -> dict[str, Any]:
    return {
        "command": shlex.join(["trainer", *argv]),
        "epochs": trainer.current_epoch,
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "world_size": trainer.world_size,
        "global_batch_size": args.batch_size * trainer.world_size,
        "seconds": round(seconds, 1),
        "hardware": hardware(on_cuda, args.devices, args.num_nodes),
        "precision": str(trainer.precision),
        "seed": args.seed,
        "limit_per_class": args.limit_per_class,
        "hyperparameters": dict(module.hparams),
        "best_checkpoint": checkpoint.best_model_path,
    }


# --- test -------------------------------------------------------------------


def test(args: argparse.Namespace, argv: list[str]) -> int:
    """Evaluate a published model on DATA/test with the workers' preprocessing; print accuracy and recall."""
    settings = get_settings()
    data_dir = _data_dir(args.data or settings.data_dir, ("test",))
    loaded = _load(args.model_store or settings.model_store, args.model)
    if loaded is None:
        return 2
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    data = CatsDogsData(data_dir, args.batch_size, workers, args.limit_per_class)
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    tested = trainer.test(_as_module(loaded), datamodule=data, verbose=False)[0]
    print(f"model {loaded.version}")
    _print_test(tested, data_dir / "test", len(data.datasets["test"]))  # type: ignore[arg-type]
    return 0


def _as_module(loaded: LoadedModel) -> CatsDogsModule:
    """Wrap a published network in the training module, to reuse its test step and metrics."""
    meta = loaded.meta
    norm = meta["normalization"]
    module = CatsDogsModule(stem=meta.get("stem", "imagenet"), mean=norm["mean"], std=norm["std"])
    module.net.load_state_dict(loaded.net.state_dict())
    return module


def _print_test(tested: dict[str, float], folder: Path, images: int) -> None:
    print(f"test on {folder} ({images} images)")
    print(f"  accuracy     {tested['test_acc']:.4f}")
    for name in CLASSES:
        print(f"  recall {name:<5} {tested[f'test_recall_{name}']:.4f}")
    print(f"  dog share    {tested['test_pred_dog_share']:.4f}")


# --- predict ----------------------------------------------------------------


def predict(args: argparse.Namespace, argv: list[str]) -> int:
    """Print `path<TAB>label<TAB>confidence` per image (failures on stderr); status 1 only if every image fails."""
    # Imported here: the workers package builds its Celery app on import, which fit and test do not need.
    from workers.inference import chunks, classify, default_threads, pick_device

    settings = get_settings()
    device = pick_device(args.device or settings.device)
    loaded = _load(args.model_store or settings.model_store, args.model, device)
    if loaded is None:
        return 2
    failed = 0
    with ThreadPoolExecutor(default_threads()) as pool:
        for chunk in chunks(args.images, settings.batch_size):
            for outcome in classify(chunk, loaded, device, pool):
                if outcome.error is not None:
                    failed += 1
                    print(f"{outcome.path}\terror: {outcome.error}", file=sys.stderr)
                else:
                    print(f"{outcome.path}\t{outcome.label}\t{outcome.confidence:.4f}")
    return 1 if failed == len(args.images) else 0


# --- shared -----------------------------------------------------------------


def _data_dir(path: Path, splits: tuple[str, ...]) -> Path:
    missing = [s for s in splits if not (path / s).is_dir()]
    if missing:
        raise SystemExit(f"{path}: no {', '.join(missing)} folder; expected an ImageFolder root with {', '.join(splits)}")
    return path.resolve()


def _load(store: Path, version: str | None, device: str | torch.device = "cpu") -> LoadedModel | None:
    try:
        return load(store, version, device)
    except UnknownModelVersion as exc:
        print(f"{store}: {exc}", file=sys.stderr)
        return None


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


if __name__ == "__main__":
    sys.exit(main())
