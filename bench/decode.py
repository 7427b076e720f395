"""Full decode + resize against reduced (DCT-scaled, luma-only) JPEG decode: speed, pixels and accuracy.

    python -m bench.decode [--model-dir models/reference] [--json var/bench/decode.json]

For the test split (128x128 JPEGs) and the full-size photos: images/s of each decode on one
thread, the mean and largest pixel difference to the full decode, and the model's accuracy and
calibration error with each (its temperature as stored). Besides `load_image` both ways, the
row "straight" is the reduced decode resized to 64x64 in one step, without going through
128x128 as the training photos did (the workers' path before that step was added).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from bench.common import DATA_SETS, WORK_DIR, environment, print_table, write_json
from classifier.preprocess import load_image
from classifier.store import LoadedModel, load_folder
from settings import get_settings
from trainer.data import ImageSamples, class_folder_samples
from trainer.evaluate import collect_logits, report


def straight(path: str, size: int = 64) -> np.ndarray:
    """Reduced decode, then one bilinear resize to `size` whatever the photo's size (JPEG photos only)."""
    with Image.open(path) as img:
        img.draft("L", (2 * size, 2 * size))
        gray = ImageOps.exif_transpose(img).convert("L")
        return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


DECODES: dict[str, Callable[[str], np.ndarray]] = {
    "full": functools.partial(load_image, reduced_decode=False),
    "reduced": functools.partial(load_image, reduced_decode=True),
    "straight": straight,
}


def decode_tensor(path: str, reduced: bool) -> torch.Tensor:
    return as_tensor(DECODES["reduced" if reduced else "full"](path))


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.copy()).unsqueeze(0)


def decode_rate(paths: list[str], decode: Callable[[str], np.ndarray]) -> float:
    start = time.perf_counter()
    for path in paths:
        decode(path)
    return len(paths) / (time.perf_counter() - start)


def pixel_difference(paths: list[str], decode: Callable[[str], np.ndarray]) -> tuple[float, int]:
    diffs = [np.abs(decode(p).astype(np.int16) - DECODES["full"](p)) for p in paths]
    return float(np.mean(diffs)), int(np.max(diffs))


def accuracy(folder: Path, model: LoadedModel, decode: Callable[[str], np.ndarray]) -> dict[str, Any]:
    dataset = ImageSamples(class_folder_samples(folder), lambda path: as_tensor(decode(path)))
    norm = model.meta["normalization"]
    logits, labels, _ = collect_logits(model.net, dataset, torch.device("cpu"), norm["mean"], norm["std"], 256, 2)
    result = report(logits, labels, temperature=float(model.meta.get("temperature", 1.0)))
    recalls = {f"recall_{name}": scores["recall"] for name, scores in result["per_class"].items()}
    return {"accuracy": result["accuracy"], **recalls, "ece": result["ece"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=get_settings().reference_model)
    parser.add_argument("--speed-images", type=int, default=500, help="images timed per decode")
    parser.add_argument("--json", type=Path, default=WORK_DIR / "decode.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_folder(args.model_dir)
    rows = []
    for name, folder in DATA_SETS.items():
        paths = [path for path, _ in class_folder_samples(folder)]
        timed = paths[:: max(1, len(paths) // args.speed_images)][: args.speed_images]
        for decode_name, decode in DECODES.items():
            mean_diff, max_diff = pixel_difference(timed, decode)
            row: dict[str, Any] = {"data": name, "decode": decode_name, "images": len(paths)}
            row |= {"per_core_img_s": decode_rate(timed, decode), "mean_abs_diff": mean_diff, "max_abs_diff": max_diff}
            rows.append(row | accuracy(folder, model, decode))
    print(f"model {model.version} from {args.model_dir}; decode speed on one thread, {args.speed_images} images")
    print_table(
        rows,
        [("data", "data", ""), ("decode", "decode", ""), ("images", "images", "d"),
         ("per_core_img_s", "img/s/core", ".0f"), ("mean_abs_diff", "mean |diff|", ".2f"),
         ("max_abs_diff", "max |diff|", "d"), ("accuracy", "accuracy", ".4f"), ("recall_cat", "recall cat", ".4f"),
         ("recall_dog", "recall dog", ".4f"), ("ece", "ECE", ".4f")],
    )  # fmt: skip
    write_json(args.json, {"environment": environment(), "model": model.version, "rows": rows})


if __name__ == "__main__":
    main()
