"""Typed configuration: dataclasses with paper defaults and a strict loader.

Config is data. It is stored inside every checkpoint, so inference never needs the YAML it came from.
The loader rejects unknown keys by name (with a suggestion), so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

ATTENTION_CHOICES = ("cfa", "contextual", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Generator/discriminator architecture. ``ModelConfig()`` is the paper's (and official code's) model.

    The ablation switches reproduce the rows of the paper's ablation table (Paris StreetView):
    ``structure_priors=False`` ("w/o structure priors"), ``dual_stream=False`` ("single-stream"),
    ``bigff=False`` ("w/o Bi-GFF"), ``attention="none"`` ("w/o CFA"), ``attention="contextual"``
    ("w/ CA", DeepFill-style contextual attention in place of CFA). See docs/paper_map.md.
    """

    base_width: int = 64  # C: encoder widths C, 2C, 4C, 8C, 8C, 8C, 8C (paper: 64 ... 512)
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # MSFA dilation rates (paper: 1, 2, 4, 8)
    softmax_scale: float = 10.0  # RAL softmax temperature (official: 10)
    structure_priors: bool = True  # feed edge + gray to the structure stream (paper: yes)
    dual_stream: bool = True  # texture and structure streams (paper: yes)
    bigff: bool = True  # Bi-directional Gated Feature Fusion (paper: yes)
    attention: str = "cfa"  # "cfa" (paper), "contextual" (DeepFill CA), "none"

    def __post_init__(self) -> None:
        if self.base_width < 4 or self.base_width % 4:
            raise ValueError(f"model.base_width must be a multiple of 4 and >= 4, got {self.base_width}")
        if not self.dilations or any(int(d) < 1 for d in self.dilations):
            raise ValueError(f"model.dilations must be a non-empty list of positive ints, got {self.dilations}")
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"model.attention must be one of {ATTENTION_CHOICES}, got {self.attention!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Encoder output widths of the seven levels."""
        c = self.base_width
        return (c, 2 * c, 4 * c, 8 * c, 8 * c, 8 * c, 8 * c)

    @property
    def is_official(self) -> bool:
        """True when this is exactly the architecture of the authors' checkpoints."""
        return self == ModelConfig()

    @property
    def architecture(self) -> str:
        """In words, with the paper's ablations this config switches on (``ctsdg inpaint --describe``)."""
        parts = ["two partial-conv U-Net streams (texture, structure)" if self.dual_stream
                 else "one partial-conv U-Net stream (single-stream ablation)"]
        if self.dual_stream:
            parts.append("Bi-GFF" if self.bigff else "no Bi-GFF (ablation)")
        parts.append({"cfa": "CFA", "contextual": "contextual attention instead of CFA (ablation)",
                      "none": "no CFA (ablation)"}.get(self.attention, f"attention {self.attention!r}"))
        if not self.structure_priors:
            parts.append("no structure priors (ablation)")
        return "CTSDG generator (Guo, Yang & Huang, ICCV 2021): " + ", ".join(parts)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, recursively, rejecting unknown keys by name.

    Args:
        cls: a dataclass type.
        data: mapping of field name to value (nested dataclasses as nested dicts); None = defaults.
        where: dotted prefix used in error messages (e.g. ``"train."``).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise TypeError(f"config section {where.rstrip('.') or '<root>'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
        raise KeyError(f"unknown config key {where}{key}{hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"config key {where} must be a list, got {value!r}")
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(item, v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"config key {where} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config key {where} must be a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise TypeError(f"config key {where} must be an integer, got {value!r}")
        return tp(value)
    if tp is str and not isinstance(value, str):
        raise TypeError(f"config key {where} must be a string, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of builtins (tuples as lists), suitable for YAML/JSON."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set a.b=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return data


__all__ = ["ModelConfig", "from_dict", "to_dict", "apply_overrides"]
