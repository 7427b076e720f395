"""Train, evaluate and try the cats-vs-dogs classifier.

    trainer fit --data ../shared/data/catsdogs --devices 2 --accelerator cpu --max-epochs 1
    trainer fit --data DIR --devices 4                  # one GPU host, DDP over NCCL
    trainer fit --data DIR --devices 4 --num-nodes 2    # on every host, see below
    trainer test --model v3                             # report.json + pictures under RUNS_DIR/reports/v3/
    trainer test --model v3 --data ../shared/data/catsdogs-fullres   # a folder of cat/ and dog/
    trainer publish --checkpoint RUN/checkpoints/epoch=007-val_acc=0.9100.ckpt
    trainer predict photo1.jpg photo2.jpg --model v3
    trainer fit --data DIR --extra-data corrections.csv --init-from v3   # fine-tune on what people corrected
    trainer calibrate-uncertainty --model-dir models/reference --data ../shared/data/catsdogs
    trainer pack RUN/checkpoints/last.ckpt run.packed.ckpt    # small enough to commit; then, on any machine:
    trainer fit ...the same options... --resume-from run.packed.ckpt

With more than one device, Lightning starts ranks 1..N-1 by re-running this
command line (sys.argv), so everything `fit` does before `trainer.fit` must be
safe to run once per rank, and only global rank 0 writes the published model.
Across hosts, run the same command on each with MASTER_ADDR, MASTER_PORT and
NODE_RANK set (or under SLURM or torchrun), with --runs-dir on a shared file
system: every rank loads the best checkpoint, which rank 0 wrote, to test it.
"""

from __future__ import annotations

import argparse
import hashlib
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
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter

from classifier.model import CLASSES, STEMS
from classifier.store import LoadedModel, UnknownModelVersion, load, load_folder, update_meta, version_folder
from classifier.uncertainty import TARGET_ACCURACY
from settings import get_settings
from trainer.batchnorm import layer_sync
from trainer.callbacks import EpochHistory
from trainer.data import (
    AUGMENTATIONS,
    LAYOUTS_HELP,
    SPLITS,
    TEST_FRACTION,
    VAL_FRACTION,
    CatsDogsData,
    DataSourceError,
    ExtraUse,
    check_source,
    default_num_workers,
    describe,
    eval_dataset,
)
from trainer.evaluate import (
    collect_logits,
    confident_mistakes,
    report,
    summary,
    uncertainty,
    uncertainty_summary,
    write_report_json,
)
from trainer.extra import ExtraData, corrections_card, read_extra_data
from trainer.module import LR_SCHEDULES, CatsDogsModule, inverse_frequency_weights
from trainer.packing import pack, parts, unpack
from trainer.plots import report_figures, save_figures
from trainer.publish import git_commit, hardware, register
from trainer.release import Trained, from_checkpoint, report_and_publish, run_dir_of, training_stages

RUN_NAME = "catsdogs"
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


