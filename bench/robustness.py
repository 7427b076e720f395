"""How much do common photo corruptions cost? Accuracy and calibration under 8 corruptions at 3 severities.

    python -m bench.robustness [--model-dir models/reference] [--json var/bench/robustness.json]
    python -m bench.robustness --model v3 [--model-store var/models]     # a published version instead
    python -m bench.robustness --data ../shared/data/catsdogs --limit-per-class 50   # a quick run

Each photo of the test split of --data (cat/ and dog/, 128x128) is corrupted, encoded losslessly as
PNG (the jpeg corruption: its JPEG bytes) and decoded exactly as the workers decode a file
(classifier.preprocess.decode_image: grayscale, resized to 64x64), then classified with the model's
stored temperature. The clean row is the photo's own file through the same decoding. Corruptions act
on the decoded RGB photo before the workers' resize, so their sizes are in its 128x128 pixels:

    corruption      severity 1 / 2 / 3
    gaussian_blur   sigma 1 / 2 / 3 px (0.5 / 1 / 1.5 px of the 64x64 input: the 2x resize blurs too)
    gaussian_noise  std 8 / 16 / 24 of 255, the same value added to R, G and B (luma noise: grayscale keeps it)
    jpeg            re-encoded at quality 40 / 30 / 20 (Pillow, 4:2:0 chroma)
    brightness      pixels times 1 +- 0.15 / 0.3 / 0.45, darker or brighter as the image's draw says
    contrast        blended towards the image's mean grey: 0.7 / 0.5 / 0.35 of its contrast kept
    offcentre_crop  90% / 85% / 80% of each side kept, in a corner drawn per image (not resized back)
    rotation        10 / 15 / 20 degrees, sign drawn per image, corners filled by mirroring the photo
    downscale       shrunk to 64 / 48 / 32 px on its longer side and back to its size (bilinear both ways)

The random draws (noise, sign, corner) are seeded by the file's name and the corruption, not the
severity, so severity 3 is a stronger version of the same change as severity 1, and reruns agree.
Metrics per corruption and severity: accuracy, its drop from clean in points, per-class recall, ECE
(trainer.evaluate: 15 equal-width bins of the max-softmax confidence) and NLL. The targets checked:
mean corrupted accuracy >= 85%, mean corrupted ECE <= 5%, no severity-1 corruption costs over 5 points.
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import ConcatDataset

from bench.common import SHARED_DATA, WORK_DIR, environment, print_table, write_json
from bench.decode import as_tensor
from bench.tta import SCORE_COLUMNS, scores
from classifier.preprocess import decode_image
from classifier.store import LoadedModel, load, load_folder
from settings import get_settings
from trainer.data import ImageSamples, class_folder_samples, first_per_class
from trainer.evaluate import collect_logits, fit_temperature

# (RGB photo, level, the image's random draws) -> the corrupted photo, or the bytes of a file holding it
Corruption = Callable[[Image.Image, float, np.random.Generator], Image.Image | bytes]


def _blur(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(sigma))


def _noise(img: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32)
    noise = rng.standard_normal(pixels.shape[:2], dtype=np.float32)[..., None] * std
    return Image.fromarray(np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: float, rng: np.random.Generator) -> bytes:
    return _encoded(img, "JPEG", quality=int(quality))  # the workers decode the JPEG itself


def _brightness(img: Image.Image, shift: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(1 + shift * rng.choice((-1, 1)))


def _contrast(img: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(factor)


def _offcentre_crop(img: Image.Image, keep: float, rng: np.random.Generator) -> Image.Image:
    width, height = round(img.width * keep), round(img.height * keep)
    left, top = rng.integers(0, 2, size=2)  # which corner: all of the margin on one side of each axis
    left, top = left * (img.width - width), top * (img.height - height)
    return img.crop((left, top, left + width, top + height))


def _rotation(img: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    angle = degrees * rng.choice((-1, 1))
    turn = math.radians(abs(angle))
    pad = math.ceil(max(img.size) / 2 * (math.cos(turn) + math.sin(turn) - 1)) + 1  # what the corners reach
    mirrored = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    turned = Image.fromarray(mirrored).rotate(angle, resample=Image.Resampling.BILINEAR)
    return turned.crop((pad, pad, pad + img.width, pad + img.height))


def _downscale(img: Image.Image, side: float, rng: np.random.Generator) -> Image.Image:
    scale = side / max(img.size)
    small = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    return small.resize(img.size, Image.Resampling.BILINEAR)


# name: (corruption, its level at severities 1, 2, 3, how a level reads); see the module docstring.
CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, float, float], str]] = {
    "gaussian_blur": (_blur, (1.0, 2.0, 3.0), "sigma {:g} px"),
    "gaussian_noise": (_noise, (8, 16, 24), "std {:g}/255"),
    "jpeg": (_jpeg, (40, 30, 20), "quality {:g}"),
    "brightness": (_brightness, (0.15, 0.3, 0.45), "x(1 ± {:g})"),
    "contrast": (_contrast, (0.7, 0.5, 0.35), "x{:g}"),
    "offcentre_crop": (_offcentre_crop, (0.9, 0.85, 0.8), "keep {:.0%}"),
    "rotation": (_rotation, (10, 15, 20), "±{:g}°"),
    "downscale": (_downscale, (64, 48, 32), "{:g} px and back"),
}
SEVERITIES = (1, 2, 3)
CLEAN = ("clean", 0)
TARGETS = {"mean_accuracy": 0.85, "mean_ece": 0.05, "worst_severity1_drop_points": 5.0}


def corrupted_bytes(path: str, corruption: str, severity: int) -> bytes:
    """The file's bytes for the clean condition; else the photo with `corruption` at `severity` (1-3) as a
    PNG file (the jpeg corruption: a JPEG file at its quality)."""
    if (corruption, severity) == CLEAN:
        return Path(path).read_bytes()
    apply, levels, _ = CORRUPTIONS[corruption]
    level = levels[severity - 1]
    with Image.open(path) as photo:
        img = photo.convert("RGB")
    seed = zlib.crc32(f"{Path(path).name}/{corruption}".encode())  # not the severity: see the docstring
    out = apply(img, level, np.random.default_rng(seed))
    return out if isinstance(out, bytes) else _encoded(out, "PNG")


def _encoded(img: Image.Image, file_format: str, **options: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, file_format, **options)
    return out.getvalue()


def decoded(path: str, corruption: str, severity: int) -> torch.Tensor:
    """The corrupted photo through the workers' decoding: a (1, 64, 64) uint8 tensor."""
    return as_tensor(decode_image(io.BytesIO(corrupted_bytes(path, corruption, severity))))


