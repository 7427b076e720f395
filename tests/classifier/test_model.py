from __future__ import annotations

import pytest
import torch

from classifier.model import CLASSES, STEMS, build_model, normalize, predict_proba


@pytest.mark.parametrize("stem", STEMS)
def test_network_takes_grayscale_and_returns_two_logits(stem: str) -> None:
    net = build_model(stem=stem).eval()
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, len(CLASSES))


def test_unknown_stem_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stem"):
        build_model(stem="huge")


def test_normalize_maps_uint8_to_standardised_floats() -> None:
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    out = normalize(batch, mean=0.5, std=0.25)
    assert out.flatten().tolist() == pytest.approx([-2.0, 2.0])


def test_probabilities_sum_to_one() -> None:
    probs = predict_proba(build_model().eval(), torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8))
    assert probs.shape == (3, 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))