def main(argv: list[str] | None = None) -> int:
    """Run `trainer fit|test|predict ...`; return the exit status."""
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace, list[str]], int] = args.command
    return command(args, list(sys.argv[1:] if argv is None else argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="{fit,test,publish,predict,calibrate-uncertainty,pack}")
    _add_fit(commands.add_parser("fit", help="train, test the best checkpoint, calibrate and publish it"))
    _add_test(commands.add_parser("test", help="evaluation report of a published model on DATA/test"))
    _add_publish(commands.add_parser("publish", help="calibrate, report on and publish a Lightning checkpoint"))
    _add_predict(commands.add_parser("predict", help="label image files with a published model"))
    _add_calibrate(
        commands.add_parser("calibrate-uncertainty", help="choose a published model's uncertainty threshold on val")
    )
    _add_pack(commands.add_parser("pack", help="shrink a fit's last.ckpt to resume it on another machine"))
    return parser


def _add_fit(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=fit)
    p.add_argument("--data", type=Path, help=f"{LAYOUTS_HELP} (default: settings.data_dir)")
    p.add_argument(
        "--val-fraction", type=_fraction, default=VAL_FRACTION, help="of each class if --data is unsplit (0.1)"
    )
    p.add_argument(
        "--test-fraction", type=_fraction, default=TEST_FRACTION, help="of each class if --data is unsplit (0.1)"
    )
    p.add_argument("--devices", type=_positive, default=1, help="processes (GPUs, or CPU processes) per node")
    p.add_argument("--num-nodes", type=_positive, default=1)
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto")
    p.add_argument("--max-epochs", type=_positive, default=30)
    p.add_argument("--batch-size", type=_positive, default=128, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--stem", choices=STEMS, help="(default: the stem of the --init-from model, else imagenet)")
    p.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction,
        help="train in the channels-last layout (default: for the medium and small stems, where it pays most)",
    )  # fmt: skip
    p.add_argument("--num-workers", type=int, help="loader workers per process (default: cores shared out)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", help="Lightning precision (default: bf16-mixed on CUDA, 32-true on CPU)")
    p.add_argument("--limit-per-class", type=_positive, help="use only the first N images per class of each split")
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency in train")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                   help="cosine: warm-up, cosine decay (default); onecycle; "
                        "plateau: halve on a flat val_acc")  # fmt: skip
    p.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=True,
                   help="with several processes, BatchNorm statistics of the global batch (default: on)")  # fmt: skip
    # With both, --devices N --batch-size B trains exactly like --devices 1 --batch-size N*B: for checking that.
    p.add_argument("--no-augment", action="store_true", help="train on images decoded as for evaluation")
    p.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default="basic",
        help="training augmentation: basic, or trivial (TrivialAugment and photo degradations)",
    )
    p.add_argument(
        "--ema",
        type=_fraction,
        metavar="DECAY",
        help="evaluate and publish a moving average of the weights, e.g. 0.998 per step",
    )
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="MixUp's Beta parameter (0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="CutMix's Beta parameter (0: off)")
    p.add_argument("--no-shuffle", action="store_true", help="train in the data's order every epoch")
    p.add_argument("--resume", action="store_true", help="continue the newest run in --runs-dir from its last.ckpt")
    p.add_argument(
        "--resume-from", type=Path, metavar="PACKED",
        help="continue a run from its `trainer pack` file, given the run's own options (--max-epochs included)",
    )  # fmt: skip
    p.add_argument(
        "--init-from", metavar="MODEL",
        help="start from the weights of a model this project trained (a version of --model-store such as v1, "
        "or a model folder such as models/reference), with a fresh optimiser and schedule",
    )  # fmt: skip
    p.add_argument(
        "--extra-data", type=Path, action="append", default=[], metavar="CSV",
        help="more training samples, path,label[,...] (e.g. `catsdogs corrections export`): train split only; "
        "files of DATA's val or test are left out (repeatable)",
    )  # fmt: skip
    _add_uncertainty_target(p)
    p.add_argument("--runs-dir", type=Path, help="TensorBoard logs and checkpoints (default: settings.runs_dir)")
    p.add_argument("--model-store", type=Path, help="where to publish (default: settings.model_store)")
    p.add_argument("--no-publish", action="store_true", help="train and test only")


def _add_test(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=test)
    p.add_argument("--model", help="published version, e.g. v3 (default: the latest)")
    p.add_argument("--data", type=Path, help="a `fit --data` layout, or a folder of cat/ and dog/ (default: DATA_DIR)")
    p.add_argument("--split", choices=SPLITS, default="test", help="which split of --data (default: test)")
    p.add_argument("--val-fraction", type=_fraction, default=VAL_FRACTION, help="as given to fit, for unsplit --data")
    p.add_argument("--test-fraction", type=_fraction, default=TEST_FRACTION, help="as given to fit, for unsplit --data")
    p.add_argument("--out", type=Path, help="report folder (default: RUNS_DIR/reports/VERSION/DATA_NAME-SPLIT)")
    p.add_argument("--runs-dir", type=Path, help="for the default --out (default: settings.runs_dir)")
    p.add_argument("--model-store", type=Path)
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--limit-per-class", type=_positive)


