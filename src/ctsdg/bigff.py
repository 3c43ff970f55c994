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
import torch.nn.functional as F
from torch import nn

from . import winograd


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
        self._winograd = winograd.WeightCache()  # the fused gate weight transformed, for fp32 inference

    def gates(self, energy: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Concat(G_s, G_t) (B, 2C, H, W) from Concat(F_t, F_s): both gates as one 2C -> 2C convolution (one
        pass over the input instead of two), by Winograd where it pays (winograd.py): with the
        transformed weight cached in fp32 inference, transformed per call in fp32 training. ``energy``
        may be the pair (F_t, F_s) itself: Winograd in inference reads it without concatenating it
        (one pass over 2C channels fewer); the other paths concatenate it first."""
        s_gate, t_gate = self.structure_gate[0], self.texture_gate[0]
        weight = torch.cat((s_gate.weight, t_gate.weight))
        bias = torch.cat((s_gate.bias, t_gate.bias))
        if winograd.applies(energy, weight, 1, 1):
            u = self._winograd.for_input(energy, weight, s_gate.weight, t_gate.weight)
            gates = winograd.conv3x3(energy, u, bias)
        else:
            if isinstance(energy, tuple):
                energy = torch.cat(energy, dim=1)
            if winograd.applies(energy, weight, 1, 1, autograd=True):
                gates = winograd.conv3x3_trained(energy, weight, bias)
            else:
                gates = F.conv2d(energy, weight, bias, padding=1)
        return torch.sigmoid(gates) if torch.is_grad_enabled() else torch.sigmoid_(gates)

    def forward(self, texture_feat: torch.Tensor, structure_feat: torch.Tensor, reference: bool = False
                ) -> torch.Tensor:
        """(B, C, H, W) x 2 -> F_b (B, 2C, H, W) = Concat(F_t', F_s'). ``reference``: the gates as the
        authors compute them, two convolutions (same numbers within float rounding)."""
        energy = torch.cat((texture_feat, structure_feat), dim=1)
        if reference:
            gate_s, gate_t = self.structure_gate(energy), self.texture_gate(energy)
        else:
            gate_s, gate_t = self.gates(energy).chunk(2, dim=1)
        texture_feat = texture_feat + self.texture_gamma * (gate_s * structure_feat)  # Eq. (1)
        structure_feat = structure_feat + self.structure_gamma * (gate_t * texture_feat)  # Eq. (2)
        return torch.cat((texture_feat, structure_feat), dim=1)  # Eq. (3)
