"""Test-time adaptation: a few steps of training on the picture being filled, before filling it.

A generator trained on a few dozen photos has not seen the building, the microscope slide or the
machine in the picture a user brings. The picture itself shows it, around the hole. So before the
forward that fills the hole, :func:`adapt_generator` fine-tunes a *copy* of the generator on that
picture: it cuts random free-form holes (``ctsdg.masks.IrregularMaskGenerator``) into the known pixels
and teaches the copy to fill them back, with the hole, valid and intermediate losses of training
(``ctsdg.losses``, restricted to pixels whose value is known). The real hole is never a target and
never an input, and nothing under it is read (the structure priors come from the caller, as inference
computes them). The caller's generator is not changed.

Settings: BatchNorm keeps its trained statistics (a batch of crops of one picture would corrupt
them); Adam at ``lr``; crops of ``crop`` pixels when the picture the network sees is larger; bf16
autocast where bf16 is fast (``ctsdg.cpu.has_fast_bf16``, or CUDA). Everything random comes from
``seed``, so the same picture, hole and settings give the same fill.

Measured on the validation photos: docs/model_card.md, "Adapting to the picture". Cost: about 0.9 s
a step for the bundled model at 256² on a 2-core AVX-512 CPU (30 steps: about 26 s a picture), and a
step of the authors' full-width model costs several times more.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .cpu import has_fast_bf16
from .masks import IrregularMaskGenerator

log = logging.getLogger(__name__)

#: (image (3, H, W) in [0, 1], known (1, H, W) {0, 1}) -> (edge (1, H, W), gray (1, H, W)), as inference
#: computes the structure priors (``Inpainter.structure_priors`` with its edge mode).
PriorsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class AdaptConfig:
    """How :func:`adapt_generator` trains the copy.

    Args:
        steps: optimiser steps (0 = no adaptation).
        lr: Adam's learning rate (the paper's fine-tune rate is 5e-5; 1e-4 was measured, 3e-4 scored no better).
        batch: crops per step, each with its own holes and flip.
        crop: side of the square crops taken when the network's input is larger (a multiple of 128).
        hole_ratio: range of the synthetic holes' share of a crop.
        seed: seeds the holes, flips and crop positions.
        hole_weight, valid_weight, intermediate_weight: the loss weights of training
            (``configs/bundled_w32.yaml``: 60, 10 and 1).
        style_weight, perceptual_weight: the paper's VGG16 terms (250 and 0.1 in training), on the
            composite of the synthetic holes only: the real hole holds the copy's own fill, detached, in
            both the composite and the target, so its pixels are never read. 0 (default) = off.
            ``perceptual_weight=20`` alone lowered LPIPS without costing SSIM on the validation photos, and
            with ``steps=60`` passed the model card's whole bar on the mean of four sets of masks
            (docs/model_card.md, "Adapting to the picture"; ``--adapt 60 --adapt-perceptual 20``); the
            style term trades SSIM for LPIPS.
    """

    steps: int = 30
    lr: float = 1e-4
    batch: int = 2
    crop: int = 256
    hole_ratio: tuple[float, float] = (0.05, 0.3)
    seed: int = 0
    hole_weight: float = 60.0
    valid_weight: float = 10.0
    intermediate_weight: float = 1.0
    style_weight: float = 0.0
    perceptual_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"adaptation steps must be 0 or more, got {self.steps}")
        if self.lr <= 0 or self.batch < 1:
            raise ValueError(f"adaptation needs lr > 0 and batch >= 1, got lr={self.lr}, batch={self.batch}")
        if self.crop < 128 or self.crop % 128:
            raise ValueError(f"adaptation crop must be a positive multiple of 128, got {self.crop}")
        if self.style_weight < 0 or self.perceptual_weight < 0:
            raise ValueError(f"adaptation's VGG16 term weights must be >= 0, got style {self.style_weight}, "
                             f"perceptual {self.perceptual_weight}")

    @property
    def uses_vgg(self) -> bool:
        """Whether the steps run the VGG16 terms (and need its pretrained weights)."""
        return bool(self.steps and (self.style_weight or self.perceptual_weight))

    def changes(self) -> dict:
        """The settings that differ from the defaults (what a cache key or a report needs to tell runs apart)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


def as_adapt_config(adapt: int | AdaptConfig) -> AdaptConfig:
    """``adapt`` as callers pass it (a number of steps, or an :class:`AdaptConfig`) as a config."""
    if isinstance(adapt, bool) or not isinstance(adapt, int | AdaptConfig):
        raise TypeError(f"adapt must be a number of steps or an AdaptConfig, got {adapt!r}")
    return adapt if isinstance(adapt, AdaptConfig) else AdaptConfig(steps=adapt)


@functools.lru_cache(maxsize=1)
def adaptation_vgg() -> torch.nn.Module:
    """VGG16 pool1–3 for the VGG16 terms, loaded once per process (a server adapts on every request).

    Raises:
        FileNotFoundError: the pretrained weights are not installed; the message names the command.
    """
    from .losses import load_vgg16_pools

    return load_vgg16_pools().eval().requires_grad_(False)


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=has_fast_bf16())


