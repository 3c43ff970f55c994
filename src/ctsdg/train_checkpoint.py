"""Checkpoints of a training run (``ctsdg train``): what a ``checkpoints/step_XXXXXXX.pt`` holds, writing it
atomically, finding the newest, reading it back for ``--resume`` (setting the newer ones aside when it resumes
an older one), and starting from other weights with ``--init-from`` (ours or the authors'). The format is
described in train.py's docstring; the loop that calls these is :func:`ctsdg.train.train`.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .config import ModelConfig, from_dict, to_dict
from .distributed import unwrap
from .files import atomic_path, write_bytes_atomic
from .train_config import TrainConfig, train_config_from_dict, train_config_to_dict

if TYPE_CHECKING:
    from .train import Optimizers, StepOptions

log = logging.getLogger("ctsdg.train")

CHECKPOINT_FORMAT = "ctsdg-train"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``: a kill at any moment
    leaves either the old file or the complete new one."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def checkpoint_state(step: int, config: TrainConfig, generator: nn.Module, discriminator: nn.Module,
                     optimizers: Optimizers, options: StepOptions, data_position: int) -> dict[str, Any]:
    """The dict written to ``step_XXXXXXX.pt`` (format: train.py's docstring); tensors and builtins only."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "config": train_config_to_dict(config),
        "model_config": to_dict(config.model),
        "structure_mode": config.data.structure_mode,
        "generator": unwrap(generator).state_dict(),
        "discriminator": unwrap(discriminator).state_dict(),
        "optim_g": optimizers.generator.state_dict(),
        "optim_d": optimizers.discriminator.state_dict(),
        "scaler_g": options.scaler_g.state_dict() if options.scaler_g is not None else None,
        "scaler_d": options.scaler_d.state_dict() if options.scaler_d is not None else None,
        "rng": {**_rng_state(), "data": {"seed": config.data.seed, "samples_seen": data_position}},
    }


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of ``run_dir/checkpoints/step_*.pt``, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read one of our training checkpoints (``weights_only=True``), with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        older = [p for _, p in list_checkpoints(path.parent.parent) if p.name < path.name] \
            if path.parent.name == "checkpoints" else []
        fix = (f"; to resume from the one before it, move it aside (mv {path} {path}.unreadable) and run again: "
               f"--resume then takes {older[-1].name}") if older else ""
        raise ValueError(f"cannot read {path} as a ctsdg training checkpoint ({str(exc).splitlines()[0]}); "
                         f"it may be truncated (a kill during an old non-atomic save) or not a checkpoint{fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a ctsdg training checkpoint (to start from other weights use --init-from)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {ckpt.get('version')}; this ctsdg reads {CHECKPOINT_VERSION}")
    return ckpt


