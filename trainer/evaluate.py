"""Evaluation numbers from logits: temperature scaling, accuracy, P/R/F1, ROC AUC, calibration.

Plain torch and numpy, no Lightning: `trainer fit`, `trainer publish` and
`trainer test` all score a split with `collect_logits` and summarise it with
`report`, whose result is JSON-serialisable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, SequentialSampler, Subset

from classifier.model import CLASSES, MEAN, STD, normalize
from classifier.uncertainty import TARGET_ACCURACY, choose_threshold

ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width confidence bins
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
POSITIVE = "dog"


def collect_logits(
    net: nn.Module,
    data: Dataset[Any] | DataLoader[Any],
    device: str | torch.device = "cpu",
    mean: float = MEAN,
    std: float = STD,
    batch_size: int = 256,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Return (logits (N, C) float32 on the CPU, labels (N,) int64, file paths) for an eval dataset or loader.

    `data` yields ((1, H, W) uint8 image, label) pairs in file order, as
    `trainer.data.image_folder(..., train=False)` does; a loader must not shuffle.
    `net` is moved to `device` and left in the train/eval mode it came in.
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, num_workers=num_workers)
    if not isinstance(loader.sampler, SequentialSampler):
        raise ValueError("collect_logits needs a loader in dataset order (no shuffling, no distributed sampler)")
    paths = sample_paths(loader.dataset)
    was_training = net.training
    net.to(device).eval()
    logits, labels = [], []
    with torch.inference_mode():
        for images, targets in loader:
            logits.append(net(normalize(images.to(device), mean, std)).float().cpu())
            labels.append(targets)
    net.train(was_training)
    # clone() outside inference mode: inference tensors cannot take part in fit_temperature's autograd.
    return torch.cat(logits).clone(), torch.cat(labels).long().clone(), paths


def sample_paths(dataset: Dataset[Any]) -> list[str]:
    """Return the file of every sample of an ImageFolder, or of Subsets and ConcatDatasets of them, in order."""
    if isinstance(dataset, Subset):
        inner = sample_paths(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [path for part in dataset.datasets for path in sample_paths(part)]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise TypeError(f"{type(dataset).__name__} has no .samples; cannot name its files")
    return [str(path) for path, _ in samples]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """Return the T > 0 that minimises the NLL of softmax(logits / T) on (N, C) logits and (N,) labels.

    Temperature scaling (Guo et al. 2017, https://arxiv.org/abs/1706.04599): fit it
    on the validation split, never on test. The result is clipped to
    [MIN_TEMPERATURE, MAX_TEMPERATURE]: on a split the network gets entirely right
    the NLL keeps falling as T -> 0.
    """
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one sample")
    z = logits.detach().to("cpu", torch.float64, copy=True)
    y = labels.detach().to("cpu", torch.long, copy=True)
    # Optimise log T: unconstrained, and the NLL is far better conditioned in it than in T.
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    fitted = float(log_t.detach())
    if not math.isfinite(fitted):
        return 1.0
    return math.exp(min(max(fitted, math.log(MIN_TEMPERATURE)), math.log(MAX_TEMPERATURE)))


def report(
    logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = CLASSES, temperature: float = 1.0
) -> dict[str, Any]:
    """Summarise (N, C) logits against (N,) labels with probabilities softmax(logits / temperature).

    Keys: n, classes, temperature, accuracy, per_class {name: precision, recall, f1,
    support}, roc_auc (POSITIVE class against the rest; None if a class is absent),
    ece (in [0, 1], ECE_BINS bins of top-1 confidence), nll, confusion_matrix (rows
    true, columns predicted), predicted_share {name: share}, reliability (per bin:
    lower, upper, count, confidence, accuracy) and uncalibrated {ece, nll} at T = 1.
    """
    z = logits.detach().to("cpu", torch.float64)
    y = labels.detach().cpu().numpy().astype(np.int64)
    probs = torch.softmax(z / temperature, dim=1).numpy()
    preds = probs.argmax(axis=1)
    matrix = confusion_matrix(y, preds, len(classes))
    bins = reliability_bins(probs.max(axis=1), preds == y)
    positive = list(classes).index(POSITIVE) if POSITIVE in classes else len(classes) - 1
    return {
        "n": int(len(y)),
        "classes": list(classes),
        "temperature": float(temperature),
        "accuracy": float(np.mean(preds == y)) if len(y) else float("nan"),
        "per_class": _per_class(matrix, classes),
        "roc_auc": roc_auc(torch.log_softmax(z, dim=1)[:, positive].numpy(), y == positive),
        "ece": expected_calibration_error(bins),
        "nll": nll(logits, labels, temperature),
        "confusion_matrix": matrix.tolist(),
        "predicted_share": {name: float(np.mean(preds == i)) for i, name in enumerate(classes)},
        "reliability": bins,
        "uncalibrated": {"ece": expected_calibration_error(_bins_at(z, y, 1.0)), "nll": nll(logits, labels, 1.0)},
    }


def _bins_at(z: torch.Tensor, y: np.ndarray, temperature: float) -> list[dict[str, float]]:
    probs = torch.softmax(z / temperature, dim=1).numpy()
    return reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == y)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the (C, C) int64 count matrix, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    return matrix


def _per_class(matrix: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        hits, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i, :].sum()
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    return rows


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Return the area under the ROC curve of `scores` for boolean `positive`, or None with one class only.

    The Mann-Whitney rank statistic: the probability that a random positive scores
    above a random negative, ties counting one half.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """Return 1-based ranks of `scores`, tied values sharing the mean of their ranks."""
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Split top-1 `confidence` into `n_bins` equal-width bins (lower, upper].

    Return per bin: lower, upper, count, mean confidence and accuracy (both 0 when empty).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        bins.append({
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": count,
            "confidence": float(confidence[inside].mean()) if count else 0.0,
            "accuracy": float(correct[inside].mean()) if count else 0.0,
        })  # fmt: skip
    return bins


def expected_calibration_error(bins: list[dict[str, float]]) -> float:
    """Return sum over bins of (count / N) * |accuracy - confidence|, in [0, 1]."""
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Return the mean negative log-likelihood (nats) of `labels` under softmax(logits / temperature)."""
    if len(labels) == 0:
        return float("nan")
    z = logits.detach().to("cpu", torch.float64)
    return float(F.cross_entropy(z / temperature, labels.detach().cpu().long()))


def confident_mistakes(
    logits: torch.Tensor,
    labels: torch.Tensor,
    paths: Sequence[str],
    classes: Sequence[str] = CLASSES,
    temperature: float = 1.0,
    k: int = 16,
) -> list[dict[str, Any]]:
    """Return the `k` wrong predictions with the highest confidence: path, true, predicted, confidence."""
    probs = torch.softmax(logits.detach().to("cpu", torch.float64) / temperature, dim=1)
    confidence, preds = probs.max(dim=1)
    wrong = torch.nonzero(preds != labels.cpu()).flatten()
    worst = wrong[torch.argsort(confidence[wrong], descending=True, stable=True)][:k]
    return [
        {"path": str(paths[i]), "true": classes[int(labels[i])], "predicted": classes[int(preds[i])],
         "confidence": float(confidence[i])}
        for i in worst.tolist()
    ]  # fmt: skip


def calibrate_and_report(
    net: nn.Module,
    val: Dataset[Any],
    test: Dataset[Any],
    device: str | torch.device = "cpu",
    mean: float = MEAN,
    std: float = STD,
    batch_size: int = 256,
    num_workers: int = 0,
    uncertainty_target: float = TARGET_ACCURACY,
) -> dict[str, Any]:
    """Fit the temperature on `val`, then return `report` on `test` at that temperature.

    Adds `validation` (n, accuracy, and nll/ece at T = 1 and at the fitted T), `mistakes`
    (the most confident wrong test predictions) and `uncertainty` (the threshold chosen on
    `val` for `uncertainty_target`, see `uncertainty`) to the report.
    """
    val_logits, val_labels, _ = collect_logits(net, val, device, mean, std, batch_size, num_workers)
    temperature = fit_temperature(val_logits, val_labels)
    validation = report(val_logits, val_labels, CLASSES, temperature)
    logits, labels, paths = collect_logits(net, test, device, mean, std, batch_size, num_workers)
    return {
        **report(logits, labels, CLASSES, temperature),
        "validation": {key: validation[key] for key in ("n", "accuracy", "nll", "ece", "uncalibrated")},
        "mistakes": confident_mistakes(logits, labels, paths, CLASSES, temperature),
        "uncertainty": uncertainty(val_logits, val_labels, temperature, uncertainty_target),
    }


def uncertainty(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, target: float = TARGET_ACCURACY
) -> dict[str, Any]:
    """The model card's `uncertainty` section from validation (N, C) logits and (N,) labels: the lowest
    confidence (of softmax(logits / temperature), as the workers report it) above which predictions are
    right at least `target` of the time (classifier.uncertainty.choose_threshold)."""
    probs = torch.softmax(logits.detach().to("cpu", torch.float64) / temperature, dim=1)
    confidence, preds = probs.max(dim=1)
    correct = (preds == labels.detach().cpu()).numpy()
    return {**choose_threshold(confidence.numpy(), correct, target), "split": "val", "temperature": temperature}


def uncertainty_summary(found: dict[str, Any]) -> str:
    """One line on an `uncertainty` section."""
    return (
        f"uncertain below confidence {found['threshold']:.4f}: {found['coverage']:.1%} of {found['split']} at or "
        f"above it, {found['accuracy']:.2%} of those right (target {found['target_accuracy']:.0%})"
    )


def write_report_json(result: dict[str, Any], out_dir: Path) -> Path:
    """Write `result` as out_dir/report.json (creating out_dir) and return the file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def summary(result: dict[str, Any], source: str) -> str:
    """Return a report as the lines `trainer test` and `trainer fit` print."""
    classes = result["classes"]
    auc = "n/a (one class only)" if result["roc_auc"] is None else f"{result['roc_auc']:.4f} ({POSITIVE} positive)"
    lines = [
        f"test on {source} ({result['n']} images), temperature {result['temperature']:.3f}",
        f"  accuracy     {result['accuracy']:.4f}",
        f"  ROC AUC      {auc}",
        f"  ECE          {result['ece']:.4f} ({result['uncalibrated']['ece']:.4f} at T = 1)",
        f"  NLL          {result['nll']:.4f} ({result['uncalibrated']['nll']:.4f} at T = 1)",
        f"  {'class':<8}{'precision':>10}{'recall':>8}{'F1':>8}{'support':>9}",
    ]
    for name, row in result["per_class"].items():
        lines.append(f"  {name:<8}{row['precision']:>10.4f}{row['recall']:>8.4f}{row['f1']:>8.4f}{row['support']:>9}")
    shares = "  ".join(f"{name} {share:.4f}" for name, share in result["predicted_share"].items())
    lines += [f"  predicted    {shares}", "  confusion matrix (rows true, columns predicted)"]
    lines.append("  " + " " * 8 + "".join(f"{name:>8}" for name in classes))
    for name, row in zip(classes, result["confusion_matrix"], strict=True):
        lines.append(f"  {name:<8}" + "".join(f"{count:>8}" for count in row))
    if not MIN_TEMPERATURE * 1.001 < result["temperature"] < MAX_TEMPERATURE * 0.999:
        lines.append(f"  note: the temperature is at its bound [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]: the validation "
                     "split is too small or the network predicts (almost) one class")  # fmt: skip
    return "\n".join(lines)
