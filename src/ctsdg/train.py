"""Training: a pure :func:`train_step` (G step, then D step) and a plain loop around it (:func:`train`).

Update order per iteration (official ``trainer.py:45-88``, spec §3.2):

1. **G step.** ``I_out, P_t, P_s = G(I_gt ⊙ M, Concat(E_gt ⊙ M, Y_gt ⊙ M), M)``; D is frozen
   (``requires_grad(False)``, still in train mode so its BN statistics and spectral-norm vectors update) and
   judges ``D(I_out, Y_gt, E_gt, is_real=False)``; back-propagate L_G (losses.generator_loss); Adam step.
2. **D step** on ``I_out.detach()`` from the same forward pass: L_D (losses.discriminator_loss); Adam step.

Phases: ``optim.iterations`` steps at ``optim.lr`` then ``optim.finetune_iterations`` at ``optim.finetune_lr``
(D lr = ``discriminator_lr_ratio`` × G lr). Fine-tune batch-norm freezing (``optim.finetune_bn_freeze``):
``official`` freezes nothing — the authors' ``freeze_ec_bn`` flag never takes effect (spec §8.2) — and
``encoder`` puts the encoder BNs (``ec_*``) in eval mode with their affine parameters frozen, as the paper's
wording (after PConv) implies.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/step_XXXXXXX.pt`` (the last
``run.keep_last``, written atomically), ``best.safetensors`` (the generator with the best validation PSNR),
``log.jsonl`` (losses, speed, validation) and ``tensorboard/``. Checkpoints (writing, listing, reading,
``--resume`` and ``--init-from``) live in ``train_checkpoint.py``; their format::

    {"format": "ctsdg-train", "version": 1, "step", "config", "model_config", "structure_mode",
     "generator", "discriminator", "optim_g", "optim_d", "scaler_g", "scaler_d", "rng"}

(tensors and builtins only: ``torch.load(path, weights_only=True)`` reads it.) Data samples depend only on
``(data.seed, sample index)`` (ctsdg.data) and the sample indices only on the step, so ``--resume`` continues
exactly: the same next batch and the same losses as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .conventions import SIZE_MULTIPLE, composite, signed_to_unit
from .cpu import check_bf16
from .data import InpaintingDataset
from .discriminator import Discriminator
from .distributed import DistInfo, all_reduce_mean, convert_batchnorm, init_from_env, unwrap
from .files import check_writable_folder, write_text_atomic
from .generator import Generator
from .losses import (
    Distance,
    FeatureExtractor,
    LossWeights,
    discriminator_loss,
    generator_loss,
    load_vgg16_pools,
)
from .train_checkpoint import (
    atomic_torch_save,
    check_same_model,
    checkpoint_state,
    list_checkpoints,
    load_init_weights,
    load_training_checkpoint,
    read_best_psnr,
    resolve_resume,
    set_aside_newer_checkpoints,
    set_rng_state,
)
from .train_config import OptimConfig, TrainConfig, dump_yaml

log = logging.getLogger("ctsdg.train")

LOSS_NAMES = ("hole", "valid", "perceptual", "style", "lpips", "ssim", "adversarial", "intermediate")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops before the bad update is saved."""


# --- the pure step -------------------------------------------------------------------------------------------


class DiscriminatorPair(nn.Module):
    """D on the real and the (detached) fake image in one forward call, so that DDP sees one forward per
    backward. Returns ``(real_prediction, real_edge, fake_prediction, fake_edge)``."""

    def __init__(self, discriminator: Discriminator):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor, gray: torch.Tensor,
                edge: torch.Tensor) -> tuple[torch.Tensor, ...]:
        real_prediction, real_edge = self.discriminator(real, gray, edge, is_real=True)
        fake_prediction, fake_edge = self.discriminator(fake, gray, edge, is_real=False)
        return real_prediction, real_edge, fake_prediction, fake_edge


class Nets(NamedTuple):
    """The networks of a step. ``generator`` and ``discriminator_pair`` may be DDP- or compile-wrapped;
    ``discriminator`` is the bare module the G step calls with its parameters frozen."""

    generator: nn.Module
    discriminator: Discriminator
    discriminator_pair: nn.Module
    vgg: FeatureExtractor


class Optimizers(NamedTuple):
    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer


@dataclass
class StepOptions:
    """What a step needs besides data, networks and optimisers."""

    weights: LossWeights = field(default_factory=LossWeights)
    amp_dtype: torch.dtype | None = None  # autocast dtype for the networks (losses stay fp32)
    scaler_g: Any = None  # torch.amp.GradScaler for fp16, else None
    scaler_d: Any = None
    lpips: Distance | None = None  # the LPIPS distance when weights.lpips > 0


