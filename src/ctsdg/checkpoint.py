"""Generator weights in every format, loaded without executing pickled code.

Formats that :func:`load_generator` accepts (detected from the file, not its name):

``ctsdg-generator`` (ours, safetensors)
    Tensors = the generator's state dict; metadata (all strings) ``format``, ``model_config`` (JSON of
    :class:`~ctsdg.config.ModelConfig`), ``structure_mode`` (``"standard"`` | ``"official"``), ``dtype``
    and whatever ``meta`` the writer added. Written by :func:`save_generator` in fp32, fp16 or bf16.
``ctsdg-train`` (the training loop's ``torch.save`` dict)
    ``{"format": "ctsdg-train", "generator": state_dict, "model_config": dict | JSON, "structure_mode", ...}``.
official (the authors' ``trainer.py:126-133``)
    ``{"n_iter", "generator", "discriminator"}``, possibly saved on a GPU and with ``module.`` prefixes.
    The architecture is the paper's; the structure priors must then be computed the official way
    (``structure_mode="official"``, see ``ctsdg.data.compute_structure``), which is selected and logged.
a bare generator state dict
    Treated like an official checkpoint.

Every ``torch.load`` uses ``map_location="cpu", weights_only=True``: a checkpoint cannot run code.

Structure modes: ``"standard"`` computes Canny edges and gray from the real picture; ``"official"``
reproduces the authors' uint8 wrap-around of [-1, 1] images (spec/official-ctsdg.md §3.3), which their
checkpoints were trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import __version__
from .config import ModelConfig, from_dict, to_dict
from .files import atomic_path
from .generator import Generator
from .state_dict import normalise_keys

log = logging.getLogger("ctsdg")

GENERATOR_FORMAT = "ctsdg-generator"
DISCRIMINATOR_FORMAT = "ctsdg-discriminator"
TRAIN_FORMAT = "ctsdg-train"
STRUCTURE_MODES = ("standard", "official")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BUNDLED_NAME = "small"
BUNDLED_PATH = Path(__file__).resolve().parent / "weights" / "ctsdg-small.safetensors"


class LoadedGenerator(NamedTuple):
    """What :func:`load_generator` returns.

    ``meta`` always holds ``source_format`` (``ctsdg-generator`` | ``ctsdg-train`` | ``official`` |
    ``state-dict``), ``path`` and ``sha256`` of the file, plus the metadata stored in the file.
    """

    generator: Generator  # in eval mode, on the requested device, fp32
    model_config: ModelConfig
    structure_mode: str  # "standard" | "official"
    meta: dict[str, Any]


def resolve_checkpoint(path_or_name: str | os.PathLike | None) -> Path:
    """``None`` or ``"small"`` -> the model bundled in the package; anything else -> an existing file."""
    if path_or_name is None or str(path_or_name) == BUNDLED_NAME:
        if not BUNDLED_PATH.is_file():
            raise FileNotFoundError(
                f"the bundled model {BUNDLED_PATH.name} is not installed in this copy of ctsdg; pass a "
                "checkpoint instead (--checkpoint PATH, or Inpainter.from_pretrained(PATH)): one of ours "
                "(.safetensors), a training checkpoint, or an official CTSDG .pt file"
            )
        return BUNDLED_PATH
    path = Path(path_or_name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path (or use 'small' for the bundled model)")
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder; pass the checkpoint file inside it")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_safetensors(path: Path) -> bool:
    """safetensors = 8-byte little-endian header length, then a JSON header starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= n <= path.stat().st_size - 8


def _model_config(value: Any) -> ModelConfig:
    if value is None:
        return ModelConfig()
    if isinstance(value, ModelConfig):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    return from_dict(ModelConfig, value, "model.")


def _structure_mode(value: Any) -> str:
    mode = str(value or "standard")
    if mode not in STRUCTURE_MODES:
        raise ValueError(f"unknown structure_mode {mode!r} in the checkpoint; expected one of {STRUCTURE_MODES}")
    return mode


def _looks_like_generator_state(obj: Any) -> bool:
    return isinstance(obj, dict) and any(
        isinstance(k, str) and k.replace("module.", "").startswith("ec_texture_1.") for k in obj
    )


