"""The CTSDG discriminator (paper Sec. 3.4): a texture branch, a structure branch and an edge detector.

Official: models/discriminator/{discriminator,texture_branch,structure_branch}.py.

* Texture branch: 5-layer spectral-norm PatchGAN on the RGB image (3→64→128→256→512→1, k4,
  strides 2,2,2,1,1, LeakyReLU 0.2, sigmoid). 256² in → 1×30×30 out.
* Structure branch: the same on Concat(edge, gray) (2 channels).
* Edge detector: a small residual CNN (no spectral norm, with BN) predicting an edge map from an
  RGB image. For a fake image, the structure branch judges the *detected* edges paired with the
  ground-truth gray image (official semantics, docs/deviations.md).

State-dict quirks kept for strict loading of the authors' checkpoints: the first layer is registered
twice (``conv1`` and ``features``), and spectral norm uses the old ``weight_orig/_u/_v`` names.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import spectral_norm

from . import winograd
from .config import ModelConfig
from .state_dict import load_checked, normalise_keys


class DiscriminatorOutput(NamedTuple):
    prediction: torch.Tensor  # (B, 2, h, w): texture and structure real/fake probabilities
    fake_edge: torch.Tensor  # (B, 1, H, W): the edge detector's edge map of the input image


class PatchConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) whose stride-1 4×4 layer, where it is wide enough, runs
    Winograd F(3×3, 4×4) in fp32 on CPU, forward and backward (``winograd.conv4x4``, issue 7): at full
    width the 256→512 layer is a third of the discriminator's cost in a training step.
    ``winograd = False`` on an instance (or ``ctsdg.winograd.ENABLED = False``) keeps the backend's own."""

    winograd = True

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (self.winograd and self.groups == 1 and self.padding_mode == "zeros" and self.stride[0] == self.stride[1]
                and self.padding[0] == self.padding[1] and self.dilation[0] == self.dilation[1]
                and winograd.applies_4x4(x, weight, self.stride[0], self.padding[0], self.dilation[0])):
            return winograd.conv4x4(x, weight, bias, self.padding[0])
        return super()._conv_forward(x, weight, bias)


def _sn_conv(in_ch: int, out_ch: int, stride: int) -> nn.Conv2d:
    return spectral_norm(PatchConv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=False))


class PatchBranch(nn.Module):
    """Spectral-norm PatchGAN used by both branches. Keys: conv{1..5}.0.weight_{orig,u,v}, features.*"""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Sequential(_sn_conv(in_channels, w, 2), nn.LeakyReLU(0.2))
        self.features = self.conv1  # official alias (texture_branch.py:14): duplicate state-dict keys
        self.conv2 = nn.Sequential(_sn_conv(w, 2 * w, 2), nn.LeakyReLU(0.2))
        self.conv3 = nn.Sequential(_sn_conv(2 * w, 4 * w, 2), nn.LeakyReLU(0.2))
        self.conv4 = nn.Sequential(_sn_conv(4 * w, 8 * w, 1), nn.LeakyReLU(0.2))
        self.conv5 = nn.Sequential(_sn_conv(8 * w, 1, 1))
        for m in self.modules():  # official weights_init('normal', 0.02) on the branch convs
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight_orig, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        return torch.sigmoid(x)


class EdgeDetector(nn.Module):
    """RGB image (B, 3, H, W) in [-1, 1] -> edge probability (B, 1, H, W). PyTorch default init
    (the official code does not re-initialise it)."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.projection = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU())
        self.res_layer = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
        )
        self.relu = nn.ReLU()
        self.out_layer = nn.Sequential(nn.Conv2d(hidden, 1, 1), nn.Sigmoid())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.projection(image)
        x = self.relu(self.res_layer(x) + x)
        return self.out_layer(x)


class Discriminator(nn.Module):
    """``Discriminator()`` is the official one (5,531,729 parameters).

    Args:
        config: only ``base_width`` is used: the branches have widths W, 2W, 4W, 8W with W = base_width.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.texture_branch = PatchBranch(3, config.base_width)
        self.structure_branch = PatchBranch(2, config.base_width)
        self.edge_detector = EdgeDetector()

    def forward(self, image: torch.Tensor, gray_image: torch.Tensor, real_edge: torch.Tensor,
                is_real: bool) -> DiscriminatorOutput:
        """Args:
            image: real or generated image (B, 3, H, W) in [-1, 1].
            gray_image: the ground-truth gray image (B, 1, H, W) in [0, 1].
            real_edge: the ground-truth edge map (B, 1, H, W) in [0, 1].
            is_real: judge ``real_edge`` (True) or the edges detected in ``image`` (False).
        """
        texture_pred = self.texture_branch(image)
        fake_edge = self.edge_detector(image)
        edge = real_edge if is_real else fake_edge
        structure_pred = self.structure_branch(torch.cat((edge, gray_image), dim=1))
        return DiscriminatorOutput(torch.cat((texture_pred, structure_pred), dim=1), fake_edge)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Strict by default; accepts the official keys, ``module.`` prefixes, new-style spectral-norm
        names, and state dicts that leave out the duplicate ``features.*`` aliases."""
        state_dict = normalise_keys(state_dict)
        for branch in ("texture_branch", "structure_branch"):
            for suffix in ("weight_orig", "weight_u", "weight_v"):
                src, dst = f"{branch}.conv1.0.{suffix}", f"{branch}.features.0.{suffix}"
                if src in state_dict and dst not in state_dict:
                    state_dict[dst] = state_dict[src]
        return load_checked(self, state_dict, strict=strict, assign=assign, what="discriminator")