def build_optimizers(generator: nn.Module, discriminator: nn.Module, optim: OptimConfig) -> Optimizers:
    """Adam for G and D (lr and betas from ``optim``). On CPU and CUDA it runs fused: one kernel over
    all parameters instead of a dozen passes, the same update (0.13 → 0.03 s per step for the
    full-width G on 2 cores, docs/speed.md). A resumed optimiser takes the setting saved with it."""
    device = next(generator.parameters()).device
    fused = True if device.type in ("cpu", "cuda") else None
    betas = tuple(optim.betas)
    return Optimizers(
        torch.optim.Adam(generator.parameters(), lr=optim.lr, betas=betas, fused=fused),
        torch.optim.Adam(discriminator.parameters(), lr=optim.lr * optim.discriminator_lr_ratio, betas=betas,
                         fused=fused),
    )


class PreparedBatch(NamedTuple):
    image: torch.Tensor  # I_gt (B, 3, H, W) in [-1, 1]
    known_mask: torch.Tensor  # M (B, 1, H, W), 1 = keep
    edge: torch.Tensor  # E_gt (B, 1, H, W) {0, 1}
    gray: torch.Tensor  # Y_gt (B, 1, H, W) [0, 1]
    input_image: torch.Tensor  # I_gt ⊙ M
    input_edge: torch.Tensor  # Concat(E_gt ⊙ M, Y_gt ⊙ M)


TENSOR_KEYS = ("image", "known_mask", "edge", "gray")


def stack_samples(samples: list[dict]) -> dict:
    """Stack a list of samples into a batch: the four tensors, and ``known_edge`` when they hold it."""
    keys = TENSOR_KEYS + (("known_edge",) if "known_edge" in samples[0] else ())
    return {k: torch.stack([s[k] for s in samples]) for k in keys}


def prepare_batch(batch: dict, device: torch.device | str) -> PreparedBatch:
    """Move a data batch (ctsdg.data sample contract) to ``device`` and build the generator inputs
    exactly as the official trainer does (``trainer.py:40,48``), except that a batch holding
    ``known_edge`` (``data.input_edges: known``) feeds those edges of the known pixels in place of E_gt ⊙ M."""
    missing = [k for k in TENSOR_KEYS if k not in batch]
    if missing:
        raise ValueError(f"a training batch needs keys image, known_mask, edge, gray; missing {missing}")
    image, known, edge, gray = (batch[k].to(device, non_blocking=True).float() for k in TENSOR_KEYS)
    edge_in = batch["known_edge"].to(device, non_blocking=True).float() if "known_edge" in batch else edge
    return PreparedBatch(image, known, edge, gray, image * known, torch.cat((edge_in * known, gray * known), dim=1))


def _no_sync(module: nn.Module, skip: bool):
    """DDP's ``no_sync`` for all but the last micro-batch of a gradient-accumulation step."""
    inner = getattr(module, "_orig_mod", module)
    if skip and hasattr(inner, "no_sync"):
        return inner.no_sync()
    return contextlib.nullcontext()