def _inferred_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    """Architecture of an official-layout state dict: the paper's, at the width its first layer has."""
    first = state.get("ec_texture_1.conv.weight")
    width = int(first.shape[0]) if first is not None else 64
    return ModelConfig(base_width=width)


# the first bytes of files people pass by mistake, for the message (not a checkpoint: what it is instead)
_OTHER_FILES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"RIFF", "a WebP image or other RIFF file"),
                (b"BM", "a BMP image"), (b"\x1f\x8b", "a gzip archive"))


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a torch zip that holds the model's code and constants beside its tensors."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with a one-line ValueError for anything it cannot read."""
    if _is_torchscript(path):  # torch.load would warn, then suggest weights_only=False
        raise ValueError(f"{path} is a TorchScript export (ctsdg export --format torchscript), which runs in "
                         "libtorch, not a checkpoint; pass the checkpoint it was exported from, or an .onnx export")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, non-torch files: one readable line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first.startswith("Weights only load failed"):  # torch's text goes on to suggest weights_only=False
            first = "it pickles Python objects besides tensors"
        with open(path, "rb") as f:
            head = f.read(8)
        # torch.save writes a zip archive (PK), or a pickle (protocol 2+: 0x80) in the legacy format
        if not head.startswith((b"PK\x03\x04", b"\x80")):
            kind = next((name for magic, name in _OTHER_FILES if head.startswith(magic)), None)
            first = f"it is {kind}" if kind else "it is neither a PyTorch file nor safetensors"
        raise ValueError(
            f"cannot read {path} as a checkpoint ({first}); expected a .safetensors file from ctsdg, a "
            "ctsdg training checkpoint or an official CTSDG .pt file (loaded with weights_only=True, so "
            "checkpoints that pickle arbitrary objects are refused)"
        ) from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on CPU, metadata) of a safetensors file, with a one-line ValueError for a damaged one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except SafetensorError as exc:
        raise ValueError(f"cannot read {path} as safetensors ({exc}); is the file truncated? copy or "
                         "download it again") from None
    return state, header


def read_generator_state(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, str, dict[str, Any]]:
    """Read a checkpoint file -> (state dict on CPU, config, structure mode, meta). No model is built."""
    if _is_safetensors(path):
        state, header = _read_safetensors(path)
        fmt = header.get("format")
        if fmt == DISCRIMINATOR_FORMAT:
            raise ValueError(
                f"{path} holds discriminator weights; pass the generator file written beside it by ctsdg convert"
            )
        if fmt != GENERATOR_FORMAT:
            if not _looks_like_generator_state(state):
                raise ValueError(f"{path} is a safetensors file but not a CTSDG generator (format={fmt!r})")
            state = normalise_keys(state)
            return state, _inferred_config(state), "official", {**header, "source_format": "state-dict"}
        meta = {k: v for k, v in header.items() if k not in ("model_config", "structure_mode")}
        meta["source_format"] = GENERATOR_FORMAT
        return state, _model_config(header.get("model_config")), _structure_mode(header.get("structure_mode")), meta

    return _generator_state_from_torch(path, _torch_load(path))


def _read_with_raw(path: Path) -> tuple[tuple[dict[str, torch.Tensor], ModelConfig, str, dict[str, Any]], Any]:
    """(:func:`read_generator_state` of ``path``, the loaded torch object or None for safetensors), from one
    read of the file: what a caller that also needs the discriminator uses."""
    if _is_safetensors(path):
        return read_generator_state(path), None
    raw = _torch_load(path)
    return _generator_state_from_torch(path, raw), raw


