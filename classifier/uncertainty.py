"""The uncertainty flag: a result is uncertain when its confidence is below its model's threshold.

The threshold is chosen at publication on the validation split (`choose_threshold`) and kept in the model
card as meta["uncertainty"] = {"threshold", "target_accuracy", "coverage", "accuracy", "split", "n"}. A model
published before that has none: `threshold_of` then answers FALLBACK_THRESHOLD.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TARGET_ACCURACY = 0.97  # of the predictions at or above the threshold, on the validation split
# For a model card without a threshold. 0.9: for the reference model, about the threshold that a target of
# 97% chooses on its validation split (models/reference/meta.json), rounded to a figure people remember.
FALLBACK_THRESHOLD = 0.9


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float = TARGET_ACCURACY) -> dict[str, Any]:
    """The lowest confidence t of (N,) `confidence` such that the predictions with confidence >= t are right
    at least `target` of the time (`correct`: (N,) booleans).

    The candidates are the confidences seen, so t is one of them. Return {"threshold", "target_accuracy",
    "coverage" (the share at or above t), "accuracy" (theirs), "n"}. When no t reaches the target, t is 1.0
    (nearly everything is uncertain) and accuracy that of the most confident prediction(s).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ValueError("choose_threshold needs two (N,) arrays of the same length N >= 1")
    order = np.argsort(-confidence, kind="stable")
    ranked, hits = confidence[order], np.cumsum(correct[order])
    # The set {confidence >= t} for t = ranked[i] holds every tie of ranked[i]: end each prefix at its last tie.
    last = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    accuracy = hits[last] / (last + 1)
    reached = np.flatnonzero(accuracy >= target)
    if len(reached) == 0:
        return _threshold(1.0, target, float(np.mean(confidence >= 1.0)), float(accuracy[0]), len(confidence))
    best = reached[-1]  # the longest prefix: the lowest threshold
    coverage = (last[best] + 1) / len(confidence)
    return _threshold(float(ranked[last[best]]), target, float(coverage), float(accuracy[best]), len(confidence))


def _threshold(threshold: float, target: float, coverage: float, accuracy: float, n: int) -> dict[str, Any]:
    return {"threshold": threshold, "target_accuracy": target, "coverage": coverage, "accuracy": accuracy, "n": n}


def threshold_of(meta: dict[str, Any] | None) -> float:
    """The uncertainty threshold of a model card; FALLBACK_THRESHOLD when it has none."""
    found = ((meta or {}).get("uncertainty") or {}).get("threshold")
    return FALLBACK_THRESHOLD if found is None else float(found)


def is_uncertain(confidence: float | None, threshold: float) -> bool:
    """Whether a result is uncertain: a confidence below the threshold. A failed result (no confidence) is not."""
    return confidence is not None and confidence < threshold