def _all_finite(values: torch.Tensor) -> bool:
    """True when every value is finite on every process (one decision for all ranks, so none hangs)."""
    flag = torch.isfinite(values).all().float().reshape(1)
    return bool(all_reduce_mean(flag).item() == 1.0)


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_step(batch: dict | Sequence[dict], nets: Nets, optimizers: Optimizers,
               options: StepOptions | None = None) -> dict[str, float]:
    """One training iteration: the G step, then the D step (module docstring). Nothing is kept between calls.

    Args:
        batch: a data batch (keys image, known_mask, edge, gray; ctsdg.data) or a list of micro-batches whose
            gradients are accumulated into one update of each network.
        nets, optimizers: see :class:`Nets`, :class:`Optimizers`.
        options: loss weights, autocast dtype and fp16 grad scalers.

    Returns:
        Unweighted loss terms (``hole`` ... ``intermediate``), the weighted ``generator`` total and
        ``discriminator``, averaged over micro-batches and processes.

    Raises:
        NonFiniteLossError: a loss is NaN/inf (checked before its backward pass).
    """
    options = options or StepOptions()
    micro = [batch] if isinstance(batch, dict) else list(batch)
    k = len(micro)
    device = next(unwrap(nets.generator).parameters()).device
    amp = options.amp_dtype is not None
    prepared = [prepare_batch(b, device) for b in micro]
    totals = torch.zeros(len(LOSS_NAMES) + 2, device=device)

    # 1. G step, D frozen (its BN statistics and spectral-norm vectors still update, as in the official code)
    optimizers.generator.zero_grad(set_to_none=True)
    d_params = [p for p in nets.discriminator.parameters() if p.requires_grad]
    for p in d_params:
        p.requires_grad_(False)
    fakes = []
    try:
        for i, b in enumerate(prepared):
            with _no_sync(nets.generator, i < k - 1):
                with torch.autocast(device.type, dtype=options.amp_dtype, enabled=amp):
                    out = nets.generator(b.input_image, b.input_edge, b.known_mask)
                    fake_prediction, fake_edge = nets.discriminator(out.output, b.gray, b.edge, is_real=False)
                # BCE refuses NaN inputs with an unhelpful message, so check what goes into the losses first
                produced = torch.stack([t.detach().float().sum() for t in (
                    out.output, out.projected_image, out.projected_edge, fake_prediction, fake_edge)])
                if not _all_finite(produced):
                    raise NonFiniteLossError("non-finite generator loss: the generator or discriminator produced "
                                             "NaN/inf (bad input pixels, or a diverged model)")
                loss = generator_loss(out.output, b.image, b.known_mask, b.edge, out.projected_image,
                                      out.projected_edge, fake_prediction, fake_edge, nets.vgg, options.weights,
                                      lpips=options.lpips)
                values = torch.stack([loss.terms[n].detach() for n in LOSS_NAMES] + [loss.total.detach()])
                if not _all_finite(values):
                    terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(LOSS_NAMES, values.tolist(), strict=False))
                    raise NonFiniteLossError(f"non-finite generator loss ({terms})")
                _backward(loss.total / k, options.scaler_g)
            totals[: len(LOSS_NAMES) + 1] += values / k
            fakes.append(out.output.detach())
    finally:
        for p in d_params:
            p.requires_grad_(True)
    _optimizer_step(optimizers.generator, options.scaler_g)

    # 2. D step on the detached output of the same forward pass
    optimizers.discriminator.zero_grad(set_to_none=True)
    for i, (b, fake) in enumerate(zip(prepared, fakes, strict=True)):
        with _no_sync(nets.discriminator_pair, i < k - 1):
            with torch.autocast(device.type, dtype=options.amp_dtype, enabled=amp):
                real_pred, real_edge, fake_pred, fake_edge = nets.discriminator_pair(b.image, fake, b.gray, b.edge)
            produced = torch.stack([t.detach().float().sum() for t in (real_pred, real_edge, fake_pred, fake_edge)])
            if not _all_finite(produced):
                raise NonFiniteLossError("non-finite discriminator loss: the discriminator produced NaN/inf")
            d_loss = discriminator_loss(real_pred, fake_pred, real_edge, fake_edge, b.edge)
            if not _all_finite(d_loss.detach().reshape(1)):
                raise NonFiniteLossError(f"non-finite discriminator loss ({float(d_loss):.4g})")
            _backward(d_loss / k, options.scaler_d)
        totals[-1] += d_loss.detach() / k
    _optimizer_step(optimizers.discriminator, options.scaler_d)

    totals = all_reduce_mean(totals)
    result = dict(zip((*LOSS_NAMES, "generator", "discriminator"), totals.tolist(), strict=True))
    return result


# --- phases, learning rates, batch-norm freezing --------------------------------------------------------------


def in_finetune(config: TrainConfig, step: int) -> bool:
    """Step ``step`` (0-based, the update about to be made) belongs to the fine-tune phase."""
    return step >= config.optim.iterations


def learning_rates(config: TrainConfig, step: int) -> tuple[float, float]:
    """(G lr, D lr) for ``step``: constant per phase (official: no schedule)."""
    lr = config.optim.finetune_lr if in_finetune(config, step) else config.optim.lr
    return lr, lr * config.optim.discriminator_lr_ratio