def _sample(image: torch.Tensor, hole: torch.Tensor, config: AdaptConfig, masks: IrregularMaskGenerator,
            rng: np.random.Generator, priors: PriorsFn) -> dict[str, torch.Tensor]:
    """One training sample cut from the picture: a crop, maybe mirrored, with synthetic holes."""
    _, h, w = image.shape
    ch, cw = min(h, config.crop), min(w, config.crop)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    im = image[:, top:top + ch, left:left + cw]
    real = hole[:, top:top + ch, left:left + cw]
    synthetic = torch.from_numpy(masks.generate(rng, ch, cw).astype(np.float32))[None]
    if rng.random() < 0.5:
        im, real, synthetic = im.flip(-1), real.flip(-1), synthetic.flip(-1)
    known_real = 1 - real
    known = known_real * (1 - synthetic)  # what the network is shown
    edge, gray = priors(im, known)
    target_edge, _ = priors(im, known_real)  # the edges it should find where the picture is known
    x = im * 2 - 1
    return {
        "target": x,
        "image": x * known,
        "edge": torch.cat((edge * known, gray * known), 0),
        "known": known,
        "scored": known_real,  # pixels whose value is known: the only ones any loss reads
        "filled": synthetic * known_real,  # synthetic holes over known pixels: what the hole loss scores
        "target_edge": target_edge,
    }


def adaptation_loss(out, sample: dict[str, torch.Tensor], config: AdaptConfig, vgg=None) -> torch.Tensor:
    """Training's hole, valid and intermediate terms over known pixels only (``out``: a GeneratorOutput),
    plus the VGG16 terms on the synthetic holes when their weights are set (``vgg``: ``VGG16Pools``)."""
    # imported here, not with the module: inference imports this file and needs none of them
    from .losses import hole_loss, perceptual_loss, style_loss, valid_loss

    target, scored = sample["target"], sample["scored"]
    output = out.output.float()
    hole_term = hole_loss(output, target, 1 - sample["filled"])  # training's term, its hole = the synthetic holes
    valid_term = valid_loss(output, target, sample["known"])
    edge_prob = out.projected_edge.float().clamp(1e-6, 1 - 1e-6)
    intermediate = (scored * F.binary_cross_entropy(edge_prob, sample["target_edge"], reduction="none")).mean() + (
        scored * (out.projected_image.float() - target).abs()).mean()
    total = (config.hole_weight * hole_term + config.valid_weight * valid_term
             + config.intermediate_weight * intermediate)
    if config.style_weight or config.perceptual_weight:
        own = output.detach() * (1 - scored)  # the real hole: the copy's own fill in both, never the picture
        comp = own + sample["known"] * target + sample["filled"] * output
        truth = own + scored * target
        with torch.autocast(output.device.type, enabled=False):
            comp_f = vgg(comp)
            with torch.no_grad():
                truth_f = [f.detach() for f in vgg(truth)]
        # training's terms sum an output and a composite half; here both halves are the composite
        total = (total + config.style_weight * style_loss(comp_f, comp_f, truth_f) / 2
                 + config.perceptual_weight * perceptual_loss(comp_f, comp_f, truth_f) / 2)
    return total


def adapt_generator(generator: torch.nn.Module, image_unit: torch.Tensor, hole: torch.Tensor, priors: PriorsFn,
                    config: AdaptConfig = AdaptConfig(), *, progress: bool = False) -> torch.nn.Module:
    """A copy of ``generator`` fine-tuned on the known pixels of one picture.

    Args:
        generator: a :class:`~ctsdg.generator.Generator`; it is not changed.
        image_unit: (3, H, W) in [0, 1], the picture as the network will see it (H, W multiples of 128).
        hole: (1, H, W) {0, 1}, 1 = the hole to fill; its pixels are never read.
        priors: the structure priors as inference computes them (:data:`PriorsFn`).
        config: steps, rate, crops, holes, seed.
        progress: show a progress bar (stderr).

    Returns:
        the adapted copy, in eval mode, on the generator's device, without gradients.
    """
    if image_unit.ndim != 3 or image_unit.shape[0] != 3 or hole.shape != (1, *image_unit.shape[1:]):
        raise ValueError(f"adapt_generator expects image (3, H, W) and hole (1, H, W), got "
                         f"{tuple(image_unit.shape)} and {tuple(hole.shape)}")
    # Callers may hold inference mode (Inpainter's forward does): the copy and everything it trains on
    # must be ordinary tensors, or autograd refuses them.
    with torch.inference_mode(False):
        return _train_copy(generator, image_unit.detach().float().cpu().clone(),
                           (hole.detach().cpu() > 0.5).float(), priors, config, progress)


def _train_copy(generator, image_unit, hole, priors: PriorsFn, config: AdaptConfig, progress: bool):
    adapted = copy.deepcopy(generator).eval()  # eval: BatchNorm keeps its trained statistics
    if config.steps == 0:
        return adapted.requires_grad_(False)
    if not bool((hole < 0.5).any()):
        log.warning("adaptation skipped: the hole covers the whole picture, so nothing is known to learn from")
        return adapted.requires_grad_(False)
    device = next(adapted.parameters()).device
    adapted.requires_grad_(True)
    optimiser = torch.optim.Adam(adapted.parameters(), lr=config.lr, betas=(0.9, 0.999))
    masks = IrregularMaskGenerator(ratio_range=config.hole_ratio)
    rng = np.random.default_rng(config.seed)
    vgg = adaptation_vgg().to(device) if config.uses_vgg else None
    from tqdm import tqdm

    with torch.enable_grad():
        for _ in tqdm(range(config.steps), desc="adapting to the picture", unit="step", disable=not progress,
                      leave=False):
            samples = [_sample(image_unit, hole, config, masks, rng, priors) for _ in range(config.batch)]
            batch = {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}
            with _autocast(device):
                out = adapted(batch["image"], batch["edge"], batch["known"], with_projections=True)
            loss = adaptation_loss(out, batch, config, vgg)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return adapted.eval().requires_grad_(False)


__all__ = ["AdaptConfig", "adapt_generator", "adaptation_loss", "adaptation_vgg", "as_adapt_config"]
