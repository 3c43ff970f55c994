"""Export the generator to ONNX (and TorchScript), and run an exported ONNX model with onnxruntime.

The exported graph is the inference forward pass only (no projection heads), with dynamic batch,
height and width (each side a multiple of 128):

    inputs   input_image          (B, 3, H, W) float32 in [-1, 1], holes 0      (I_gt ⊙ M)
             input_edge           (B, 2, H, W) float32 in [0, 1]  (edge, gray) ⊙ M
             known_mask           (B, 1, H, W) float32, 1 = keep                (M)
             structure_known_mask (B, 2, H, W) float32: M for the structure stream's (edge, gray)
                                  channels, plus user-drawn strokes on the edge channel; pass M twice
                                  when there are none
    output   output               (B, 3, H, W) float32 in [-1, 1] (composite it with the known pixels)

The model's config, structure mode and source checkpoint hash are stored in the ONNX
``metadata_props``, so ``Inpainter.from_pretrained("model.onnx")`` needs nothing else.

Note: the attention (CFA) is exported without query chunking, so its memory grows with the square of
the pixel count; use the ``crop``/``resize`` strategies for large photos (they run at 256²).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, from_dict, to_dict
from .conventions import TRAIN_SIZE
from .files import atomic_path

ONNX_FORMAT = "ctsdg-generator-onnx"
INPUT_NAMES = ("input_image", "input_edge", "known_mask", "structure_known_mask")
OUTPUT_NAMES = ("output",)
EXPORT_HINT = "install the export extra: pip install 'ctsdg[export]' (onnx, onnxscript, onnxruntime)"


class InferenceGraph(nn.Module):
    """The generator's inference pass as a plain 4-in/1-out module (what gets exported)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, input_image, input_edge, known_mask, structure_known_mask):
        return self.generator(input_image, input_edge, known_mask, with_projections=False,
                              structure_known_mask=structure_known_mask).output


def example_inputs(height: int = TRAIN_SIZE, width: int = TRAIN_SIZE, batch: int = 1, seed: int = 0):
    """Random but valid inputs for tracing and parity checks: a rectangular hole in the middle."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    known = torch.ones(batch, 1, height, width)
    known[:, :, height // 4: height // 2, width // 3: 2 * width // 3] = 0
    edge = (torch.rand(batch, 1, height, width, generator=g) > 0.9).float()
    gray = torch.rand(batch, 1, height, width, generator=g)
    return image * known, torch.cat((edge, gray), 1) * known, known, known.expand(-1, 2, -1, -1).contiguous()


def region_affinity_graph(x: torch.Tensor, softmax_scale: float = 10.0, rate: int = 2) -> torch.Tensor:
    """RAL (paper Eq. 4-5, official cfa.py) in one loop-free pass, for export: the training/inference
    version in cfa.py chunks the queries in a Python loop whose trip count depends on the image size,
    which a graph with dynamic height and width cannot hold. Same maths (tests/test_export.py checks the
    exported graph against the PyTorch model within 1e-4); memory grows with the square of the pixels.
    """
    h, w = x.shape[-2:]
    small = F.interpolate(x, scale_factor=1 / rate, mode="bilinear", align_corners=True)
    patches = F.unfold(small, kernel_size=3, padding=1)  # (B, C*9, L): f_i at every ×½ position
    keys = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-4)  # f_j / max(‖f_j‖, 1e-4)
    score = torch.bmm(keys.transpose(1, 2), patches)  # (B, L_keys, L_queries): S^{i,j}
    attn = torch.softmax(score * softmax_scale, dim=1).clamp_min(1e-8)  # Eq. (4)
    values = F.unfold(x, kernel_size=2 * rate, stride=rate, padding=1)  # (B, C*16, L) 4×4 patches
    out = torch.bmm(values, attn)  # Eq. (5)
    return F.fold(out, output_size=(h, w), kernel_size=2 * rate, stride=rate, padding=1) / 4.0


def _ratio_and_mask_graph(count: torch.Tensor, window_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PConv eq. 1-2 without ``1 / (count + 1e-8)``: the ONNX optimiser drops the 1e-8 (it is below
    float32 resolution next to any count >= 1), leaving 1/0 = inf times a 0 mask = NaN in every hole.
    Window counts are whole numbers, so ``window / max(count, 1) · 1[count > 0]`` is the same value in
    float32 for every count."""
    new_mask = count.clamp(0.0, 1.0)
    return window_size / count.clamp_min(1.0) * new_mask, new_mask


@contextlib.contextmanager
def _exportable(generator: nn.Module):
    """While tracing/exporting: CFA runs :func:`region_affinity_graph`, partial convs their NaN-free ratio."""
    from . import partial_conv

    cfa = getattr(generator, "cfa", None)
    if cfa is not None:
        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return cfa.msfa(region_affinity_graph(x, cfa.softmax_scale))

        cfa.forward = forward
    old_ratio = getattr(partial_conv, "_ratio_and_mask", None)
    if old_ratio is not None:
        partial_conv._ratio_and_mask = _ratio_and_mask_graph
    try:
        yield
    finally:
        if cfa is not None:
            del cfa.forward  # back to the class's method
        if old_ratio is not None:
            partial_conv._ratio_and_mask = old_ratio


