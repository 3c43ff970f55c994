"""Data-parallel training helpers: process-group set-up from ``torchrun``'s environment, and a batch norm that
computes its statistics over the global batch on any device (CPU/gloo included).

Why our own synchronised batch norm: ``torch.nn.SyncBatchNorm`` refuses CPU tensors, and without it two
processes × batch 2 normalise with per-process statistics of 2 images while one process × batch 4 uses 4, so
the two set-ups train different models. :class:`GlobalBatchNorm2d` all-reduces the per-channel sum, sum of
squares and count with the autograd-aware ``torch.distributed.nn.functional.all_reduce``; forward and backward
then equal batch norm over the concatenated global batch (tests/test_ddp.py checks this against one process).
With one process (or outside a process group) it is exactly ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``local_rank`` picks the GPU on a node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    Without those variables (a plain ``ctsdg train``) this is a no-op returning a single-process DistInfo.
    Backend: NCCL for CUDA, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover the batches of every process in the group.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``. In training mode inside an initialised
    process group of more than one process it computes mean and (biased) variance from all-reduced sums; the
    running variance gets the unbiased global estimate, as ``nn.BatchNorm2d`` would over the whole batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # sums in float64: E[x²] - E[x]² loses digits in float32 that the two-pass nn.BatchNorm2d keeps
        xd = x.double()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device, dtype=torch.float64)
        local = torch.cat((xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)), count))
        total = _AllReduceSum.apply(local)  # the backward all-reduces the gradients of the sums
        c = x.shape[1]
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (n / (n - 1.0)) if float(n) > 1 else var
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        shape = (1, c, 1, 1)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.double().view(shape) + self.bias.double().view(shape)
        return y.to(x.dtype)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is again the sum over processes (every process's loss depends on
    every process's contribution)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by :class:`GlobalBatchNorm2d`, keeping its tensors."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.to(next(child.buffers()).device)
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (a no-op for one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` and DDP wrappers (the module itself when unwrapped)."""
    module = getattr(module, "_orig_mod", module)  # torch.compile
    module = getattr(module, "module", module)  # DDP
    return getattr(module, "_orig_mod", module)
