"""The cats-vs-dogs network and the tensor side of its preprocessing."""

from __future__ import annotations

import logging
import time
from typing import cast

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torchvision.models import resnet18

CLASSES: tuple[str, ...] = ("cat", "dog")  # ImageFolder's sorted folder order
IMAGE_SIZE = 64
# Grayscale statistics of the training split at 64x64 (3,000-image sample).
MEAN = 0.4618
STD = 0.2434
STEMS = ("imagenet", "medium", "small")
BACKENDS = ("eager", "compiled")
LAYOUT_PROBE_BATCH = 32  # images per timed forward pass when choosing a layout: under a second for every stem
# "auto": bf16 where the hardware computes it natively (CUDA, CPUs with AMX or AVX-512 BF16), else fp32.
PRECISIONS = ("auto", "fp32", "bf16")

log = logging.getLogger(__name__)


def build_model(num_classes: int = len(CLASSES), stem: str = "imagenet") -> nn.Module:
    """Return torchvision's ResNet18 for (N, 1, H, W) input and `num_classes` logits.

    The stem sets the size of the first residual stage's feature maps, and with it the cost:
    "imagenet" keeps torchvision's 7x7 stride-2 convolution and max-pool (16x16, about 0.28
    GFLOP per 64x64 image); "medium" has a 3x3 stride-1 convolution and the max-pool (32x32,
    about 1.1 GFLOP); "small" the 3x3 convolution alone, the CIFAR-style stem (64x64, 4.4 GFLOP).
    """
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    net: nn.Module = resnet18(weights=None, num_classes=num_classes)
    if stem == "imagenet":
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        net.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    if stem == "small":
        net.maxpool = nn.Identity()
    return net


def normalize(batch: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """Map a (N, 1, H, W) uint8 batch to the float input the network was trained on."""
    return (batch.float() / 255.0 - mean) / std


def for_inference(net: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Eval mode on `device`; channels-last weights on CUDA (tensor cores), contiguous on CPU. The
    serving backends time both layouts on a CPU and keep the faster (`faster_layout`)."""
    net = net.eval().to(device)
    return net.to(memory_format=torch.channels_last) if torch.device(device).type == "cuda" else net


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` computes bfloat16 convolutions in hardware: a CUDA GPU with native bf16,
    or a CPU with AMX tiles (Intel Sapphire Rapids and later) or AVX-512 BF16 dot products (AMD
    Zen 4 and later, Intel Cooper Lake); elsewhere oneDNN emulates bf16 and it is slower than fp32."""
    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))  # Ampere and later
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """Turn "auto" into "bf16" or "fp32" for `device`; check the others."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown inference precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def accelerate(net: nn.Module, backend: str = "eager", batch_size: int = 64, precision: str = "fp32") -> nn.Module:
    """The serving form of an eval-mode net, run on parts of at most `batch_size` images (`InParts`):
    BatchNorm folded into the convolutions ("eager"), or compiled by TorchInductor with frozen weights
    for parts of exactly `batch_size` ("compiled"); in float32 or, with precision "bf16", in bfloat16
    (`Bfloat16`).

    In float32 either backend returns the same probabilities as `net` to within float rounding
    (tests/classifier); bfloat16 moves them by up to a few hundredths (docs/performance.md).
    "compiled" needs a C++ compiler and compiles on its first call (20-40 s on two cores).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if net.training:
        raise ValueError("accelerate() needs a net in eval mode (BatchNorm folding uses its running statistics)")
    device = next(net.parameters()).device
    bf16 = resolve_precision(precision, device) == "bf16"
    if backend == "eager":
        folded = Bfloat16(fuse(net)).eval() if bf16 else faster_layout(for_inference(fuse(net), device))
        return InParts(folded, batch_size, pad=False)
    served = Bfloat16(fuse(net)).eval() if bf16 else net
    compiled = torch.compile(served, dynamic=False, options={"freezing": True})  # an nn.Module wrapping `served`
    return InParts(cast(nn.Module, compiled), batch_size, pad=True)


def faster_layout(net: nn.Module, repeats: int = 2) -> nn.Module:
    """`net` (eval mode) in whichever memory layout runs its forward pass faster where it is.

    Channels-last on CUDA. On a CPU it depends on the CPU: the folded shipped network ran 1.7 times
    as fast channels-last on an AMD EPYC Zen 3, the plain one 10% slower on an Intel Xeon with AVX2
    (docs/performance.md), so both are timed here, once, on a blank batch.
    """
    device = next(net.parameters()).device
    if device.type == "cuda":
        return net.to(memory_format=torch.channels_last)
    batch = torch.zeros(LAYOUT_PROBE_BATCH, 1, IMAGE_SIZE, IMAGE_SIZE, device=device)
    seconds: dict[torch.memory_format, float] = {}
    with torch.inference_mode():
        for layout in (torch.contiguous_format, torch.channels_last):
            net.to(memory_format=layout)
            net(batch)  # the first call picks and prepares oneDNN's kernels
            seconds[layout] = min(_timed(net, batch) for _ in range(repeats))
    faster = min(seconds, key=seconds.__getitem__)
    log.info("serving layout %s: %s", faster, {str(k): round(LAYOUT_PROBE_BATCH / v) for k, v in seconds.items()})
    return net.to(memory_format=faster)


def _timed(net: nn.Module, batch: torch.Tensor) -> float:
    start = time.perf_counter()
    net(batch)
    return time.perf_counter() - start


class Bfloat16(nn.Module):
    """Runs `net` with bfloat16 weights and activations in channels-last layout (the layout oneDNN's
    AMX kernels and tensor cores want): float input in, float32 logits out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.to(torch.bfloat16).to(memory_format=torch.channels_last)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(batch.to(torch.bfloat16, memory_format=torch.channels_last))
        return logits.float()


class InParts(nn.Module):
    """Runs `net` on parts of at most `batch_size` rows and joins the outputs.

    With `pad`, a short last part is zero-padded to exactly `batch_size` rows, so that a net compiled
    for one shape never recompiles for a job's shorter last batch. Eval mode only: padding rows do not
    change the real rows' outputs there.
    """

    def __init__(self, net: nn.Module, batch_size: int, pad: bool) -> None:
        super().__init__()
        self.net, self.batch_size, self.pad = net, batch_size, pad

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        outputs = []
        for part in torch.split(batch, self.batch_size):
            rows = part.shape[0]
            if self.pad and rows < self.batch_size:
                part = torch.cat([part, part.new_zeros((self.batch_size - rows, *part.shape[1:]))])
            outputs.append(self.net(part)[:rows])
        return torch.cat(outputs)


@torch.inference_mode()
def predict_proba(
    net: nn.Module, batch: torch.Tensor, mean: float = MEAN, std: float = STD, temperature: float = 1.0
) -> torch.Tensor:
    """Return (N, C) class probabilities for a (N, 1, H, W) uint8 batch on the net's device, in the
    precision of the net (classifier.model.accelerate)."""
    logits = net(normalize(batch, mean, std))
    return torch.softmax(logits.float() / temperature, dim=1)