def export_onnx(generator: nn.Module, path: str | os.PathLike, *, structure_mode: str = "standard",
                meta: dict[str, Any] | None = None, opset: int = 18, example_size: tuple[int, int] = (256, 256),
                verbose: bool = False) -> Path:
    """Export ``generator`` (eval mode, CPU, fp32) to ONNX with dynamic batch/height/width.

    Args:
        generator: a :class:`~ctsdg.generator.Generator`.
        path: output ``.onnx`` file (written atomically).
        structure_mode: stored in the metadata, used by the onnxruntime backend.
        meta: extra metadata (e.g. the source checkpoint's path and sha256).
        opset: ONNX opset (18 or later: the attention uses Col2Im).
        example_size: (H, W) used to trace; any multiple of 128 works at run time.
    """
    try:
        import onnx
        from torch.export import Dim
    except ImportError as exc:
        raise RuntimeError(f"ONNX export needs the onnx package ({exc}); {EXPORT_HINT}") from None
    path = Path(path)
    generator = generator.eval().to("cpu", torch.float32)
    graph = InferenceGraph(generator)
    inputs = example_inputs(*example_size)
    dyn = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    names = ("input_image", "input_edge", "known_mask", "structure_known_mask")
    with atomic_path(path) as tmp:
        with _exportable(generator), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(graph, inputs, dynamo=True, opset_version=opset,
                                        input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes={n: dyn for n in names}, verbose=verbose,
                                        external_data=False)
        model = program.model_proto
        props = {
            "format": ONNX_FORMAT,
            "model_config": json.dumps(to_dict(generator.config)),
            "structure_mode": structure_mode,
            "parameter_count": str(sum(p.numel() for p in generator.parameters())),
        }
        for key, value in (meta or {}).items():
            props.setdefault(str(key), value if isinstance(value, str) else json.dumps(value))
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp)
    return path


def export_torchscript(generator: nn.Module, path: str | os.PathLike, example_size: tuple[int, int] = (256, 256)) -> Path:
    """Trace the inference graph to TorchScript (``torch.jit.load`` runs it without ctsdg installed).

    Same four inputs and one output as the ONNX graph. Tracing records one input size's control flow;
    the graph has none that depends on the size, and :func:`check_parity` style tests check another size.
    """
    path = Path(path)
    generator = generator.eval().to("cpu", torch.float32)
    # The traced graph is the inference path, whose in-place ``out=`` ops refuse weights that require
    # grad: saved without that flag, the file runs with autograd on as well as under no_grad.
    params = list(generator.parameters())
    requires_grad = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with atomic_path(path) as tmp:
            with _exportable(generator), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(InferenceGraph(generator), example_inputs(*example_size), check_trace=False)
                extra = {"ctsdg.json": json.dumps({"format": "ctsdg-generator-torchscript",
                                                   "model_config": to_dict(generator.config)})}
                torch.jit.save(traced, tmp, _extra_files=extra)
    finally:
        for p, flag in zip(params, requires_grad, strict=True):
            p.requires_grad_(flag)
    return path


class OnnxGenerator:
    """An exported generator run by onnxruntime, called like the torch one (tensors in, tensor out).

    Args:
        path: a ``.onnx`` file written by :func:`export_onnx`.
        device: ``cpu`` uses CPUExecutionProvider; ``cuda`` uses CUDAExecutionProvider when the
            installed onnxruntime has it (onnxruntime-gpu), else it says so.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError(f"the onnxruntime backend needs onnxruntime ({exc}); {EXPORT_HINT}") from None
        from .checkpoint import file_sha256

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist; write it with ctsdg export")
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("this onnxruntime has no CUDA provider; install onnxruntime-gpu or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path} is not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        if props.get("format") != ONNX_FORMAT:
            raise ValueError(f"{self.path} was not written by ctsdg export (format={props.get('format')!r})")
        self.model_config: ModelConfig = from_dict(ModelConfig, json.loads(props["model_config"]), "model.")
        self.structure_mode: str = props.get("structure_mode", "standard")
        self.parameter_count = int(props.get("parameter_count", 0))
        self.meta = {k: v for k, v in props.items() if k not in ("model_config",)}
        self.meta.update(path=str(self.path), sha256=file_sha256(self.path), source_format="onnx")

    def __call__(self, input_image: torch.Tensor, input_edge: torch.Tensor, known_mask: torch.Tensor,
                 structure_known_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Same contract as the exported graph; returns ``output`` (B, 3, H, W) as a CPU tensor."""
        if structure_known_mask is None:
            structure_known_mask = known_mask.expand(-1, 2, -1, -1)
        feeds = {
            name: np.ascontiguousarray(t.detach().float().cpu().numpy())
            for name, t in zip(INPUT_NAMES, (input_image, input_edge, known_mask, structure_known_mask), strict=True)
        }
        (output,) = self.session.run(list(OUTPUT_NAMES), feeds)
        return torch.from_numpy(output)


__all__ = ["export_onnx", "export_torchscript", "OnnxGenerator", "InferenceGraph", "example_inputs"]
