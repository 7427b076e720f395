"""trainer.evaluate: temperature scaling, ECE, ROC AUC and the report, on hand-computed cases and real photos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from classifier.model import CLASSES, build_model, normalize
from classifier.preprocess import load_image, stack
from trainer.data import CatsDogsData
from trainer.evaluate import (
    collect_logits,
    confident_mistakes,
    fit_temperature,
    report,
    roc_auc,
    summary,
)

REPORT_KEYS = {"n", "classes", "temperature", "accuracy", "per_class", "roc_auc", "ece", "nll", "confusion_matrix",
               "predicted_share", "reliability", "uncalibrated"}  # fmt: skip


def _binary_logits(dog_probabilities: list[float]) -> torch.Tensor:
    """(N, 2) logits whose softmax gives P(dog) = p exactly: [log(1 - p), log p]."""
    p = torch.tensor(dog_probabilities, dtype=torch.float64)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 2, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=generator).squeeze(1)
    fitted = fit_temperature(true_temperature * z, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)


def test_fit_temperature_accepts_inference_mode_logits() -> None:
    with torch.inference_mode():
        logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    assert 0 < fit_temperature(logits, torch.tensor([0, 1, 1, 0])) < math.inf


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 predictions of dog at 0.8 with 8 dogs, 5 predictions of cat at 0.6 with 3 cats.
    logits = _binary_logits([0.8] * 10 + [0.4] * 5)
    labels = torch.tensor([1] * 8 + [0] * 2 + [0] * 3 + [1] * 2)
    assert report(logits, labels)["ece"] == pytest.approx(0.0, abs=1e-9)


def test_ece_matches_a_hand_computed_value() -> None:
    # 4 cats called cat at 0.9 (accuracy 1.0), 4 predictions of dog at 0.7 of which 1 is right (accuracy 0.25):
    # ECE = 4/8 * |1.0 - 0.9| + 4/8 * |0.25 - 0.7| = 0.05 + 0.225.
    logits = _binary_logits([0.1] * 4 + [0.7] * 4)
    labels = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0])
    result = report(logits, labels)
    assert result["ece"] == pytest.approx(0.275)
    used = {i: b for i, b in enumerate(result["reliability"]) if b["count"]}
    assert set(used) == {10, 13} and len(result["reliability"]) == 15
    assert used[13]["accuracy"] == 1.0 and used[10]["accuracy"] == 0.25
    assert used[13]["confidence"] == pytest.approx(0.9) and used[10]["confidence"] == pytest.approx(0.7)


def test_roc_auc_matches_a_hand_computed_value() -> None:
    # Dogs score 0.8, 0.4, 0.35; cats 0.1, 0.4, 0.7. Dog-above-cat pairs: 3 + (1 + 0.5) + 1 = 5.5 of 9.
    logits = _binary_logits([0.1, 0.4, 0.8, 0.4, 0.7, 0.35])
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    assert report(logits, labels)["roc_auc"] == pytest.approx(5.5 / 9)


def test_roc_auc_agrees_with_torchmetrics_and_needs_both_classes() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(500, generator=generator).round(decimals=1)  # many ties
    positive = torch.rand(500, generator=generator) < 0.4
    assert roc_auc(scores.numpy(), positive.numpy()) == pytest.approx(binary_auroc(scores, positive.long()).item())
    assert roc_auc(scores.numpy(), torch.ones(500, dtype=torch.bool).numpy()) is None


def test_report_counts_rows_as_true_and_columns_as_predicted() -> None:
    logits = _binary_logits([0.2, 0.9, 0.8, 0.7])  # predictions: cat, dog, dog, dog
    labels = torch.tensor([0, 0, 0, 1])
    result = report(logits, labels, CLASSES, temperature=1.7)
    assert set(result) == REPORT_KEYS
    assert json.loads(json.dumps(result)) == result
    assert result["confusion_matrix"] == [[1, 2], [0, 1]]
    assert result["n"] == 4 and result["accuracy"] == 0.5 and result["temperature"] == 1.7
    assert result["per_class"]["cat"] == {"precision": 1.0, "recall": pytest.approx(1 / 3), "f1": 0.5, "support": 3}
    assert result["per_class"]["dog"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "f1": 0.5, "support": 1}
    assert result["predicted_share"] == {"cat": 0.25, "dog": 0.75}
    assert result["uncalibrated"]["ece"] == pytest.approx(report(logits, labels)["ece"])
    assert "accuracy     0.5000" in summary(result, "somewhere")


def test_confident_mistakes_are_the_surest_wrong_predictions() -> None:
    logits = _binary_logits([0.9, 0.2, 0.6, 0.99, 0.1])
    labels = torch.tensor([0, 0, 0, 1, 1])
    mistakes = confident_mistakes(logits, labels, ["a", "b", "c", "d", "e"], k=2)
    assert [(m["path"], m["true"], m["predicted"]) for m in mistakes] == [("a", "cat", "dog"), ("e", "dog", "cat")]
    assert mistakes[0]["confidence"] == pytest.approx(0.9)


def test_collect_logits_feeds_the_network_what_the_workers_decode(data_dir: Path) -> None:
    data = CatsDogsData(data_dir, limit_per_class=3)
    data.setup("test")
    torch.manual_seed(0)
    net = build_model().train()
    logits, labels, paths = collect_logits(net, data.datasets["test"], batch_size=4)
    assert net.training  # restored
    assert logits.shape == (6, 2) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [Path(p).parent.name for p in paths] == ["cat"] * 3 + ["dog"] * 3
    with torch.inference_mode():
        expected = net.eval()(normalize(stack([load_image(p) for p in paths])))
    torch.testing.assert_close(logits, expected)