def _generator_state_from_torch(path: Path, obj: Any) -> tuple[dict[str, torch.Tensor], ModelConfig, str, dict[str, Any]]:
    """:func:`read_generator_state` of a torch file already loaded (``obj``), so that a caller that also
    needs its discriminator reads the file once."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") == TRAIN_FORMAT:
        extra = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
        meta = {**extra, "source_format": TRAIN_FORMAT}
        state = normalise_keys(obj["generator"])
        return state, _model_config(obj.get("model_config")), _structure_mode(obj.get("structure_mode")), meta
    if "generator" in obj and _looks_like_generator_state(obj["generator"]):
        state = normalise_keys(obj["generator"])
        meta = {"source_format": "official"}
        if "n_iter" in obj:
            meta["n_iter"] = int(obj["n_iter"])
        return state, _inferred_config(state), "official", meta
    if _looks_like_generator_state(obj):
        state = normalise_keys(obj)
        return state, _inferred_config(state), "official", {"source_format": "state-dict"}
    keys = ", ".join(map(str, list(obj)[:8]))
    raise ValueError(
        f"{path} is a torch checkpoint but has no CTSDG generator in it (top-level keys: {keys}); expected "
        "'generator' (official or training checkpoint) or generator weights"
    )


def load_generator(path_or_name: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedGenerator:
    """Build the generator described by a checkpoint and load its weights.

    Args:
        path_or_name: a checkpoint file in any format listed in the module docstring, ``"small"`` or
            None for the model bundled with the package.
        device: where to put the generator.

    Returns:
        :class:`LoadedGenerator` with the generator in eval mode (fp32).
    """
    path = resolve_checkpoint(path_or_name)
    loaded = _generator_from_state(path, *read_generator_state(path))
    loaded.generator.to(device)
    return loaded


def _generator_from_state(path: Path, state: dict[str, torch.Tensor], config: ModelConfig, mode: str,
                          meta: dict[str, Any]) -> LoadedGenerator:
    """The eval-mode fp32 generator of what :func:`read_generator_state` read from ``path``."""
    generator = Generator(config)
    generator.load_state_dict(state)  # strict: a mismatch names every offending key
    generator.eval()
    meta = {**meta, "path": str(path), "sha256": file_sha256(path)}
    if meta["source_format"] in ("official", "state-dict"):
        log.warning(
            "%s is an official-format CTSDG checkpoint: using the paper's architecture (base width %d) and the "
            "'official' structure priors (edges and gray computed from the wrapped uint8 image, as the "
            "authors' code does)", path.name, config.base_width,
        )
    return LoadedGenerator(generator, config, mode, meta)


def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def _metadata(fmt: str, config: ModelConfig, structure_mode: str, dtype: str, meta: dict | None) -> dict[str, str]:
    out = {}
    for key, value in (meta or {}).items():
        out[str(key)] = value if isinstance(value, str) else json.dumps(value)
    out.update({
        "format": fmt,
        "model_config": json.dumps(to_dict(config)),
        "structure_mode": structure_mode,
        "dtype": dtype,
        "ctsdg_version": __version__,
    })
    return out


def _tensors(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Detached CPU copies (no shared storage, which safetensors refuses); floats cast to ``dtype``."""
    target = DTYPES[dtype]
    return {
        k: (v.detach().to("cpu", target) if v.is_floating_point() else v.detach().cpu()).clone().contiguous()
        for k, v in state.items()
    }


def save_generator(path: str | os.PathLike, generator: Generator, structure_mode: str = "standard",
                   meta: dict[str, Any] | None = None, dtype: str = "fp32") -> Path:
    """Write a generator as a ``ctsdg-generator`` safetensors file (atomically), config inside.

    Args:
        path: output file (conventionally ``*.safetensors``); its folder must exist.
        generator: the model; its ``config`` is stored as JSON.
        structure_mode: ``"standard"`` or ``"official"``: how its structure priors must be computed.
        meta: extra string-able metadata (e.g. ``{"n_iter": 350000, "source": "..."}``).
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` for the floating-point tensors (BN statistics
            included); integer buffers stay int64. Loading always gives an fp32 model.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    mode = _structure_mode(structure_mode)
    path = Path(path)
    _atomic_save_safetensors(_tensors(generator.state_dict(), dtype),
                             _metadata(GENERATOR_FORMAT, generator.config, mode, dtype, meta), path)
    return path


def save_discriminator_state(path: str | os.PathLike, state: dict[str, torch.Tensor], config: ModelConfig,
                             meta: dict[str, Any] | None = None, dtype: str = "fp32") -> Path:
    """Write a discriminator state dict (e.g. the official one, for fine-tuning) as safetensors.

    Aliased entries (the official D stores ``conv1`` and ``features.0`` views of one tensor) are
    written as separate copies; loading them back restores both names. ``dtype`` (fp32, fp16, bf16)
    is what the floats are stored in; :func:`load_discriminator_state` gives float32 back.
    """
    state = normalise_keys(state)
    path = Path(path)
    _atomic_save_safetensors(_tensors(state, dtype), _metadata(DISCRIMINATOR_FORMAT, config, "standard", dtype, meta),
                             path)
    return path


def load_discriminator_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Read a file written by :func:`save_discriminator_state` -> (float32 state dict, model config)."""
    path = resolve_checkpoint(path)
    if not _is_safetensors(path):
        raise ValueError(f"{path} is not a safetensors file written by ctsdg convert")
    state, header = _read_safetensors(path)
    if header.get("format") != DISCRIMINATOR_FORMAT:
        raise ValueError(f"{path} is not a discriminator file (format={header.get('format')!r})")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, _model_config(header.get("model_config"))


