"""Widen a trained CTSDG model (Net2WiderNet, Chen, Goodfellow & Shlens 2016) to start a wider one from it.

A model of base width W becomes one of base width k·W that computes the same function: every hidden
channel c of the wide model is a copy of channel c // k of the narrow one, and a weight that reads
copied channels is divided by k, so that the k copies sum to what the one channel gave. Copies sit
next to each other, so a concatenation of widened tensors is the widened concatenation (the decoders,
Bi-GFF and the output layer read concatenations). Raw inputs (the image, the edge + gray priors) and outputs (the RGB output, P_t, P_s, MSFA's four
branch weights, the discriminator's score) keep their channels. Which dimension is which is read off the
shapes of the two models' state dicts, so the rule needs no list of layers:

* an output dimension that grows k× is copied (BatchNorm statistics and biases with it); one that keeps
  its size is a raw output;
* an input dimension that grows k× is copied and divided by k; one that keeps its size reads raw inputs;
  the last decoder layer reads Concat(hidden, raw image), so its input is copied up to the raw tail.

RAL's scores are not invariant to copies (their query is not normalised), so RAL's input is scaled
down and its readers up to keep them (:func:`_keep_ral_scores`). Exact for every layer but one: a partial convolution rescales by (window size / valid inputs), and the
last decoder layer mixes copied and raw channels, so its rescale changes where its two masks disagree
(at the hole's border). Spectral norm is preserved as a whole (LeakyReLU is positively homogeneous, so
the σ that the first layer gains the last loses). Copies get identical gradients and would stay copies,
so ``noise`` (relative to each narrow weight's standard deviation) breaks the symmetry.

    ctsdg convert src/ctsdg/weights/ctsdg-small.safetensors wide.safetensors --widen 2 --widen-noise 0.01
    ctsdg train --config configs/bundled_w32.yaml --init-from wide.safetensors
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch


def _channel_map(old: int, new: int, factor: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index into the old dimension, scale) for each of the ``new`` channels of an input dimension."""
    if new == old:  # raw inputs
        return torch.arange(old), torch.ones(old)
    # Concat(hidden, raw): the hidden part grows k×, the raw tail keeps its size, so new = k·hidden + raw
    # and k·old − new = (k − 1)·raw
    raw, rest = divmod(factor * old - new, factor - 1)
    hidden = old - raw
    if rest or raw < 0 or hidden <= 0 or factor * hidden + raw != new:
        raise ValueError(f"{what}: cannot widen {old} input channels to {new} by {factor}")
    index = torch.cat((torch.arange(factor * hidden) // factor, torch.arange(hidden, old)))
    scale = torch.cat((torch.full((factor * hidden,), 1.0 / factor), torch.ones(raw)))
    return index, scale


def _out_index(old: int, new: int, factor: int, what: str) -> torch.Tensor:
    if new == old:
        return torch.arange(old)
    if new != factor * old:
        raise ValueError(f"{what}: cannot widen {old} output channels to {new} by {factor}")
    return torch.arange(new) // factor


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def widen_state(old: dict[str, torch.Tensor], template: dict[str, torch.Tensor], factor: int,
                noise: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of the wide model, from the narrow model's ``old`` and the wide model's ``template``
    (any state dict of the wide architecture: only its keys and shapes are used).

    Args:
        old: the trained narrow model's state dict (generator or discriminator).
        template: ``WideModel().state_dict()``.
        factor: k, the widening factor (template widths / old widths).
        noise: standard deviation of the noise added to every widened convolution weight, relative to
            the narrow weight's standard deviation (0 = the exact copy).
        seed: seed of that noise.
    """
    if set(old) != set(template):
        missing, extra = sorted(set(template) - set(old)), sorted(set(old) - set(template))
        raise ValueError(f"the two models have different layers (only in the wide one: {missing[:4]}, only "
                         f"in the narrow one: {extra[:4]}); widen the same architecture")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, wide in template.items():
        t = old[key].float()
        if t.shape == wide.shape and (t.ndim == 0 or key.endswith(("gamma", "num_batches_tracked"))):
            out[key] = old[key].clone()
            continue
        if key.endswith("weight_u"):  # spectral norm's left vector: along the output channels
            out[key] = _unit(t[_out_index(t.shape[0], wide.shape[0], factor, key)])
            continue
        if key.endswith("weight_v"):  # right vector: along (input channels × kernel), flattened
            conv = template[key[: -len("weight_v")] + "weight_orig"]
            narrow = old[key[: -len("weight_v")] + "weight_orig"]
            index, _ = _channel_map(narrow.shape[1], conv.shape[1], factor, key)
            out[key] = _unit(t.view(narrow.shape[1], -1)[index].reshape(-1))
            continue
        w = t[_out_index(t.shape[0], wide.shape[0], factor, key)]
        if t.ndim == 4:  # a convolution weight (out, in, kh, kw)
            index, scale = _channel_map(t.shape[1], wide.shape[1], factor, key)
            w = w[:, index] * scale.view(1, -1, 1, 1)
            if noise and wide.shape != t.shape:
                w = w + noise * t.std() * torch.randn(w.shape, generator=gen)
        elif wide.shape != w.shape:
            raise ValueError(f"{key}: cannot widen {tuple(t.shape)} to {tuple(wide.shape)}")
        out[key] = w.to(old[key].dtype).contiguous()
    if "cfa.msfa.weight_calc.0.weight" in out:
        _keep_ral_scores(out, factor)
    return out


def _keep_ral_scores(state: dict[str, torch.Tensor], factor: int) -> None:
    """RAL's score S = <f_i, f_j / ‖f_j‖> (cfa.py: the query is not normalised) grows √k when every
    channel has k copies, which would sharpen its softmax. Scaling fusion_layer1's output (RAL's input)
    by 1/√k keeps S; the layers that read that output, MSFA's first convolutions (through RAL, whose
    output is a weighted sum of the same features) and fusion_layer2's first half, take √k back."""
    root = math.sqrt(factor)
    for key in ("fusion_layer1.0.weight", "fusion_layer1.0.bias"):
        state[key] = state[key] / root
    for key in [k for k in state if k.startswith("cfa.msfa.") and k.endswith(".0.weight")]:
        state[key] = state[key] * root  # dilated_conv_i.0 and weight_calc.0 read RAL's output
    first_half = state["fusion_layer1.0.weight"].shape[0]  # fusion_layer2 reads Concat(fusion_layer1, CFA)
    state["fusion_layer2.0.weight"][:, :first_half] *= root


def widen_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, factor: int = 2, *, noise: float = 0.01,
                     seed: int = 0, overwrite: bool = False) -> list[Path]:
    """Write ``dst`` (a ``ctsdg-generator`` file of base width ``factor`` × the source's) and, when the
    source has a discriminator (inside a training or official ``.pt``, or beside a ``.safetensors`` as
    ``*.discriminator.safetensors``), the widened discriminator beside ``dst``, so that
    ``ctsdg train --init-from dst`` continues both. Returns the written paths.
    Never overwrites ``src``; refuses existing outputs unless ``overwrite``."""
    from .checkpoint import (
        _discriminator_of,
        _is_safetensors,
        _torch_load,
        check_outputs,
        discriminator_path_for,
        load_generator,
        resolve_checkpoint,
        save_discriminator_state,
        save_generator,
    )
    from .config import ModelConfig, to_dict
    from .discriminator import Discriminator
    from .files import atomic_path
    from .generator import Generator

    if factor < 2:
        raise ValueError(f"--widen must be 2 or more, got {factor}")
    src_path, dst = resolve_checkpoint(src), Path(dst)
    loaded = load_generator(src_path)
    config = ModelConfig(**{**to_dict(loaded.model_config), "base_width": factor * loaded.model_config.base_width})
    raw = None if _is_safetensors(src_path) else _torch_load(src_path)
    d_state = _discriminator_of(src_path, raw, loaded.model_config)
    outputs = [dst] + ([discriminator_path_for(dst)] if d_state is not None else [])
    check_outputs(outputs, [src_path, discriminator_path_for(src_path)], overwrite)
    wide = Generator(config)
    wide.load_state_dict(widen_state(loaded.generator.state_dict(), wide.state_dict(), factor, noise, seed))
    meta = {"widened_from": src_path.name, "widened_from_sha256": loaded.meta["sha256"], "widen_factor": factor,
            "widen_noise": noise, "widen_seed": seed}
    with contextlib.ExitStack() as stack:  # both files renamed into place only when both are complete
        save_generator(stack.enter_context(atomic_path(dst, suffix=".safetensors")), wide, loaded.structure_mode,
                       meta, dtype="fp32")
        if d_state is not None:
            narrow_d, wide_d = Discriminator(loaded.model_config), Discriminator(config)
            narrow_d.load_state_dict(d_state)
            d_wide = widen_state(narrow_d.state_dict(), wide_d.state_dict(), factor, noise, seed + 1)
            save_discriminator_state(stack.enter_context(atomic_path(outputs[1], suffix=".safetensors")), d_wide,
                                     config, meta)
    return outputs


__all__ = ["widen_state", "widen_checkpoint"]