def _add_publish(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=publish_checkpoint)
    p.add_argument("--checkpoint", type=Path, required=True, help="a Lightning .ckpt of `trainer fit`")
    p.add_argument("--data", type=Path, help="the `fit --data` of the checkpoint (default: settings.data_dir)")
    p.add_argument("--val-fraction", type=_fraction, default=VAL_FRACTION, help="as given to fit, for unsplit --data")
    p.add_argument("--test-fraction", type=_fraction, default=TEST_FRACTION, help="as given to fit, for unsplit --data")
    p.add_argument("--stem", choices=STEMS, help="(default: the checkpoint's hyper-parameters)")
    p.add_argument("--model-store", type=Path, help="where to publish (default: settings.model_store)")
    p.add_argument("--no-publish", action="store_true", help="calibrate and report only")
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--limit-per-class", type=_positive, help="use only the first N images per class of val and test")
    _add_uncertainty_target(p)


def _add_uncertainty_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uncertainty-target", type=_fraction, default=TARGET_ACCURACY, metavar="ACCURACY",
                   help="results below the threshold chosen on val are uncertain: above it, val predictions are "
                        f"right this often (default {TARGET_ACCURACY})")  # fmt: skip


def _add_pack(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=pack_command)
    p.add_argument("checkpoint", type=Path, help="a `trainer fit` run's checkpoints/last.ckpt")
    p.add_argument("out", type=Path, help="the packed file to write")


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


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {value}")
    return value


# --- fit --------------------------------------------------------------------


def fit(args: argparse.Namespace, argv: list[str]) -> int:
    """Train, test the best checkpoint on every rank, then publish and register it from global rank 0."""
    settings = get_settings()
    data_dir = _data_dir(
        args.data or settings.data_dir, ("train", "val", "test"), args.val_fraction, args.test_fraction
    )
    runs_dir = args.runs_dir or settings.runs_dir
    on_cuda = _uses_cuda(args.accelerator)
    if on_cuda:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls; bf16 autocast covers the convolutions
    if args.resume and args.resume_from:
        raise SystemExit("--resume and --resume-from: choose one")
    resume: tuple[str, int | None] | None = _last_checkpoint(runs_dir) if args.resume else None
    if args.resume_from:
        resume = (str(_unpacked(args.resume_from, runs_dir)), None)
    L.seed_everything(args.seed, workers=True)
    workers = default_num_workers(args.devices) if args.num_workers is None else args.num_workers
    extra = _extra_data(args.extra_data) if args.extra_data else None
    data = CatsDogsData(
        data_dir, args.batch_size, workers, args.limit_per_class, args.val_fraction, args.test_fraction,
        augment=False if args.no_augment else args.augment, shuffle=not args.no_shuffle,
        extra_train=extra.samples if extra else None,
    )  # fmt: skip
    weights = inverse_frequency_weights(data.class_counts()["train"]) if args.class_weights else None
    store = args.model_store or settings.model_store
    start = _init_model(args.init_from, store) if args.init_from else None
    stem = args.stem or (start.meta.get("stem", "imagenet") if start is not None else "imagenet")
    module = CatsDogsModule(
        stem, args.lr, args.weight_decay, args.label_smoothing, lr_schedule=args.lr_schedule,
        class_weights=weights, ema_decay=args.ema, mixup=args.mixup, cutmix=args.cutmix,
        channels_last=stem != "imagenet" if args.channels_last is None else args.channels_last,
    )  # fmt: skip
    # On --resume the checkpoint overwrites these weights; the model card still names the start.
    initialised_from = _init_weights(module, start) if start is not None else None
    checkpoint = ModelCheckpoint(monitor="val_acc", mode="max", filename="{epoch:03d}-{val_acc:.4f}")
    trainer = _fit_trainer(args, runs_dir, on_cuda, checkpoint, resume[1] if resume else None)
    _check_relaunch(trainer, argv)
    started = time.monotonic()
    trainer.fit(module, datamodule=data, ckpt_path=resume[0] if resume else None)
    # Every rank says what it trained: on several hosts, equal fingerprints show the replicas stayed in step.
    print(f"rank {trainer.global_rank} of {trainer.world_size}: weights {weights_fingerprint(module)}", flush=True)
    # Read before testing: ckpt_path="best" restores callback state too, which would cut the history there.
    history = next(c for c in trainer.callbacks if isinstance(c, EpochHistory)).history  # type: ignore[attr-defined]
    # Every rank tests: trainer.test is a collective. It leaves the best weights in module.net.
    # DistributedSampler repeats a few images when the world size does not divide the test
    # set (2,000 images); the report below scores every test image once, on rank 0.
    trainer.test(module, datamodule=data, ckpt_path=checkpoint.best_model_path, verbose=False)
    if not trainer.is_global_zero:
        return 0
    print(f"best checkpoint {checkpoint.best_model_path}")
    training = _training_meta(args, argv, trainer, module, time.monotonic() - started, on_cuda, checkpoint)
    training["class_counts"] = data.class_counts()  # {split: {class: images}}, after --limit-per-class
    if initialised_from is not None:
        training["initialised_from"] = initialised_from
    if module.resumed_sessions:
        training["resumed_sessions"] = module.resumed_sessions  # the packed sessions before this process's
    this_stage = training | {"data": str(data_dir), "git_commit": git_commit()}
    training["stages"] = training_stages(start.meta if start is not None else None, this_stage)
    hp = module.hparams
    card = {"corrections": corrections_card(extra, data.extra_use or ExtraUse([], 0, 0))} if extra else {}
    trained = Trained(module.serving_net(), stem, training, hp["mean"], hp["std"], history, trainer.global_step, card)
    assert isinstance(trainer.logger, TensorBoardLogger)
    report_and_publish(
        trained, data, run_dir=Path(trainer.logger.log_dir), writer=trainer.logger.experiment,
        store=None if args.no_publish else store, database_url=settings.database_url,
        device=trainer.strategy.root_device, num_workers=workers, uncertainty_target=args.uncertainty_target,
    )  # fmt: skip
    trainer.logger.experiment.close()
    return 0


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short sha256 of every parameter and buffer, in order: equal on every rank of a DDP run."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _fit_trainer(
    args: argparse.Namespace, runs_dir: Path, on_cuda: bool, checkpoint: ModelCheckpoint, version: int | None
) -> L.Trainer:
    distributed = args.devices > 1 or args.num_nodes > 1
    return L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy="ddp" if distributed else "auto",  # Lightning picks NCCL on CUDA, gloo on CPU
        # On by default: per-process batches can be small (CPU), and it makes N processes with batch B
        # train like one with batch N*B. torch's SyncBatchNorm is CUDA-only, hence layer_sync.
        plugins=[layer_sync(on_cuda)] if distributed and args.sync_batchnorm else None,
        precision=args.precision or ("bf16-mixed" if on_cuda else "32-true"),
        max_epochs=args.max_epochs,
        logger=TensorBoardLogger(runs_dir, name=RUN_NAME, version=version, default_hp_metric=False),
        # last.ckpt from its own callback: since Lightning 2.6, save_last=True writes it only when a
        # better val_acc is saved, so --resume would restart from the best epoch, not the last one.
        callbacks=[
            checkpoint,
            ModelCheckpoint(filename="last", enable_version_counter=False),  # overwrite, never last-v1.ckpt
            LearningRateMonitor(logging_interval="step"),
            EpochHistory(),
        ],  # fmt: skip
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


