"""Packed checkpoints: a `trainer fit` run's last.ckpt made small enough to commit, so that a run
longer than one machine's stay goes on elsewhere (`trainer pack`, then `trainer fit --resume-from`).

A Lightning checkpoint holds the weights, their moving average and AdamW's two moments, all in
float32: about 180 MB for ResNet18. Packing keeps the weights and the moving average in float16
and AdamW's second moment in bfloat16 (float16 would flush its smallest values to zero), and drops
the first moment, which unpacking restarts at zero. The second moment sets each step's size, so
the first steps after resuming are smaller than the uninterrupted run's, never larger, while the
first moment rebuilds in about ten steps (beta1 0.9). The epoch, step, LR schedule and epoch
history carry over. ModelCheckpoint's record of the best epoch does not: its file stays behind, so
a resumed run's best checkpoint is the best of its own epochs.

Every pack appends a session to the file's list: the epochs trained since the last resume, their
wall time, the hardware and the commit. The list rides in the resumed run's checkpoints
(SESSIONS_KEY, kept by `CatsDogsModule`), and the finished run's model card records it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from trainer.module import SESSIONS_KEY
from trainer.publish import git_commit, hardware

PACK_KEY = "catsdogs_pack"
PART_BYTES = 40 * 2**20  # packed files are written in parts FILE, FILE.part2, ... of this size, to commit
FORMAT = 1


def pack(checkpoint: Path, dest: Path) -> dict[str, Any]:
    """Write the packed form of `checkpoint` (a fit's last.ckpt) to `dest`; return the session it adds."""
    ckpt = load(checkpoint)
    if PACK_KEY in ckpt:
        raise ValueError(f"{checkpoint} is packed already")
    earlier = list(ckpt.pop(SESSIONS_KEY, []))
    session = _session(ckpt, first_epoch=earlier[-1]["last_epoch"] + 1 if earlier else 0)
    dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in ckpt["state_dict"].items()}
    ckpt["state_dict"] = {name: _half(t) for name, t in ckpt["state_dict"].items()}
    for optimizer in ckpt.get("optimizer_states", []):
        for state in optimizer["state"].values():
            state.pop("exp_avg", None)
            if "exp_avg_sq" in state:
                state["exp_avg_sq"] = state["exp_avg_sq"].to(torch.bfloat16)
    ckpt["callbacks"] = {k: v for k, v in ckpt.get("callbacks", {}).items() if not k.startswith("ModelCheckpoint")}
    ckpt[PACK_KEY] = {"format": FORMAT, "dtypes": dtypes, "sessions": [*earlier, session]}
    _save_in_parts(ckpt, dest)
    return session


def unpack(packed: Path, dest: Path) -> list[dict[str, Any]]:
    """Write a Lightning checkpoint that `Trainer.fit(ckpt_path=dest)` resumes from; return the packed sessions."""
    ckpt = load(packed)
    info = ckpt.pop(PACK_KEY, None)
    if info is None:
        raise ValueError(f"{packed} is not a packed checkpoint (make one with `trainer pack`)")
    if info.get("format") != FORMAT:
        raise ValueError(f"{packed}: packed format {info.get('format')}, this version reads {FORMAT}")
    dtypes = info["dtypes"]
    ckpt["state_dict"] = {name: t.to(getattr(torch, dtypes[name])) for name, t in ckpt["state_dict"].items()}
    for optimizer in ckpt.get("optimizer_states", []):
        for state in optimizer["state"].values():
            if "exp_avg_sq" in state:
                state["exp_avg_sq"] = state["exp_avg_sq"].float()
                state["exp_avg"] = torch.zeros_like(state["exp_avg_sq"])
    ckpt[SESSIONS_KEY] = info["sessions"]
    _save(ckpt, dest)
    return list(info["sessions"])


def _session(ckpt: dict[str, Any], first_epoch: int) -> dict[str, Any]:
    last_epoch = int(ckpt["epoch"])
    history = ckpt.get("callbacks", {}).get("EpochHistory", {}).get("history", [])
    rows = [row for row in history if first_epoch <= row["epoch"] <= last_epoch]
    seconds = [row["epoch_seconds"] for row in rows if "epoch_seconds" in row]
    return {
        "first_epoch": first_epoch,
        "last_epoch": last_epoch,
        "global_step": int(ckpt["global_step"]),
        "seconds": round(sum(seconds), 1) if seconds else None,
        "hardware": hardware(torch.cuda.is_available(), max(1, torch.cuda.device_count()), 1),
        "git_commit": git_commit(),
    }


def _half(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.half() if tensor.dtype == torch.float32 else tensor


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, packed (with its parts) or not, as the dict Lightning saved."""
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    data = b"".join(part.read_bytes() for part in parts(path))
    # A Lightning checkpoint pickles more than tensors (hyper-parameters, loop state): only load your own.
    ckpt: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return ckpt


def parts(path: Path) -> list[Path]:
    """`path`, then its PART_BYTES continuations path.part2, path.part3, ... that exist."""
    found = [path]
    while (part := path.with_name(f"{path.name}.part{len(found) + 1}")).is_file():
        found.append(part)
    return found


def _save_in_parts(ckpt: dict[str, Any], dest: Path) -> None:
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    data = buffer.getvalue()
    dest.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, start in enumerate(range(0, len(data), PART_BYTES), start=1):
        part = dest if count == 1 else dest.with_name(f"{dest.name}.part{count}")
        partial = part.with_name(f"{part.name}.partial")
        partial.write_bytes(data[start : start + PART_BYTES])
        os.replace(partial, part)
    for stale in parts(dest)[count:]:  # an earlier, longer pack's tail goes only once the new parts are written
        stale.unlink()


def _save(ckpt: dict[str, Any], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.partial")  # every DDP rank unpacks
    torch.save(ckpt, partial)
    os.replace(partial, dest)