def conditions(severities: tuple[int, ...] = SEVERITIES) -> list[tuple[str, int]]:
    """(corruption, severity) in table order, clean first."""
    return [CLEAN, *((name, s) for name in CORRUPTIONS for s in severities)]


def logits_by_condition(
    samples: list[tuple[str, int]], model: LoadedModel, workers: int, which: list[tuple[str, int]] | None = None
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits of every condition of `which` (default: conditions()) and the labels; one loader, `workers`
    processes corrupting and decoding while this one runs the network."""
    which = which or conditions()
    parts = [ImageSamples(samples, functools.partial(decoded, corruption=c, severity=s)) for c, s in which]
    norm = model.meta["normalization"]
    logits, labels, _ = collect_logits(
        model.net, ConcatDataset(parts), torch.device("cpu"), norm["mean"], norm["std"], 128, workers
    )
    n = len(samples)
    return [logits[i : i + n] for i in range(0, len(logits), n)], labels[:n]


def shift_temperature(data: Path, model: LoadedModel, workers: int, limit: int | None) -> float:
    """A temperature fitted on the validation split as it is and under every corruption at severity 1."""
    samples = class_folder_samples(data / "val")
    if limit:
        samples = first_per_class(samples, limit)
    logits, labels = logits_by_condition(samples, model, workers, conditions(severities=(1,)))
    return fit_temperature(torch.cat(logits), labels.repeat(len(logits)))


def score_rows(logits: list[torch.Tensor], labels: torch.Tensor, temperature: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for (name, severity), z in zip(conditions(), logits, strict=True):
        level = None if name == "clean" else CORRUPTIONS[name][2].format(CORRUPTIONS[name][1][severity - 1])
        rows.append({"corruption": name, "severity": severity, "level": level} | scores(z, labels, temperature))
    for row in rows:
        row["drop_points"] = 100 * (rows[0]["accuracy"] - row["accuracy"])
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Clean and mean corrupted accuracy and ECE, the worst severity-1 drop, and the targets met."""
    corrupted = [row for row in rows if row["severity"] > 0]
    worst = max((row for row in corrupted if row["severity"] == 1), key=lambda row: row["drop_points"])
    found = {
        "clean_accuracy": rows[0]["accuracy"],
        "clean_ece": rows[0]["ece"],
        "mean_accuracy": float(np.mean([row["accuracy"] for row in corrupted])),
        "mean_ece": float(np.mean([row["ece"] for row in corrupted])),
        "worst_severity1_drop_points": worst["drop_points"],
        "worst_severity1_corruption": worst["corruption"],
    }
    met = {
        "mean_accuracy": found["mean_accuracy"] >= TARGETS["mean_accuracy"],
        "mean_ece": found["mean_ece"] <= TARGETS["mean_ece"],
        "worst_severity1_drop_points": found["worst_severity1_drop_points"] <= TARGETS["worst_severity1_drop_points"],
    }
    return found | {"targets": {name: {"target": TARGETS[name], "met": met[name]} for name in TARGETS}}


def print_summary(summary: dict[str, Any]) -> None:
    def mark(name: str) -> str:
        return "✓" if summary["targets"][name]["met"] else "✗"

    print(f"clean: accuracy {summary['clean_accuracy']:.4f}, ECE {summary['clean_ece']:.4f}")
    print(f"{mark('mean_accuracy')} mean corrupted accuracy {summary['mean_accuracy']:.4f} (target >= 0.85)")
    print(f"{mark('mean_ece')} mean corrupted ECE {summary['mean_ece']:.4f} (target <= 0.05)")
    print(f"{mark('worst_severity1_drop_points')} worst severity-1 drop {summary['worst_severity1_drop_points']:.1f} "
          f"points, {summary['worst_severity1_corruption']} (target <= 5)")  # fmt: skip


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model-dir", type=Path, default=get_settings().reference_model, help="a model folder")
    which.add_argument("--model", help="a published version of --model-store, e.g. v3 (instead of --model-dir)")
    parser.add_argument("--model-store", type=Path, help="default: settings.model_store")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "catsdogs", help="its test/ split is used")
    parser.add_argument("--limit-per-class", type=int, help="the first N photos of each class only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="corrupting and decoding processes")
    parser.add_argument(
        "--shift-calibration",
        action="store_true",
        help="also score at a temperature fitted on val/ as it is and under mild corruptions",
    )
    parser.add_argument("--json", type=Path, default=WORK_DIR / "robustness.json")
    return parser.parse_args(argv)


def load_model(args: argparse.Namespace) -> tuple[LoadedModel, str]:
    """The model the arguments name, and where it came from."""
    if args.model is None:
        return load_folder(args.model_dir), str(args.model_dir)
    store = args.model_store or get_settings().model_store
    return load(store, args.model), f"{store}/{args.model}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    model, source = load_model(args)
    samples = class_folder_samples(args.data / "test")
    if args.limit_per_class:
        samples = first_per_class(samples, args.limit_per_class)
    logits, labels = logits_by_condition(samples, model, args.workers)
    rows = score_rows(logits, labels, float(model.meta.get("temperature", 1.0)))
    summary = summarise(rows)
    print(f"model {model.version} from {source}; {len(samples)} photos of {args.data / 'test'}")
    print_table(rows, [("corruption", "corruption", ""), ("severity", "severity", "d"), ("level", "level", ""),
                       *SCORE_COLUMNS, ("drop_points", "drop (points)", ".1f")])  # fmt: skip
    print_summary(summary)
    levels = {name: list(levels) for name, (_, levels, _) in CORRUPTIONS.items()}
    result = {"environment": environment(), "model": model.version, "model_from": source, "data": str(args.data),
              "images": len(samples), "levels": levels, "rows": rows, "summary": summary}  # fmt: skip
    if args.shift_calibration:
        temperature = shift_temperature(args.data, model, args.workers, args.limit_per_class)
        shifted = score_rows(logits, labels, temperature)
        print(f"\nat temperature {temperature:.4f}, fitted on val/ as it is and under every corruption at severity 1 "
              f"(stored: {float(model.meta.get('temperature', 1.0)):.4f})")  # fmt: skip
        print_summary(summarise(shifted))
        result["shift_calibration"] = {"temperature": temperature, "rows": shifted, "summary": summarise(shifted)}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
