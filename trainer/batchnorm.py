"""BatchNorm over the global batch of all DDP ranks, on any device.

With it, N processes with batch B train like one process with batch N*B (given
the same samples; see trainer.data.CatsDogsData). torch's nn.SyncBatchNorm does
this on CUDA only, so `layer_sync` picks it there and `GlobalBatchNorm` elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync, TorchSyncBatchNorm
from torch import nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training under torch.distributed, normalises a (N, C, H, W) batch with the
    mean and variance of all ranks' batches together and updates the running statistics with them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # Two passes (mean, then the mean squared deviation) rather than E[x^2] - E[x]^2, which cancels
        # catastrophically. The all-reduces are differentiable: each rank's backward receives the
        # gradient of every rank's loss through the shared statistics, as nn.SyncBatchNorm does.
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 at least, even under autocast
        count = x32.new_full((1,), x.numel() // x.shape[1])
        sums: torch.Tensor = _AllSum.apply(torch.cat([x32.sum(dim=(0, 2, 3)), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = x32 - mean[None, :, None, None]
        var: torch.Tensor = _AllSum.apply(centred.square().sum(dim=(0, 2, 3))) / n
        self._track(mean.detach(), var.detach(), n)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        """Update the running statistics as nn.BatchNorm2d does: the unbiased variance, momentum or cumulative."""
        tracked = self.num_batches_tracked
        if not self.track_running_stats or self.running_mean is None or self.running_var is None or tracked is None:
            return
        tracked.add_(1)  # in place, as nn.BatchNorm2d does: a twin from _rebuilt shares this buffer
        factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * n / (n - 1).clamp(min=1), factor)


class _AllSum(torch.autograd.Function):
    """Sum a tensor over all ranks; the backward pass sums the gradients likewise."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm(LayerSync):
    """Lightning plugin: swaps every nn.BatchNorm2d for GlobalBatchNorm2d for fitting, and back afterwards."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _swap(model, nn.BatchNorm2d, GlobalBatchNorm2d)

    def revert(self, model: nn.Module) -> nn.Module:
        return _swap(model, GlobalBatchNorm2d, nn.BatchNorm2d)


def layer_sync(on_cuda: bool) -> LayerSync:
    """The BatchNorm synchronisation for a multi-process fit: torch's fused nn.SyncBatchNorm on CUDA, else ours."""
    return TorchSyncBatchNorm() if on_cuda else GlobalBatchNorm()


def _swap(module: nn.Module, old: type[nn.BatchNorm2d], new: type[nn.BatchNorm2d]) -> nn.Module:
    """Replace, in place, each child of exactly type `old` by a `new` sharing its parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is old:
            setattr(module, name, _rebuilt(child, new))
        else:
            _swap(child, old, new)
    return module


def _rebuilt(bn: nn.BatchNorm2d, cls: type[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    twin = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for name, tensor in [*bn.named_parameters(recurse=False), *bn.named_buffers(recurse=False)]:
        setattr(twin, name, tensor)  # the same objects: an optimizer or a hook that holds them still works
    return twin.train(bn.training)