def discriminator_path_for(generator_path: str | os.PathLike) -> Path:
    """Where ``ctsdg convert`` puts the discriminator: ``OUT.safetensors`` -> ``OUT.discriminator.safetensors``."""
    p = Path(generator_path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(f"{stem}.discriminator.safetensors")


def check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, an output that is one of the inputs, or that exists without
    ``overwrite``: what ``convert``, ``average`` and ``widen`` check for every file they will write."""
    for out in outputs:
        if any(out.resolve() == p.resolve() for p in inputs):
            raise ValueError(f"output {out} is one of the input files; choose another output path")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: str = "fp32",
                       with_discriminator: bool = True, overwrite: bool = False) -> list[Path]:
    """Convert any supported checkpoint (official ``.pt`` above all) into ours.

    Writes ``dst`` (generator, config and structure mode inside) and, when the source has a
    discriminator and ``with_discriminator``, ``discriminator_path_for(dst)`` beside it, for fine-tuning;
    both store their floats in ``dtype``. A torch file's discriminator is inside it; a safetensors
    file's (ours, the bundled model's) is the file beside it.
    Returns the written paths. Never overwrites ``src``; refuses existing outputs unless ``overwrite``.
    """
    src_path = resolve_checkpoint(src)
    dst = Path(dst)
    outputs = [dst]
    read, raw = _read_with_raw(src_path)
    beside = discriminator_path_for(src_path)
    d_source = src_path.name
    if raw is None and with_discriminator and _is_safetensors(src_path) and beside.is_file():
        raw, d_source = {"discriminator": load_discriminator_state(beside)[0]}, beside.name
    if with_discriminator and raw is not None and isinstance(raw.get("discriminator"), dict):
        outputs.append(discriminator_path_for(dst))
    else:
        raw = None
    check_outputs(outputs, [src_path, beside], overwrite)
    loaded = _generator_from_state(src_path, *read)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("path", "format", "dtype", "ctsdg_version")}
    meta["converted_from"] = src_path.name
    meta["converted_from_sha256"] = meta.pop("sha256")
    # both files are written to temporary names and renamed only when both are complete: a failure
    # never leaves a new generator beside an old (or missing) discriminator
    with contextlib.ExitStack() as stack:
        g_tmp = stack.enter_context(atomic_path(dst, suffix=".safetensors"))
        save_generator(g_tmp, loaded.generator, loaded.structure_mode, meta, dtype=dtype)
        if raw is not None:
            d_tmp = stack.enter_context(atomic_path(outputs[1], suffix=".safetensors"))
            d_meta = {"converted_from": d_source, "n_iter": raw.get("n_iter", -1)}
            save_discriminator_state(d_tmp, raw["discriminator"], loaded.model_config, d_meta, dtype=dtype)
    return outputs


def _mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of float entries (in float64, then float32); integer buffers (BatchNorm's
    ``num_batches_tracked``) are taken from the last state."""
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = sum(s[key].double() for s in states)
            out[key] = (total / len(states)).float()
        else:
            out[key] = last
    return out


