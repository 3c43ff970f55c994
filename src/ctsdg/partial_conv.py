"""Stateless partial convolution (Liu et al., ECCV 2018), as used by every CTSDG encoder/decoder layer.

For an input ``x`` and a per-channel ``known_mask`` M (1 = valid), one layer computes

    out  = W * (x ⊙ M) · r,   r = (C_in·k·k) / sum(M over the window) · 1[sum > 0]      (PConv eq. 1)
    M'   = 1[sum(M over the window) > 0]                                                   (PConv eq. 2)

The official code gets ``sum(M over the window)`` from a dense convolution of the C_in-channel mask
with an all-ones (C_out, C_in, k, k) kernel — as costly as the feature convolution itself. That
convolution is the same for every output channel and equals a single-channel box filter of the mask
summed over input channels, which is what :class:`PartialConv2d` computes. Both are exact integer
counts in float32, so the results are bit-identical; :func:`partial_conv_reference` keeps the dense
version for the tests.

The updated mask is returned with C_out channels (an expanded view: no memory) so that the interface
matches the official per-channel masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _window_count(known_mask: torch.Tensor, kernel_size: int, stride: int, padding: int) -> torch.Tensor:
    """Number of valid input elements (over channels and the k×k window) under each output position."""
    with torch.no_grad(), torch.autocast(known_mask.device.type, enabled=False):
        summed = known_mask.float().sum(dim=1, keepdim=True)
        ones = torch.ones(1, 1, kernel_size, kernel_size, dtype=summed.dtype, device=summed.device)
        return F.conv2d(summed, ones, stride=stride, padding=padding)


class PartialConv2d(nn.Conv2d):
    """Partial convolution without bias, multi-channel masks (the official ``multi_channel=True``).

    Its only state is ``weight`` (key ``conv.weight`` inside :class:`PConvBNActiv`), as in the
    authors' checkpoints: no mask kernel is stored.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)

    def forward(self, x: torch.Tensor, known_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: features (B, C_in, H, W).
            known_mask: (B, C_in, H, W) or (B, 1, H, W) broadcastable, 1 = valid.

        Returns:
            ``(out, new_known_mask)``: (B, C_out, H', W') and the updated mask (B, C_out, H', W').
        """
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        count = _window_count(known_mask.expand(-1, self.in_channels, -1, -1), k, s, p)
        window_size = float(self.in_channels * k * k)
        new_mask = count.clamp(0.0, 1.0)
        ratio = window_size / (count + 1e-8) * new_mask  # official: slide_winsize / (update + 1e-8)
        out = F.conv2d(x * known_mask.to(x.dtype), self.weight, None, s, p)
        out = out * ratio.to(out.dtype)
        b, _, h, w = new_mask.shape
        return out, new_mask.expand(b, self.out_channels, h, w)


def partial_conv_reference(
    x: torch.Tensor, known_mask: torch.Tensor, weight: torch.Tensor, stride: int, padding: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official computation, literally: dense all-ones mask convolution. For tests only."""
    out_ch, in_ch, k, _ = weight.shape
    ones = torch.ones(out_ch, in_ch, k, k, dtype=known_mask.dtype, device=known_mask.device)
    with torch.no_grad():
        update = F.conv2d(known_mask, ones, stride=stride, padding=padding)
        ratio = (in_ch * k * k) / (update + 1e-8)
        update = update.clamp(0, 1)
        ratio = ratio * update
    out = F.conv2d(x * known_mask, weight, None, stride, padding) * ratio
    return out, update


# sample -> (kernel, stride, padding), official pconv.py:84-91
SAMPLING = {"down-7": (7, 2, 3), "down-5": (5, 2, 2), "down-3": (3, 2, 1), "none-3": (3, 1, 1)}


class PConvBNActiv(nn.Module):
    """Partial conv -> optional BatchNorm -> ReLU or LeakyReLU(0.2). Keys: ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, sample: str = "none-3", bn: bool = True,
                 activ: str = "relu"):
        super().__init__()
        k, s, p = SAMPLING[sample]
        self.conv = PartialConv2d(in_channels, out_channels, k, s, p)
        if bn:
            self.bn = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU() if activ == "relu" else nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, known_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, known_mask = self.conv(x, known_mask)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.activation(x), known_mask
