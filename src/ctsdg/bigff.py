"""Bi-directional Gated Feature Fusion, Bi-GFF (paper Sec. 3.2, Eq. 1-3). Official: bigff.py.

    G_s = sigmoid(Conv3x3(Concat(F_t, F_s)))          structure -> texture gate ("structure_gate")
    G_t = sigmoid(Conv3x3(Concat(F_t, F_s)))          texture -> structure gate ("texture_gate")
    F_t' = F_t ⊕ β (G_s ⊙ F_s)                                                        (Eq. 1)
    F_s' = F_s ⊕ α (G_t ⊙ F_t')                                                       (Eq. 2)
    F_b  = Concat(F_t', F_s')                                                         (Eq. 3)

β (``texture_gamma``) and α (``structure_gamma``) are learned scalars that start at 0, so Bi-GFF
starts as the identity-concat. Eq. 2 uses the *updated* F_t' as the official code does (the paper
writes F_t); see docs/deviations.md.
"""

from __future__ import annotations

import torch
from torch import nn


class BiGFF(nn.Module):
    """Args:
        channels: channels of each stream (64 in the paper). Output has 2x channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.structure_gate = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.Sigmoid())
        self.texture_gate = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.Sigmoid())
        self.structure_gamma = nn.Parameter(torch.zeros(1))  # α
        self.texture_gamma = nn.Parameter(torch.zeros(1))  # β

    def forward(self, texture_feat: torch.Tensor, structure_feat: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) x 2 -> F_b (B, 2C, H, W) = Concat(F_t', F_s')."""
        energy = torch.cat((texture_feat, structure_feat), dim=1)
        gate_s = self.structure_gate(energy)
        gate_t = self.texture_gate(energy)
        texture_feat = texture_feat + self.texture_gamma * (gate_s * structure_feat)  # Eq. (1)
        structure_feat = structure_feat + self.structure_gamma * (gate_t * texture_feat)  # Eq. (2)
        return torch.cat((texture_feat, structure_feat), dim=1)  # Eq. (3)