def _init_model(name: str, store: Path) -> LoadedModel:
    """The model --init-from names: a model folder (models/reference, or a store's v3/), else a version of `store`."""
    try:
        return load_folder(Path(name)) if Path(name).is_dir() else load(store, name)
    except (UnknownModelVersion, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"--init-from {name}: {exc} (in {store})") from None


def _extra_data(files: list[Path]) -> ExtraData:
    try:
        return read_extra_data(files)
    except (DataSourceError, OSError) as exc:
        raise SystemExit(f"--extra-data: {exc}") from None


def _init_weights(module: CatsDogsModule, loaded: LoadedModel) -> dict[str, Any]:
    """Copy a saved model's weights into `module`; return what the model card records about them."""
    if loaded.meta.get("stem", "imagenet") != module.hparams["stem"]:
        stem = loaded.meta.get("stem")
        raise SystemExit(f"--init-from {loaded.meta.get('version')}: stem {stem!r}, not {module.hparams['stem']!r}")
    module.net.load_state_dict(loaded.net.state_dict())
    training = loaded.meta.get("training", {})
    return {
        "version": loaded.meta.get("version"),
        "weights_sha256": loaded.meta["weights_sha256"],
        "command": training.get("command"),
        "epochs": training.get("epochs"),
        "metrics": loaded.meta.get("metrics", {}),
    }