def set_learning_rates(optimizers: Optimizers, lrs: tuple[float, float]) -> None:
    for optimizer, lr in zip(optimizers, lrs, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = lr


def encoder_batchnorms(generator: nn.Module) -> list[nn.BatchNorm2d]:
    """The BNs of both encoders (``ec_texture_*``, ``ec_structure_*``): what ``encoder`` freezing freezes."""
    return [m for name, m in unwrap(generator).named_modules()
            if name.startswith("ec_") and isinstance(m, nn.BatchNorm2d)]


def set_train_mode(generator: nn.Module, bn_freeze: str | None) -> None:
    """``generator.train()`` plus the fine-tune batch-norm policy.

    ``None`` or ``"official"``: everything trains (what the official code does in both phases, spec §8.2).
    ``"encoder"``: encoder BNs in eval mode (running statistics fixed) and their weight/bias frozen.
    Call it again after anything that calls ``.train()``/``.eval()`` on the generator.
    """
    module = unwrap(generator)
    module.train()
    for p in module.parameters():
        p.requires_grad_(True)
    if bn_freeze == "encoder":
        for bn in encoder_batchnorms(module):
            bn.eval()
            bn.weight.requires_grad_(False)
            bn.bias.requires_grad_(False)
    elif bn_freeze not in (None, "official"):
        raise ValueError(f"unknown batch-norm freeze mode {bn_freeze!r}; use 'official' or 'encoder'")


# --- data ------------------------------------------------------------------------------------------------------


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Sample indices of every micro-batch, as a pure function of (step, micro-batch, rank).

    The global sample stream is :class:`ctsdg.data.EpochSampler`'s (seeded permutation per epoch, indices
    growing across epochs so crops and masks are fresh each epoch). Step ``s`` consumes stream positions
    ``[s·A·B·W, (s+1)·A·B·W)`` (A micro-batches of B per process, W processes); rank r takes
    ``B`` consecutive positions of each micro-batch, so 2 processes × batch 2 see exactly the samples of
    1 process × batch 4, and a resumed run gets exactly the batches an uninterrupted one would.
    """

    def __init__(self, n: int, seed: int, batch_size: int, grad_accum: int = 1, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, num_steps: int | None = None):
        if n <= 0:
            raise ValueError("the training set is empty")
        self.n, self.seed, self.batch_size, self.grad_accum = n, seed, batch_size, grad_accum
        self.rank, self.world_size, self.start_step, self.num_steps = rank, world_size, start_step, num_steps
        self._perm_epoch, self._perm = -1, None

    def stream(self, position: int) -> int:
        """Sample index at global stream ``position`` (== ``EpochSampler(n, seed)``'s ``position``-th)."""
        epoch, pos = divmod(position, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.seed, epoch, 7919)).permutation(self.n)
            self._perm_epoch = epoch
        return epoch * self.n + int(self._perm[pos])

    def batch_indices(self, step: int, micro: int = 0) -> list[int]:
        per_step = self.grad_accum * self.batch_size * self.world_size
        base = step * per_step + micro * self.batch_size * self.world_size + self.rank * self.batch_size
        return [self.stream(base + j) for j in range(self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            for micro in range(self.grad_accum):
                yield self.batch_indices(step, micro)
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return self.num_steps * self.grad_accum


def _files(root: str, standard: str | None, split: str, key: str) -> Any:
    """What InpaintingDataset reads: a folder / list file, or the standard split of a public data set."""
    if not Path(root).exists():
        raise FileNotFoundError(f"{key} {root} does not exist; point it at your images with --set {key}=PATH")
    if standard is None:
        return root
    from .data import standard_split

    return standard_split(standard, root, split)


def _masks(root: str | None, match: str, ratio: Sequence[float], key: str):
    from .masks import IrregularMaskGenerator, MaskFolder

    if root is None:
        return IrregularMaskGenerator(ratio_range=(float(ratio[0]), float(ratio[1])))
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{key} {root} does not exist; point it at a mask folder (white = fill) with "
                                f"--set {key}=PATH, or set it to null for generated irregular masks")
    return MaskFolder(root, match=match)


def build_training_set(config: TrainConfig) -> InpaintingDataset:
    """The training dataset of ``config`` (ctsdg.data.InpaintingDataset): images, masks, structure priors."""
    ds = config.dataset
    files = _files(ds.train_root, ds.standard, "train", "dataset.train_root")
    return InpaintingDataset(files, config.data, _masks(ds.mask_root, "sample", ds.mask_ratio, "dataset.mask_root"),
                             root=ds.train_root if ds.standard else None)


@dataclass
class ValidationSet:
    """Fixed validation pairs (CPU tensors) with each pair's hole-ratio bucket."""

    samples: list[dict]
    buckets: list[str]


def build_validation_set(config: TrainConfig) -> ValidationSet | None:
    """Sample 0..val_count-1 of a dataset seeded with ``dataset.val_seed``: the same pairs in every run."""
    from dataclasses import replace

    from .masks import bucket_of

    ds = config.dataset
    if not ds.val_root or ds.val_count == 0:
        return None
    files = _files(ds.val_root, ds.standard, "val", "dataset.val_root")
    masks = _masks(ds.val_mask_root, "index", ds.mask_ratio, "dataset.val_mask_root")
    data_cfg = replace(config.data, seed=ds.val_seed, hflip=False, color_jitter=0.0)
    dataset = InpaintingDataset(files, data_cfg, masks, root=ds.val_root if ds.standard else None)
    samples, buckets = [], []
    for index in range(ds.val_count):
        sample = dataset[index]
        hole = int((sample["known_mask"] < 0.5).sum())
        buckets.append(bucket_of(hole, sample["known_mask"].numel(), "paper") or "other")
        samples.append(sample)
    return ValidationSet(samples, buckets)


@torch.no_grad()
def validate(generator: nn.Module, val: ValidationSet, batch_size: int, amp_dtype: torch.dtype | None = None
             ) -> dict[str, float]:
    """PSNR/SSIM of the composite on the fixed pairs (ctsdg.metrics conventions: [0, 1], uint8-quantised),
    overall and per hole-ratio bucket. Puts ``generator`` in eval mode; the caller restores train mode."""
    from .metrics import psnr, quantize, ssim

    module = unwrap(generator)
    module.eval()
    device = next(module.parameters()).device
    psnrs, ssims = [], []
    for start in range(0, len(val.samples), batch_size):
        chunk = val.samples[start:start + batch_size]
        b = prepare_batch(stack_samples(chunk), device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = module(b.input_image, b.input_edge, b.known_mask, with_projections=False).output
        comp = quantize(signed_to_unit(composite(out.float(), b.image, b.known_mask)))
        target = quantize(signed_to_unit(b.image))
        psnrs += psnr(comp, target).tolist()
        ssims += ssim(comp, target).tolist()
    result = {"val/psnr": float(np.mean(psnrs)), "val/ssim": float(np.mean(ssims))}
    for bucket in sorted(set(val.buckets)):
        idx = [i for i, b in enumerate(val.buckets) if b == bucket]
        result[f"val/psnr/{bucket}"] = float(np.mean([psnrs[i] for i in idx]))
        result[f"val/ssim/{bucket}"] = float(np.mean([ssims[i] for i in idx]))
    return result


@torch.no_grad()
def image_grid(generator: nn.Module, samples: list[dict], max_rows: int = 4) -> torch.Tensor:
    """(3, rows·H, 6·W) in [0, 1]: per sample masked input | input edge | output | composite | projected edge | GT.
    Puts ``generator`` in eval mode; the caller restores train mode."""
    module = unwrap(generator)
    module.eval()
    device = next(module.parameters()).device
    chunk = samples[:max_rows]
    b = prepare_batch(stack_samples(chunk), device)
    out = module(b.input_image, b.input_edge, b.known_mask, with_projections=True)
    gray3 = lambda t: t.float().clamp(0, 1).expand(-1, 3, -1, -1)  # noqa: E731
    columns = [
        signed_to_unit(b.input_image), gray3(b.input_edge[:, :1]), signed_to_unit(out.output.float()),
        signed_to_unit(composite(out.output.float(), b.image, b.known_mask)), gray3(out.projected_edge),
        signed_to_unit(b.image),
    ]
    rows = torch.cat(columns, dim=3)  # (N, 3, H, 6W)
    return torch.cat(list(rows), dim=1).cpu()


# --- the loop --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns: the last completed step, the run folder, per-step losses if kept."""

    step: int
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_psnr: float | None = None
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run (checkpoint saved)


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM during training: let the current step finish, then the loop saves a
    checkpoint and returns, so nothing since the last checkpoint is lost. A second signal stops at once
    (KeyboardInterrupt). Only in the main thread, and a signal the process ignores (SIGINT in a
    background job) stays ignored."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker (Ctrl-C reaches the whole group): the
            return                     # main process decides, and shuts the workers down when it returns
        if self.received is not None:
            self.restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning("%s received: finishing this step, then saving a checkpoint (send it again to stop at once)",
                    self.received)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def _no_vgg(image: torch.Tensor) -> list[torch.Tensor]:
    raise RuntimeError("VGG16 features requested with loss.perceptual = loss.style = 0")


def _device(config: TrainConfig, dist_info: DistInfo) -> torch.device:
    name = config.scale.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist_info.enabled:
        name = f"cuda:{dist_info.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"scale.device={config.scale.device} but CUDA is not available; use --set scale.device=cpu")
    return torch.device(name)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    amp = config.scale.amp
    if amp == "none":
        return None
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("scale.amp=fp16 needs a CUDA device; use scale.amp=bf16 on CPU")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use scale.amp=fp16")
    if amp == "bf16" and device.type == "cpu":
        check_bf16("scale.amp=bf16", instead="fp32 (--set scale.amp=none, the default)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


class _Logger:
    """log.jsonl (always) and TensorBoard (when installed and enabled), on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        path = run_dir / "log.jsonl"
        if start_step and path.is_file():  # a resumed run: drop what was logged after its checkpoint
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        self.jsonl = open(path, "a")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides events after the resumed step that an earlier run wrote
                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
            except ImportError:
                log.warning("TensorBoard is not installed (pip install 'ctsdg[train]'); losses still go to "
                            "%s/log.jsonl", run_dir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key if "/" in key else f"loss/{key}", value, step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid.clamp(0, 1), step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


def _earlier_records(run_dir: Path) -> list[str]:
    """What an earlier run left in ``run_dir`` besides checkpoints: log records, best.safetensors, TensorBoard
    events. config.yaml and an empty checkpoints/ are no records (a start that failed before its first step
    writes them)."""
    found = []
    log_path = run_dir / "log.jsonl"
    if log_path.is_file() and log_path.stat().st_size:
        found.append("log.jsonl")
    if (run_dir / "best.safetensors").exists():
        found.append("best.safetensors")
    tensorboard = run_dir / "tensorboard"
    if tensorboard.is_dir() and any(tensorboard.iterdir()):
        found.append("tensorboard/")
    return found


def _build_nets(generator: nn.Module, discriminator: Discriminator, vgg, config: TrainConfig,
                dist_info: DistInfo, device: torch.device) -> Nets:
    """Wrap for DDP / torch.compile. Called again when requires_grad changes (DDP registers trainable
    parameters at construction)."""
    g_fwd: nn.Module = generator
    d_pair: nn.Module = DiscriminatorPair(discriminator)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # no buffer broadcast per forward (official: broadcast_buffers=False): BN statistics are global
        # (GlobalBatchNorm2d) or stay per process; spectral-norm vectors evolve identically everywhere
        g_fwd = DDP(generator, device_ids=ids, forward_sync_buffers=False)
        d_pair = DDP(d_pair, device_ids=ids, forward_sync_buffers=False)
    if config.scale.compile:
        g_fwd = torch.compile(g_fwd)
        d_pair = torch.compile(d_pair)
    return Nets(g_fwd, discriminator, d_pair, vgg)


def train(config: TrainConfig, *, resume: str | os.PathLike | bool | None = None, init_from: str | None = None,
          vgg: FeatureExtractor | None = None, stop_after: int | None = None, checkpoint_at_stop: bool = True,
          keep_history: bool = False, progress: bool = True) -> TrainResult:
    """Run (or continue) training as ``config`` says. Launch with ``torchrun`` for DDP (module docstring).

    Args:
        config: the resolved training config.
        resume: continue a run exactly: ``True`` (newest checkpoint of ``run.out_dir``), a run folder or a
            checkpoint file. The checkpoint's model must equal ``config.model``.
        init_from: start at step 0 from weights (ours or the authors'); overrides ``run.init_from``.
        vgg: the VGG16 feature extractor; None loads the real ImageNet weights (``loss.vgg_weights`` or the
            offline package) and raises a FileNotFoundError saying how to install them. Tests pass a small one.
        stop_after: stop after this many steps of this call (``ctsdg train --max-steps``).
        checkpoint_at_stop: write a checkpoint when ``stop_after`` ends the call (False simulates a kill).
        keep_history: return every step's losses (tests; memory grows with the run).
        progress: show a tqdm bar on rank 0.
    """
    dist_info = init_from_env("cuda" if config.scale.device.startswith("cuda") or (
        config.scale.device == "auto" and torch.cuda.is_available()) else "cpu")
    device = _device(config, dist_info)
    if config.scale.threads and device.type == "cpu":
        torch.set_num_threads(config.scale.threads)
    amp_dtype = _amp_dtype(config, device)
    if config.data.size % SIZE_MULTIPLE:  # before the run folder is made, not at the first step
        raise ValueError(f"data.size={config.data.size}: the generator needs sides that are multiples of "
                         f"{SIZE_MULTIPLE} (seven stride-2 stages); use 128, 256 (the paper's) or 512")
    bottleneck = config.optim.batch_size * (config.data.size // 128) ** 2  # values per channel at the 7th level
    if bottleneck < 2 and not (dist_info.enabled and config.scale.sync_bn):
        raise ValueError(f"optim.batch_size={config.optim.batch_size} at data.size={config.data.size} leaves one "
                         "value per channel for the batch norm of the 1x1 bottleneck; use optim.batch_size >= 2 "
                         "or data.size >= 256")
    run_dir = Path(config.run.out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run.out_dir (--out-dir) {run_dir} is a file; give a folder for the run")
    resume_path = resolve_resume(resume, config)
    if resume_path is None and list_checkpoints(run_dir):
        latest = list_checkpoints(run_dir)[-1]
        raise FileExistsError(f"run folder {run_dir} already has checkpoints (latest: step {latest[0]}); pass "
                              "--resume to continue it or set run.out_dir to a new folder")
    if dist_info.is_main:  # rank 0 writes the run folder (the other ranks could see its new TensorBoard file)
        if resume_path is None and (records := _earlier_records(run_dir)):
            raise FileExistsError(f"run folder {run_dir} holds {', '.join(records)} of an earlier run but no "
                                  "checkpoint to resume from, and a fresh start would mix with them; set run.out_dir "
                                  f"(--out-dir) to a new folder, or move the old one away first (mv {run_dir} "
                                  f"{run_dir}.old)")
        for folder in (run_dir, run_dir / "checkpoints"):  # now, not at the first checkpoint (minutes later)
            check_writable_folder(folder, "--out-dir", create=True)

    # models: same seed on every rank, so every process starts from identical weights
    torch.manual_seed(config.run.seed)
    generator = Generator(config.model)
    discriminator = Discriminator(config.model)
    if dist_info.enabled and config.scale.sync_bn:
        convert_batchnorm(generator)
        convert_batchnorm(discriminator)
    generator.to(device)
    discriminator.to(device)
    if vgg is None and (config.loss.perceptual or config.loss.style):
        vgg = load_vgg16_pools(config.loss.vgg_weights)
    elif vgg is None:  # both VGG terms are off: the loss never calls it (losses.generator_loss)
        vgg = _no_vgg
    if isinstance(vgg, nn.Module):
        vgg = vgg.to(device)
    optimizers = build_optimizers(generator, discriminator, config.optim)
    scalers = (None, None)
    if amp_dtype == torch.float16:
        scalers = (torch.amp.GradScaler(device.type), torch.amp.GradScaler(device.type))
    options = StepOptions(config.loss.weights, amp_dtype, *scalers)
    if config.loss.lpips:
        from .metrics import LPIPS

        options.lpips = LPIPS(config.loss.lpips_net).to(device).requires_grad_(False).distance

    step = 0
    if resume_path is not None:
        ckpt = load_training_checkpoint(resume_path)
        check_same_model(ckpt["model_config"], config, resume_path)
        generator.load_state_dict(ckpt["generator"])
        discriminator.load_state_dict(ckpt["discriminator"])
        optimizers.generator.load_state_dict(ckpt["optim_g"])
        optimizers.discriminator.load_state_dict(ckpt["optim_d"])
        for scaler, key in ((options.scaler_g, "scaler_g"), (options.scaler_d, "scaler_d")):
            if scaler is not None and ckpt.get(key):
                scaler.load_state_dict(ckpt[key])
        set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        if ckpt["rng"]["data"]["seed"] != config.data.seed:
            log.warning("resuming with data.seed %s but the run used %s: the batches will differ",
                        config.data.seed, ckpt["rng"]["data"]["seed"])
        log.info("resumed from %s at step %d", resume_path, step)
    elif init_from or config.run.init_from:
        load_init_weights(init_from or config.run.init_from, config, generator, discriminator, optimizers)

    if dist_info.is_main:
        if resume_path is not None:  # an older checkpoint than the newest: the newer ones go aside, not lost
            set_aside_newer_checkpoints(run_dir, step)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(config))

    dataset = build_training_set(config)
    total = config.optim.total_iterations
    remaining = max(0, total - step)
    if stop_after is not None:
        remaining = min(remaining, stop_after)
    sampler = StepBatchSampler(len(dataset), config.data.seed, config.optim.batch_size, config.scale.grad_accum,
                               dist_info.rank, dist_info.world_size, start_step=step, num_steps=remaining)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.dataset.num_workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=config.dataset.num_workers > 0)
    val = build_validation_set(config) if dist_info.is_main and config.run.val_every else None
    logger = _Logger(run_dir, dist_info.is_main, config.run.tensorboard, start_step=step)
    result = TrainResult(step=step, run_dir=run_dir)
    best_path = run_dir / "best.safetensors"
    best_psnr = read_best_psnr(run_dir) if dist_info.is_main else None

    phase_freeze = "unset"
    nets = None
    bar = None
    if progress and dist_info.is_main:
        from tqdm.auto import tqdm

        # the steps of this call (to the end of training or --max-steps), so that the ETA is this call's
        bar = tqdm(total=step + remaining, initial=step, dynamic_ncols=True, desc="ctsdg train")
    window: dict[str, float] = {}
    window_steps = 0
    window_start = time.perf_counter()

    def log_window() -> None:
        """One log record: the means over the steps since the last one (none: nothing to write)."""
        nonlocal window, window_steps, window_start
        if not window_steps:
            return
        elapsed = time.perf_counter() - window_start
        record = {k: v / window_steps for k, v in window.items()}
        record.update({"speed/it_per_s": window_steps / max(elapsed, 1e-9),
                       "lr/generator": optimizers.generator.param_groups[0]["lr"],
                       "lr/discriminator": optimizers.discriminator.param_groups[0]["lr"]})
        logger.scalars(step, record)
        window, window_steps, window_start = {}, 0, time.perf_counter()

    last_ckpt_time = time.monotonic()

    def save(step_done: int) -> None:
        nonlocal last_ckpt_time
        if not dist_info.is_main:
            return
        path = run_dir / "checkpoints" / f"step_{step_done:07d}.pt"
        atomic_torch_save(checkpoint_state(step_done, config, generator, discriminator, optimizers, options,
                                           sampler.batch_size * sampler.world_size * sampler.grad_accum * step_done),
                          path)
        for _, old in list_checkpoints(run_dir)[: -config.run.keep_last]:
            old.unlink(missing_ok=True)
        last_ckpt_time = time.monotonic()

    start_step = step
    stop = _StopOnSignal()
    try:
        stop.install()
        iterator = iter(loader)
        for _ in range(remaining):
            freeze = config.optim.finetune_bn_freeze if in_finetune(config, step) else None
            if freeze != phase_freeze or nets is None:
                set_train_mode(generator, freeze)
                discriminator.train()
                nets = _build_nets(generator, discriminator, vgg, config, dist_info, device)
                phase_freeze = freeze
            set_learning_rates(optimizers, learning_rates(config, step))
            micro = [next(iterator) for _ in range(config.scale.grad_accum)]
            try:
                losses = train_step(micro, nets, optimizers, options)
            except NonFiniteLossError as exc:
                raise NonFiniteLossError(
                    f"step {step + 1}: {exc}. The run is stopped so that no NaN model is saved; the last good "
                    f"checkpoint is in {run_dir / 'checkpoints'}. Resume from it with a lower optim.lr or "
                    "with scale.amp=none") from None
            step += 1
            result.step = step
            if keep_history:
                result.history.append(losses)
            for key, value in losses.items():
                window[key] = window.get(key, 0.0) + value
            window_steps += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(G=f"{losses['generator']:.3f}", D=f"{losses['discriminator']:.3f}",
                                hole=f"{losses['hole']:.3f}", refresh=False)
            if step % config.run.log_every == 0 or step == total:
                log_window()
            if val is not None and config.run.image_every and (step % config.run.image_every == 0 or step == total):
                logger.image(step, "validation/input|edge|output|composite|projected_edge|gt",
                             image_grid(generator, val.samples))
                set_train_mode(generator, freeze)
            if val is not None and (step % config.run.val_every == 0 or step == total):
                metrics = validate(generator, val, config.optim.batch_size, amp_dtype)
                set_train_mode(generator, freeze)
                logger.scalars(step, metrics)
                if bar is not None:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                          if k in ("val/psnr", "val/ssim")))
                if best_psnr is None or metrics["val/psnr"] > best_psnr:
                    best_psnr = metrics["val/psnr"]
                    from .checkpoint import save_generator

                    save_generator(best_path, generator, config.data.structure_mode,
                                   meta={"step": step, **{k: round(v, 4) for k, v in metrics.items()}})
            minutes = config.run.checkpoint_minutes
            due_time = minutes > 0 and time.monotonic() - last_ckpt_time >= 60.0 * minutes
            signalled = stop.received is not None
            if dist_info.enabled:  # every rank takes part, so all agree: clocks differ, and a signal may
                # reach the ranks a step apart (a rank that stopped alone would leave the others hanging)
                flags = all_reduce_mean(torch.tensor([float(due_time), float(signalled)], device=device))
                due_time, signalled = bool(flags[0].item() > 0), bool(flags[1].item() > 0)
            stopping = stop_after is not None and step == start_step + remaining and checkpoint_at_stop
            if step % config.run.checkpoint_every == 0 or step == total or due_time or stopping or signalled:
                log_window()  # the steps since the last record, which a resume from here would lose otherwise
                save(step)
            if signalled:
                result.interrupted = stop.received or "signal on another rank"
                log.warning("stopped by %s at step %d; checkpoint saved in %s (continue with --resume)",
                            result.interrupted, step, run_dir / "checkpoints")
                break
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
        logger.close()
    result.best_psnr = best_psnr
    return result


__all__ = [
    "train_step",
    "train",
    "Nets",
    "Optimizers",
    "StepOptions",
    "TrainResult",
    "NonFiniteLossError",
    "DiscriminatorPair",
    "StepBatchSampler",
    "prepare_batch",
    "set_train_mode",
    "encoder_batchnorms",
    "learning_rates",
    "validate",
    "image_grid",
]
