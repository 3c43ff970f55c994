"""Projection heads P_t and P_s (paper Sec. 3.1, "intermediate supervision").

They map the 64-channel full-resolution decoder features of each stream to an image (P_t, tanh,
3 channels) and an edge map (P_s, sigmoid, 1 channel). They feed only the intermediate loss
L_inter = BCE(E_gt, P_s(F_s)) + l1(I_gt, P_t(F_t)); inference does not need them.
Official: models/generator/projection.py.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """Residual block: conv3x3 C->C/4, BN, ReLU, conv3x3 C/4->C, BN, +x, ReLU (no conv bias)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + x)


class TextureProjection(nn.Module):
    """P_t: texture features (B, C, H, W) -> projected image (B, 3, H, W) in [-1, 1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.texture_resolver = Bottleneck(channels, channels // 4)
        self.out_layer = nn.Sequential(nn.Conv2d(channels, 3, 1), nn.Tanh())

    def forward(self, texture_feat: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.texture_resolver(texture_feat))


class StructureProjection(nn.Module):
    """P_s: structure features (B, C, H, W) -> projected edge map (B, 1, H, W) in [0, 1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.structure_resolver = Bottleneck(channels, channels // 4)
        self.out_layer = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, structure_feat: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.structure_resolver(structure_feat))
