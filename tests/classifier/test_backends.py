"""The serving backends give the plain network's probabilities, on real photos and the trained model;
bfloat16 stays within a few hundredths of them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from classifier import store
from classifier.model import (
    BACKENDS,
    InParts,
    accelerate,
    build_model,
    faster_layout,
    native_bf16,
    predict_proba,
    resolve_precision,
)
from classifier.preprocess import load_image, stack


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_the_plain_network_within_1e_4(backend: str, photos: list[Path], reference_store: Path) -> None:
    model = store.load(reference_store)
    norm = model.meta["normalization"]
    fast = accelerate(model.net, backend, batch_size=8)
    batch = stack([load_image(p, 64) for p in photos])  # 12 photos: one full batch of 8, one padded of 4
    for rows in (batch, batch[:3]):
        expected = predict_proba(model.net, rows, norm["mean"], norm["std"])
        got = predict_proba(fast, rows, norm["mean"], norm["std"])
        assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_keeps_every_label_and_moves_confidences_by_hundredths(
    backend: str, photos: list[Path], reference_store: Path
) -> None:
    model = store.load(reference_store)
    norm, temperature = model.meta["normalization"], model.meta["temperature"]
    fast = accelerate(model.net, backend, batch_size=8, precision="bf16")
    batch = stack([load_image(p, 64) for p in photos])
    expected = predict_proba(model.net, batch, norm["mean"], norm["std"], temperature)
    got = predict_proba(fast, batch, norm["mean"], norm["std"], temperature)
    assert got.dtype == torch.float32
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert (got - expected).abs().max().item() <= 0.05
    assert next(model.net.parameters()).dtype == torch.float32  # the loaded model is left as it was


def test_auto_precision_is_bf16_only_where_the_hardware_has_it() -> None:
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown inference precision"):
        resolve_precision("fp16", "cpu")


def test_padding_rows_do_not_change_the_real_rows() -> None:
    net = build_model().eval()
    batch = torch.randn(3, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(InParts(net, 5, pad=True)(batch), net(batch), atol=1e-5)


def test_a_batch_run_in_parts_gives_the_whole_batch_outputs() -> None:
    net = build_model().eval()
    batch = torch.randn(7, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(InParts(net, 3, pad=False)(batch), net(batch), atol=1e-5)


def test_the_serving_layout_is_the_faster_one_and_changes_no_output(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    net, batch = build_model(stem="medium").eval(), torch.randn(4, 1, 64, 64)
    with torch.inference_mode():
        expected = net(batch)
        with caplog.at_level(logging.INFO, logger="classifier.model"):
            chosen = faster_layout(net)
        torch.testing.assert_close(chosen(batch), expected, atol=1e-4, rtol=1e-4)
    weight = chosen.layer1[0].conv1.weight
    layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    assert f"serving layout {layout}" in caplog.text


def test_unknown_backend_and_training_mode_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown inference backend"):
        accelerate(build_model().eval(), "onnx")
    with pytest.raises(ValueError, match="eval mode"):
        accelerate(build_model().train())