def _discriminator_of(path: Path, raw: Any, config: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The discriminator that goes with a source: from the torch object read (``raw``), or for a safetensors
    generator the discriminator file ``ctsdg convert`` writes beside it; None when there is none."""
    if raw is not None:
        return normalise_keys(raw["discriminator"]) if isinstance(raw.get("discriminator"), dict) else None
    beside = discriminator_path_for(path)
    if not beside.is_file():
        return None
    state, beside_config = load_discriminator_state(beside)
    if beside_config != config:
        raise ValueError(f"{beside} is the discriminator of another model ({beside_config}) than {path.name} "
                         f"({config}); move it away, or average with --no-discriminator")
    return state


def average_checkpoints(sources: list[str | os.PathLike], dst: str | os.PathLike, *, dtype: str = "fp32",
                        with_discriminator: bool = True, overwrite: bool = False) -> list[Path]:
    """Write the uniform average of several checkpoints of one model (checkpoint averaging, as SWA does).

    Every floating-point weight and BatchNorm statistic is the mean over ``sources``; integer buffers come
    from the last source, and so do its metadata, with ``averaged_from`` (the file names) added.
    When every source has a discriminator (a ``.pt`` holding one, or a ``.safetensors`` with
    ``discriminator_path_for(source)`` beside it, as ``ctsdg convert`` writes them) and ``with_discriminator``,
    the discriminators are averaged the same way into ``discriminator_path_for(dst)``; otherwise only the
    generator is written and a note names the source without one. Both files are written atomically, never
    over a source; existing outputs are refused unless ``overwrite``. Returns the written paths.

    Raises:
        ValueError: fewer than two sources, or sources of different architectures or structure modes.
    """
    if len(sources) < 2:
        raise ValueError("averaging needs two or more checkpoints (to convert one, give only one source)")
    paths = [resolve_checkpoint(s) for s in sources]
    dst = Path(dst)
    # each file is read once, and only its generator and discriminator are kept (not its optimiser states)
    want_discriminators = with_discriminator
    reads, discriminators = [], []
    for path in paths:
        read, raw = _read_with_raw(path)
        reads.append(read)
        if want_discriminators:
            discriminator = _discriminator_of(path, raw, read[1])
            if discriminator is None:
                log.warning("no discriminator written: %s has none (a training .pt holds one; a .safetensors "
                            "generator needs %s beside it)", path, discriminator_path_for(path).name)
                want_discriminators, discriminators = False, []
            else:
                discriminators.append(discriminator)
        del raw
    _, config, mode, _ = reads[-1]
    for path, (_, other_config, other_mode, _) in zip(paths, reads, strict=True):
        if other_config != config or other_mode != mode:
            raise ValueError(
                f"{path} is a different model ({other_config}, structure mode {other_mode}) from {paths[-1]} "
                f"({config}, structure mode {mode}); average checkpoints of one training run only")
    outputs = [dst] + ([discriminator_path_for(dst)] if discriminators else [])
    check_outputs(outputs, paths, overwrite)
    generator = Generator(config)
    generator.load_state_dict(_mean_state([state for state, _, _, _ in reads]))
    meta = {k: v for k, v in reads[-1][3].items()
            if k not in ("path", "format", "dtype", "ctsdg_version", "sha256")}
    meta["averaged_from"] = [p.name for p in paths]
    with contextlib.ExitStack() as stack:
        g_tmp = stack.enter_context(atomic_path(dst, suffix=".safetensors"))
        save_generator(g_tmp, generator, mode, meta, dtype=dtype)
        if discriminators:
            d_tmp = stack.enter_context(atomic_path(outputs[1], suffix=".safetensors"))
            save_discriminator_state(d_tmp, _mean_state(discriminators), config,
                                     {"averaged_from": [p.name for p in paths]}, dtype=dtype)
    return outputs


__all__ = [
    "LoadedGenerator", "load_generator", "save_generator", "read_generator_state", "resolve_checkpoint",
    "save_discriminator_state", "load_discriminator_state", "discriminator_path_for", "convert_checkpoint",
    "average_checkpoints", "file_sha256", "STRUCTURE_MODES", "BUNDLED_PATH",
]
