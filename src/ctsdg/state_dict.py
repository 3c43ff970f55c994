"""Checked state-dict loading: every mismatch is named, and known foreign key layouts are mapped.

Foreign layouts handled:
    * ``module.`` prefixes from DataParallel/DistributedDataParallel wrappers;
    * the spectral-norm names of ``torch.nn.utils.parametrizations.spectral_norm``
      (``parametrizations.weight.original`` / ``.0._u`` / ``.0._v``) mapped to the old
      ``weight_orig`` / ``weight_u`` / ``weight_v`` names used by the authors' checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

_PARAMETRIZATION_NAMES = {
    "parametrizations.weight.original": "weight_orig",
    "parametrizations.weight.0._u": "weight_u",
    "parametrizations.weight.0._v": "weight_v",
}


class StateDictMismatch(ValueError):
    """A state dict does not fit the module; the message lists the offending keys."""


def normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` prefixes and map new-style spectral-norm names to the official ones."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        for new, old in _PARAMETRIZATION_NAMES.items():
            if key.endswith(new):
                key = key[: -len(new)] + old
        out[key] = value
    return out


def describe_mismatch(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> str | None:
    """Return a message naming missing, unexpected and wrongly shaped keys, or None if all fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shaped):
        return None

    def listing(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
        return f"\n  {title} ({len(items)}): {shown}"

    msg = f"the {what} state dict does not match this {what}'s architecture:"
    if missing:
        msg += listing("missing keys", missing)
    if unexpected:
        msg += listing("unexpected keys", unexpected)
    if shaped:
        msg += listing("wrong shapes", shaped)
    msg += (
        "\n  Is the checkpoint from another architecture (base width, ablation switches)? "
        "Build the model from the config stored with the checkpoint (ctsdg.checkpoint.load_generator)."
    )
    return msg


def load_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                 assign: bool = False, what: str = "model"):
    """``load_state_dict`` with key normalisation and a readable StateDictMismatch on strict failure."""
    state_dict = normalise_keys(state_dict)
    if strict:
        msg = describe_mismatch(module, state_dict, what)
        if msg:
            raise StateDictMismatch(msg)
    return nn.Module.load_state_dict(module, state_dict, strict=strict, assign=assign)