def _unpacked(packed: Path, runs_dir: Path) -> Path:
    """Unpack a `trainer pack` file under `runs_dir` for Trainer.fit(ckpt_path=...); return the path."""
    dest = runs_dir / RUN_NAME / "resumed" / f"{packed.name.removesuffix('.ckpt')}.ckpt"
    try:
        sessions = unpack(packed, dest)
    except ValueError as exc:
        raise SystemExit(f"--resume-from: {exc}") from None
    last = sessions[-1]
    print(f"resuming from {packed}: epochs 0-{last['last_epoch']} done in {len(sessions)} session(s)", flush=True)
    return dest


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


def pack_command(args: argparse.Namespace, argv: list[str]) -> int:
    """Pack a fit's last.ckpt (trainer.packing) and say what it holds."""
    try:
        session = pack(args.checkpoint, args.out)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    size = sum(part.stat().st_size for part in parts(args.out)) / 2**20
    print(
        f"{args.out}: {size:.0f} MiB, epochs {session['first_epoch']}-{session['last_epoch']} of this session "
        f"({session['seconds']} s on {session['hardware']}); resume with `trainer fit ... --resume-from {args.out}`"
    )
    return 0


# --- test -------------------------------------------------------------------


def test(args: argparse.Namespace, argv: list[str]) -> int:
    """Report on a published model, at its temperature, over a split of DATA or over DATA's own cat/ and dog/ folders.

    Uses the workers' decoding; prints the summary and writes report.json and pictures into --out.
    """
    settings = get_settings()
    data = (args.data or settings.data_dir).resolve()
    dataset, source, name = _eval_dataset(args, data)
    loaded = _load(args.model_store or settings.model_store, args.model)
    if loaded is None:
        return 2
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    norm, temperature = loaded.meta["normalization"], float(loaded.meta.get("temperature", 1.0))
    device = _eval_device(args.accelerator)
    logits, labels, paths = collect_logits(
        loaded.net, dataset, device, norm["mean"], norm["std"], args.batch_size, workers
    )
    result = report(logits, labels, CLASSES, temperature)
    result |= {"model": loaded.version, "data": source,
               "mistakes": confident_mistakes(logits, labels, paths, CLASSES, temperature)}  # fmt: skip
    out = args.out or (args.runs_dir or settings.runs_dir) / "reports" / loaded.version / name
    write_report_json(result, out)
    save_figures(report_figures(result), out)
    print(f"model {loaded.version}")
    print(summary(result, source))
    print(f"report and pictures in {out}")
    return 0


def _eval_dataset(args: argparse.Namespace, data: Path) -> tuple[Dataset[Any], str, str]:
    """Return (dataset, description, report folder name) for DATA's own cat/ and dog/ folders, else for DATA's split."""
    try:
        dataset = eval_dataset(data, args.split, args.limit_per_class, args.val_fraction, args.test_fraction)
    except DataSourceError as exc:
        raise SystemExit(str(exc)) from None
    if (data / args.split).is_dir() or not all((data / name).is_dir() for name in CLASSES):
        return dataset, describe(data, args.split), f"{data.stem}-{args.split}"
    return dataset, str(data), data.name  # the class folders taken whole


# --- publish ----------------------------------------------------------------


def publish_checkpoint(args: argparse.Namespace, argv: list[str]) -> int:
    """Calibrate a `trainer fit` checkpoint on DATA's val split, report on its test split, publish and register it.

    The report and pictures go into the checkpoint's run folder (RUN/version_N for RUN/version_N/checkpoints/*.ckpt).
    """
    settings = get_settings()
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: no such checkpoint file")
    data = CatsDogsData(
        args.data or settings.data_dir, limit_per_class=args.limit_per_class,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
    )  # fmt: skip
    try:
        data.setup("validate")
        data.setup("test")
    except DataSourceError as exc:
        raise SystemExit(str(exc)) from None
    trained = from_checkpoint(args.checkpoint, args.stem, shlex.join(["trainer", *argv]))
    print(trained.training["source"])
    run_dir = run_dir_of(args.checkpoint)
    with SummaryWriter(str(run_dir)) as writer:
        report_and_publish(
            trained, data, run_dir=run_dir, writer=writer,
            store=None if args.no_publish else args.model_store or settings.model_store,
            database_url=settings.database_url, device=_eval_device(args.accelerator),
            num_workers=default_num_workers() if args.num_workers is None else args.num_workers,
            uncertainty_target=args.uncertainty_target,
        )  # fmt: skip
    return 0