def model_differences(saved: ModelConfig, wanted: ModelConfig) -> tuple[str, str]:
    """(``model.k: checkpoint a vs config b, ...``, the ``--set`` that makes the first one match)."""
    diff = {k: (v, to_dict(wanted)[k]) for k, v in to_dict(saved).items() if to_dict(wanted)[k] != v}
    detail = ", ".join(f"model.{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
    return detail, f"--set model.{next(iter(diff))}={next(iter(diff.values()))[0]}"


def check_same_model(saved: dict, config: TrainConfig, path: Path) -> None:
    saved_model = from_dict(ModelConfig, saved, "model.")
    if saved_model != config.model:
        detail, fix = model_differences(saved_model, config.model)
        raise ValueError(f"{path} holds another architecture ({detail}); use the config it was trained with, "
                         f"e.g. {fix}")


def load_init_weights(path: str, config: TrainConfig, generator: nn.Module, discriminator: nn.Module,
                       optimizers: Optimizers) -> None:
    """Start from existing weights (step 0): one of our checkpoints, ``small`` (the bundled model, with
    its discriminator) or the authors' ``{'generator', 'discriminator'}`` file (``module.`` prefixes and
    spectral-norm names are mapped by the load functions)."""
    from .checkpoint import (
        discriminator_path_for,
        load_discriminator_state,
        read_generator_state,
        resolve_checkpoint,
    )

    try:  # what every command does with a checkpoint argument: 'small', a file, or a clear error
        src = resolve_checkpoint(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--init-from: {exc}") from None
    g_state, g_config, mode, meta = read_generator_state(src)
    if g_config != config.model:
        detail, fix = model_differences(g_config, config.model)
        raise ValueError(f"--init-from {src} holds another architecture ({detail}); set the model section to "
                         f"match, e.g. {fix} (the authors' checkpoints are the default ModelConfig)")
    unwrap(generator).load_state_dict(g_state)
    if mode != config.data.structure_mode:
        log.warning("%s was trained with structure_mode=%r but this run uses data.structure_mode=%r; set "
                    "--set data.structure_mode=%s to keep its edge/gray inputs", src.name, mode,
                    config.data.structure_mode, mode)
    d_state = None
    if src.suffix == ".safetensors":
        d_path = discriminator_path_for(src)
        if d_path.is_file():
            d_state, _ = load_discriminator_state(d_path)
    else:
        raw = torch.load(src, map_location="cpu", weights_only=True)
        d_state = raw.get("discriminator") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
            optimizers.generator.load_state_dict(raw["optim_g"])
            optimizers.discriminator.load_state_dict(raw["optim_d"])
            log.info("loaded the optimiser states of %s (learning rates follow this config)", src.name)
    if d_state is not None:
        unwrap(discriminator).load_state_dict(d_state)
    else:
        log.warning("%s has no discriminator; D starts from scratch", src.name)
    log.info("initialised from %s (%s)", src, meta.get("source_format"))


def resolve_resume(resume: str | os.PathLike | bool | None, config: TrainConfig | None) -> Path | None:
    """``True``/"latest" -> newest checkpoint of ``config.run.out_dir``; a folder -> its newest; a file -> it."""
    if not resume:
        return None
    if resume is True or resume == "latest":
        if config is None:
            raise ValueError("--resume without a path needs --config (to know the run folder)")
        folder = Path(config.run.out_dir)
    else:
        folder = Path(resume)
        aside = folder.parent if folder.is_file() else folder
        if aside.name.startswith(ABANDONED_PREFIX) and aside.parent.name == "checkpoints":
            run = aside.parent.parent
            raise ValueError(
                f"{resume} is in {aside}, where an earlier --resume from an older checkpoint set the other line of "
                f"training aside; to go back to it, move the checkpoints of {run / 'checkpoints'} newer than "
                f"{aside.name.removeprefix(ABANDONED_PREFIX).split('_')[0]} aside, move the files of {aside} back "
                f"into {run / 'checkpoints'} (its log.jsonl over {run / 'log.jsonl'}), then --resume {run}")
        if folder.is_file():
            return folder
    found = list_checkpoints(folder)
    if not found:
        raise FileNotFoundError(f"no checkpoints in {folder / 'checkpoints'} to resume from; start without --resume")
    return found[-1][1]


def _best_metadata(run_dir: Path, key: str) -> float | None:
    """A number stored in the metadata of an existing best.safetensors (``val/psnr``, ``step``), else None."""
    path = run_dir / "best.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get(key)
        return float(value) if value is not None else None
    except Exception:  # a damaged best file must not stop a resume
        return None


def read_best_psnr(run_dir: Path) -> float | None:
    """Validation PSNR stored in an existing best.safetensors (so a resumed run keeps the best one)."""
    return _best_metadata(run_dir, "val/psnr")


ABANDONED_PREFIX = "abandoned_after_step_"  # checkpoints/abandoned_after_step_<step>[_n]/ (set_aside_newer_checkpoints)


def set_aside_newer_checkpoints(run_dir: str | os.PathLike, step: int) -> Path | None:
    """Resuming at ``step`` from a checkpoint older than the run's newest starts another line of training: move
    the newer checkpoints into ``checkpoints/abandoned_after_step_<step>/`` (``_2``, ``_3``, ... when that
    exists), with best.safetensors when it was saved after ``step`` and a copy of log.jsonl (the resumed run
    drops its records after ``step``). So the run folder holds one line of training, the next ``--resume``
    continues this one, and nothing of the other line is lost. Returns that folder, or None (nothing newer)."""
    run_dir = Path(run_dir)
    newer = [(s, p) for s, p in list_checkpoints(run_dir) if s > step]
    if not newer:
        return None
    base = run_dir / "checkpoints" / f"{ABANDONED_PREFIX}{step}"
    dest, n = base, 1
    while dest.exists():
        n += 1
        dest = base.with_name(f"{base.name}_{n}")
    dest.mkdir()
    for _, path in newer:
        os.replace(path, dest / path.name)
    moved = [f"the checkpoints of steps {', '.join(str(s) for s, _ in newer)}"]
    best_step = _best_metadata(run_dir, "step")
    if best_step is not None and best_step > step:
        os.replace(run_dir / "best.safetensors", dest / "best.safetensors")
        moved.append(f"best.safetensors (step {best_step:.0f})")
    log_path = run_dir / "log.jsonl"
    if log_path.is_file():
        write_bytes_atomic(dest / "log.jsonl", log_path.read_bytes())
        moved.append("a copy of log.jsonl")
    log.warning("resuming at step %d, before the run's newest checkpoint (step %d): moved %s to %s, so that "
                "the run folder holds one line of training and --resume continues this one", step, newer[-1][0],
                ", ".join(moved), dest)
    return dest


def config_from_checkpoint(path: str | os.PathLike) -> TrainConfig:
    """The resolved config stored in a training checkpoint."""
    return train_config_from_dict(load_training_checkpoint(path)["config"])
