"""Does test-time flip averaging pay for its cost? Accuracy and calibration with and without it.

    python -m bench.tta [--model-dir models/reference] [--json var/bench/tta.json]

Flip averaging runs the network twice per image (the photo and its mirror image) and averages
the two softmax outputs, so it halves the network's throughput.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch

from bench.common import DATA_SETS, WORK_DIR, environment, print_table, write_json
from bench.decode import decode_tensor
from classifier.store import LoadedModel, load_folder
from settings import get_settings
from trainer.data import ImageSamples, class_folder_samples
from trainer.evaluate import collect_logits, report


def flipped(path: str) -> torch.Tensor:
    return decode_tensor(path, reduced=True).flip(-1)


def logits_of(folder: Path, model: LoadedModel, mirror: bool) -> tuple[torch.Tensor, torch.Tensor]:
    decode = flipped if mirror else functools.partial(decode_tensor, reduced=True)
    norm = model.meta["normalization"]
    dataset = ImageSamples(class_folder_samples(folder), decode)
    logits, labels, _ = collect_logits(model.net, dataset, torch.device("cpu"), norm["mean"], norm["std"], 256, 2)
    return logits, labels


def scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, Any]:
    result = report(logits, labels, temperature=temperature)
    recalls = {f"recall_{name}": s["recall"] for name, s in result["per_class"].items()}
    return {"accuracy": result["accuracy"], **recalls, "ece": result["ece"], "nll": result["nll"]}


# The columns of scores(), after a table's own leading ones.
SCORE_COLUMNS = [
    ("accuracy", "accuracy", ".4f"), ("recall_cat", "recall cat", ".4f"), ("recall_dog", "recall dog", ".4f"),
    ("ece", "ECE", ".4f"), ("nll", "NLL", ".4f"),
]  # fmt: skip


def model_arguments(doc: str | None, json_name: str, argv: list[str] | None) -> tuple[argparse.Namespace, LoadedModel]:
    """Parse --model-dir and --json, and load the model folder."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=get_settings().reference_model)
    parser.add_argument("--json", type=Path, default=WORK_DIR / json_name)
    args = parser.parse_args(argv)
    return args, load_folder(args.model_dir)


def main(argv: list[str] | None = None) -> None:
    args, model = model_arguments(__doc__, "tta.json", argv)
    temperature = float(model.meta.get("temperature", 1.0))
    rows = []
    for name, folder in DATA_SETS.items():
        plain, labels = logits_of(folder, model, mirror=False)
        mirrored, _ = logits_of(folder, model, mirror=True)
        # Average probabilities, then hand report() their log: softmax(log p / T) at T = 1 gives p back.
        averaged = (torch.softmax(plain / temperature, 1) + torch.softmax(mirrored / temperature, 1)) / 2
        rows.append({"data": name, "inference": "one pass"} | scores(plain, labels, temperature))
        rows.append({"data": name, "inference": "flip average (2 passes)"} | scores(averaged.log(), labels, 1.0))
    print(f"model {model.version} from {args.model_dir}")
    print_table(rows, [("data", "data", ""), ("inference", "inference", ""), *SCORE_COLUMNS])
    write_json(args.json, {"environment": environment(), "model": model.version, "rows": rows})


if __name__ == "__main__":
    main()