# --- calibrate-uncertainty ----------------------------------------------------


def _add_calibrate(p: argparse.ArgumentParser) -> None:
    p.set_defaults(command=calibrate_uncertainty)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", type=Path, help="a model folder, e.g. models/reference")
    which.add_argument("--model", help="a published version of --model-store, e.g. v3 (then registered again)")
    p.add_argument("--data", type=Path, help="a `fit --data` layout; its val split is used (default: DATA_DIR)")
    p.add_argument("--val-fraction", type=_fraction, default=VAL_FRACTION, help="as given to fit, for unsplit --data")
    p.add_argument("--test-fraction", type=_fraction, default=TEST_FRACTION, help="as given to fit, for unsplit --data")
    p.add_argument("--model-store", type=Path)
    _add_uncertainty_target(p)
    p.add_argument("--accelerator", choices=ACCELERATORS, default="auto")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--limit-per-class", type=_positive)
    p.add_argument("--dry-run", action="store_true", help="print the threshold; write nothing")


def calibrate_uncertainty(args: argparse.Namespace, argv: list[str]) -> int:
    """Choose an already published model's uncertainty threshold on DATA's val split, at the model's temperature,
    and write it into its meta.json as `uncertainty` (the weights, and their sha256, are untouched). A store
    version is registered again, so that the API reads the new threshold."""
    settings = get_settings()
    store = args.model_store or settings.model_store
    loaded = _init_model(str(args.model_dir) if args.model_dir else args.model, store)
    folder = args.model_dir or version_folder(store, args.model)
    data = (args.data or settings.data_dir).resolve()
    try:
        dataset = eval_dataset(data, "val", args.limit_per_class, args.val_fraction, args.test_fraction)
    except DataSourceError as exc:
        raise SystemExit(str(exc)) from None
    norm, temperature = loaded.meta["normalization"], float(loaded.meta.get("temperature", 1.0))
    workers = default_num_workers() if args.num_workers is None else args.num_workers
    logits, labels, _ = collect_logits(
        loaded.net, dataset, _eval_device(args.accelerator), norm["mean"], norm["std"], args.batch_size, workers
    )
    found = uncertainty(logits, labels, temperature, args.uncertainty_target) | {"data": describe(data, "val")}
    print(f"model {loaded.version}: {uncertainty_summary(found)}")
    if args.dry_run:
        return 0
    update_meta(folder, {"uncertainty": found})
    print(f"wrote its uncertainty section into {folder / 'meta.json'}")
    if args.model:
        register(store, args.model, settings.database_url)
    return 0


# --- predict ----------------------------------------------------------------


def predict(args: argparse.Namespace, argv: list[str]) -> int:
    """Print `path<TAB>label<TAB>confidence` per image (failures on stderr); status 1 only if every image fails."""
    # Imported here: the workers package builds its Celery app on import, which fit and test do not need.
    from classifier.serving import chunks, classify, default_threads, pick_device

    settings = get_settings()
    device = pick_device(args.device or settings.device)
    loaded = _load(args.model_store or settings.model_store, args.model, device)
    if loaded is None:
        return 2
    # The workers' precision, so that both give the same answers; eager, as compiling costs more than a few images.
    loaded = loaded.serving("eager", settings.batch_size, settings.inference_precision)
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


def _data_dir(
    path: Path, splits: tuple[str, ...], val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION
) -> Path:
    try:
        return check_source(path, splits, val_fraction, test_fraction)
    except DataSourceError as exc:
        raise SystemExit(str(exc)) from None


def _load(store: Path, version: str | None, device: str | torch.device = "cpu") -> LoadedModel | None:
    try:
        return load(store, version, device)
    except UnknownModelVersion as exc:
        print(f"{store}: {exc}", file=sys.stderr)
        return None


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _eval_device(accelerator: str) -> torch.device:
    return torch.device("cuda" if _uses_cuda(accelerator) else "cpu")


if __name__ == "__main__":
    sys.exit(main())
