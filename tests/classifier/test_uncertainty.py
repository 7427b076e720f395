"""The uncertainty threshold, chosen on synthetic validation confidences."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.uncertainty import FALLBACK_THRESHOLD, choose_threshold, is_uncertain, threshold_of


def test_the_lowest_threshold_whose_predictions_above_reach_the_target() -> None:
    # Sorted by confidence: the top 4 are right, then one wrong at 0.8, then right ones again.
    confidence = np.array([0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.55])
    correct = np.array([True, True, True, True, False, True, True, False])
    found = choose_threshold(confidence, correct, target=0.8)
    # >= 0.6: 6 of 7 right (0.857); >= 0.55: 6 of 8 (0.75). The lowest reaching 0.8 is 0.6.
    assert found["threshold"] == 0.6
    assert found["coverage"] == pytest.approx(7 / 8) and found["accuracy"] == pytest.approx(6 / 7)
    assert (found["target_accuracy"], found["n"]) == (0.8, 8)
    assert choose_threshold(confidence, correct, target=0.9)["threshold"] == 0.85  # 4 of 4; 4 of 5 below


def test_the_accuracy_above_need_not_fall_monotonically() -> None:
    # A wrong prediction at the top: >= 0.9 is 1 of 2 right, but >= 0.6 is 4 of 5, so 0.6 qualifies for 0.8.
    confidence = np.array([0.99, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([False, True, True, True, True, False])
    assert choose_threshold(confidence, correct, target=0.8)["threshold"] == 0.6


def test_ties_are_kept_together() -> None:
    # Three at 0.9, one of them wrong: t = 0.9 means all three, so 2 of 3 right, not the first two's 2 of 2.
    confidence = np.array([0.95, 0.9, 0.9, 0.9])
    correct = np.array([True, True, True, False])
    found = choose_threshold(confidence, correct, target=0.8)
    assert (found["threshold"], found["coverage"]) == (0.95, 0.25)
    assert choose_threshold(confidence, correct, target=0.75)["threshold"] == 0.9


def test_all_right_covers_everything_and_none_reaching_the_target_flags_nearly_all() -> None:
    confidence = np.random.default_rng(0).uniform(0.5, 1.0, 200)
    everything = choose_threshold(confidence, np.ones(200, bool))
    assert (everything["threshold"], everything["coverage"]) == (confidence.min(), 1.0)
    nothing = choose_threshold(confidence, np.zeros(200, bool))
    assert (nothing["threshold"], nothing["coverage"], nothing["accuracy"]) == (1.0, 0.0, 0.0)


def test_a_synthetic_calibrated_model_meets_its_target_on_fresh_data() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    correct = rng.uniform(size=20_000) < confidence  # calibrated: right as often as it is confident
    found = choose_threshold(confidence[:10_000], correct[:10_000], 0.97)
    assert 0.9 < found["threshold"] < 0.97  # accuracy above t is about (1 + t) / 2
    above = confidence[10_000:] >= found["threshold"]
    assert correct[10_000:][above].mean() == pytest.approx(0.97, abs=0.01)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        choose_threshold(np.array([]), np.array([], bool))
    with pytest.raises(ValueError):
        choose_threshold(np.array([0.9, 0.8]), np.array([True]))


def test_a_card_without_a_threshold_falls_back_and_failed_results_are_never_uncertain() -> None:
    assert threshold_of({"uncertainty": {"threshold": 0.92}}) == 0.92
    assert threshold_of({}) == threshold_of(None) == FALLBACK_THRESHOLD
    assert is_uncertain(0.91, 0.92) and not is_uncertain(0.92, 0.92) and not is_uncertain(None, 0.92)
