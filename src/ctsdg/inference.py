"""Inpainting for people: :class:`Inpainter` takes a photo and a mask of any size and returns the photo.

    >>> from ctsdg import Inpainter
    >>> inpainter = Inpainter.from_pretrained("model.safetensors")   # or an official .pt, or .onnx
    >>> result = inpainter("photo.jpg", "mask.png")                  # PIL in/paths in -> PIL out
    >>> array = inpainter(image_uint8_hw3, mask_uint8_hw)            # numpy in -> numpy out

Mask convention: **white (255) = fill**, black = keep (``conventions.py``).

The network needs sides divisible by 128 and was trained at 256². Three strategies bring any image there:

``original``  pad (reflect; the mask is reflected too, so hidden pixels never leak in through the
              padding) to the next multiple of 128, run at full resolution, crop back. Cost grows with
              the square of the pixel count in the attention (CFA), so it is refused above
              ``ORIGINAL_MAX_PIXELS``.
``resize``    resize to a working size (short side ``working_size``, sides multiples of 128), run,
              upscale the composite, paste back only the hole pixels.
``crop``      one box per connected hole region, grown by a margin (the box side is
              ``(1 + 2·margin)`` × the region's, at least ``working_size``); overlapping boxes are
              merged; each box is resized to the working size, run and pasted back (hole pixels only).
              What object-removal users expect on 12-megapixel photos: small holes are filled at
              (near) native resolution.

The default (``strategy=None`` or ``"auto"``) is ``original`` when the padded image has at most
``AUTO_ORIGINAL_PIXELS[device type]`` pixels (256 x 384 on CPU, 1024 x 1024 on CUDA: the attention's
cost is quadratic, bench/inference.py), else ``crop`` when the merged boxes cover under half the image,
else ``resize``.

The fill is composited with Poisson blending by default (``blend="poisson"``, ``ctsdg/blend.py``): it
keeps the network's gradients and takes its level from the known pixels around the hole, so a fill a
little lighter or darker than its surround leaves no seam. ``blend="none"`` pastes the raw output as
the paper does. Blending runs at the size the network ran at (the working size for ``crop``/``resize``).

Nothing under the hole reaches the fill (``edges="known"``, the default): Canny reads known pixels only,
and a resized box's known pixels next to the hole are averages of known pixels only (``_resize_known``).
Otherwise the object being removed leaves its outline in the edge map and the network draws it back.
``edges="full"`` computes Canny on the whole picture, as the paper's evaluation does with the ground truth.

With ``adapt=N`` each forward is preceded by N steps of training a copy of the generator on the
picture the network is about to see, on holes cut into its known pixels (``ctsdg/adapt.py``): slower
(seconds to minutes), and a better fill on scenes unlike the training photos (docs/model_card.md).

In every strategy the known pixels of the output are the input's, bit for bit (the fill is pasted
into the hole pixels only). EXIF orientation is applied on reading (and the tag dropped on writing);
alpha, ICC profile, EXIF and XMP are carried to the output. 16-bit input is handled as numpy uint16, as
16-bit grayscale PIL/PNG (``I;16``) and as 16-bit RGB TIFF (read with tifffile); 16-bit RGB PNG files are
refused (Pillow would silently drop them to 8 bits). CMYK files come back as CMYK (ctsdg/images.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .adapt import AdaptConfig, adapt_generator, adaptation_vgg, as_adapt_config
from .blend import check_blend, poisson_blend
from .config import ModelConfig, to_dict
from .conventions import SIZE_MULTIPLE, TRAIN_SIZE, hole_mask_from_uint8, hole_to_known
from .cpu import apply_defaults, check_bf16
from .data import check_edges, check_sigma
from .files import write_text_atomic
from .images import (
    check_image_output,
    check_image_storable,
    dilate_hole,
    hole_from_any,
    picture_from_array,
    picture_from_pil,
    picture_to_array,
    picture_to_pil,
    read_picture,
    save_image_atomic,
    tensor_hint,
)

log = logging.getLogger("ctsdg.inference")

STRATEGIES = ("original", "resize", "crop")
# A hole beyond this fraction of the picture gets a note: more often a mask of what to keep than one of
# what to remove (the paper's largest bucket is 40-60 %)
MOSTLY_HOLE = 0.6
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnxruntime")
# auto picks "original" up to this padded size, by device type (others: the CPU value)
AUTO_ORIGINAL_PIXELS = {"cpu": 256 * 384, "cuda": 1024 * 1024}
ORIGINAL_MAX_PIXELS = 2048 * 2048  # above this "original" is refused (CFA cost ~ pixels²)
# the exported ONNX graph holds the whole (pixels/16)² attention matrix: 2.25 GiB at this size
ONNX_ORIGINAL_MAX_PIXELS = 512 * 768


# --------------------------------------------------------------------------------------------------
# Geometry: working sizes, padding, boxes
# --------------------------------------------------------------------------------------------------


def round_to_multiple(x: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def working_shape(height: int, width: int, working_size: int = TRAIN_SIZE) -> tuple[int, int]:
    """Shape the network runs at for ``resize``/``crop``: short side ``working_size``, the long side in
    proportion, both rounded to multiples of 128 (never larger than needed: a region no bigger than
    the working size keeps its own size rounded to 128)."""
    short = min(height, width)
    scale = min(1.0, working_size / short) if short > 0 else 1.0
    return round_to_multiple(height * scale), round_to_multiple(width * scale)


def padded_shape(height: int, width: int) -> tuple[int, int]:
    m = SIZE_MULTIPLE
    return math.ceil(height / m) * m, math.ceil(width / m) * m


class Box(NamedTuple):
    top: int
    left: int
    bottom: int  # exclusive
    right: int  # exclusive

    def intersects(self, other: Box) -> bool:
        return self.top < other.bottom and other.top < self.bottom and self.left < other.right and other.left < self.right

    def union(self, other: Box) -> Box:
        return Box(min(self.top, other.top), min(self.left, other.left),
                   max(self.bottom, other.bottom), max(self.right, other.right))

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)


def _place(center: float, side: int, limit: int) -> tuple[int, int]:
    side = min(side, limit)
    start = int(round(center - side / 2))
    start = min(max(start, 0), limit - side)
    return start, start + side


def crop_boxes(hole: np.ndarray, working_size: int = TRAIN_SIZE, margin: float = 0.5) -> list[Box]:
    """One box per connected hole region (8-connectivity), square with side
    ``max((1 + 2·margin) · max(region h, w), working_size)``, clipped to the image; boxes that overlap
    are merged until none do, so each hole pixel belongs to exactly one box and lies fully inside it."""
    from skimage.measure import label, regionprops

    height, width = hole.shape
    boxes = []
    for region in regionprops(label(hole, connectivity=2)):
        top, left, bottom, right = region.bbox
        side = int(math.ceil(max(bottom - top, right - left) * (1 + 2 * margin)))
        side = max(side, working_size)
        t, b = _place((top + bottom) / 2, side, height)
        lft, r = _place((left + right) / 2, side, width)
        boxes.append(Box(t, lft, b, r))
    merged = True
    while merged:
        merged = False
        out: list[Box] = []
        for box in boxes:
            for i, other in enumerate(out):
                if box.intersects(other):
                    out[i] = other.union(box)
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    return sorted(boxes)


# --------------------------------------------------------------------------------------------------
# Resampling on float tensors (exact dtype handling for uint8 and uint16)
# --------------------------------------------------------------------------------------------------


def _to_unit(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8/uint16 -> (3, H, W) float32 in [0, 1]."""
    scale = 255.0 if rgb.dtype == np.uint8 else 65535.0
    return torch.from_numpy(np.ascontiguousarray(rgb).astype(np.float32)).permute(2, 0, 1).div_(scale)


def _from_unit(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) ``dtype`` rounded."""
    scale = 255.0 if dtype == np.uint8 else 65535.0
    return x.float().clamp(0, 1).mul(scale).round().permute(1, 2, 0).cpu().numpy().astype(dtype)


def _interpolate(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float -> (C, h, w): antialiased bilinear when shrinking, bicubic when enlarging (unclamped)."""
    shrinking = shape[0] * shape[1] < x.shape[-2] * x.shape[-1]
    mode = "bilinear" if shrinking else "bicubic"
    return F.interpolate(x[None], size=shape, mode=mode, align_corners=False, antialias=shrinking)[0]


def _resize(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float in [0, 1] -> (C, h, w) in [0, 1] by :func:`_interpolate`."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    return _interpolate(x, shape).clamp(0, 1)


def _resize_known(image: torch.Tensor, hole: torch.Tensor, small_hole: torch.Tensor,
                  shape: tuple[int, int]) -> torch.Tensor:
    """Resize (3, H, W) ``image`` so that no pixel outside ``small_hole`` carries anything of what lies
    under ``hole``: a known pixel next to the hole is the kernel's average over known pixels only
    (normalised convolution). Otherwise the object being removed bleeds into the ring the fill is
    blended against and pasted next to: a faint halo of it around the fill. Hole pixels keep the plain
    resize: only the structure priors read them, as at full size (the network sees them masked)."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    known = hole_to_known(hole)
    both = _interpolate(torch.cat((image * known, known)), shape)
    clean = (both[:3] / both[3:].clamp_min(1e-3)).clamp_(0, 1)
    return torch.where(small_hole.bool(), _resize(image, shape), clean)


def _resize_hole(hole: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(1, H, W) {0,1} -> (1, h, w) {0,1}: a small pixel is a hole if any pixel it covers is one."""
    if tuple(hole.shape[-2:]) == tuple(shape):
        return hole
    area = F.interpolate(hole[None].float(), size=shape, mode="area")[0]  # adaptive average pooling
    return (area > 0).float()


# --------------------------------------------------------------------------------------------------
# The Inpainter
# --------------------------------------------------------------------------------------------------


class InpaintResult(NamedTuple):
    """What :meth:`Inpainter.inpaint` returns."""

    image: Any  # same kind as the input: numpy array, or PIL image (for PIL and path input; a uint16
    # array for a 16-bit RGB TIFF path, as PIL has no 16-bit colour mode)
    strategy: str  # the strategy that ran ("none" for an empty mask)
    intermediates: dict[str, np.ndarray]  # name -> uint8 image at working resolution (if asked)
    messages: list[str]  # notes for the user (empty mask, full mask, ...)
    info: dict[str, Any] | None = None  # the input file's metadata (images.METADATA_KEYS), which saving an
    # array result (a 16-bit TIFF) needs; a PIL result carries it in its own .info


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message lists two dozen internal device types
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available here; use --device cpu "
                         "(device='cpu')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} was asked for but this machine has {torch.cuda.device_count()} "
                         "CUDA device(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but this PyTorch has no Apple GPU (MPS) support here; "
                         "use --device cpu (device='cpu')")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


class Inpainter:
    """A generator plus everything needed to use it on real images.

    Build it with :meth:`from_pretrained`; call it with an image and a mask.

    Args:
        generator: a :class:`~ctsdg.generator.Generator` (torch backend) or an
            :class:`~ctsdg.export.OnnxGenerator` (onnxruntime backend).
        model_config: the generator's architecture.
        structure_mode: ``"standard"`` or ``"official"`` (how edges/gray are computed, see checkpoint.py).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (CUDA if available).
        precision: ``"fp32"``, ``"bf16"`` (autocast; CPU or GPU) or ``"fp16"`` (CUDA only).
        working_size: short side the ``resize``/``crop`` strategies run at (default: 256, the training size).
        crop_margin: context around each hole region for ``crop``, as a fraction of its size per side.
        auto_original_pixels: largest padded pixel count for which ``auto`` runs ``original``
            (default: ``AUTO_ORIGINAL_PIXELS`` for the device type).
        sigma: Canny sigma for the structure prior (2.0 as in the paper).
        blend: ``"poisson"`` (default: the fill's gradients, the surround's level; no seams) or
            ``"none"`` (paste the raw output, as the paper's evaluation does).
        edges: ``"known"`` (default: Canny reads known pixels only, so the object being removed leaves no
            outline for the network to draw back) or ``"full"`` (the whole picture, hole included: the
            paper's evaluation protocol, where the hole holds the ground truth).
        adapt: steps of test-time adaptation before each forward (``ctsdg/adapt.py``): a copy of the
            generator is fine-tuned on the picture's own known pixels, then fills the hole. 0 (default) =
            none; an int = that many steps with :class:`~ctsdg.adapt.AdaptConfig`'s other defaults; or an
            ``AdaptConfig``. About 0.9 s a step for the bundled model at 256² on 2 CPU cores.
        progress: show a progress bar while adapting.
        meta: checkpoint metadata (path, sha256, ...), reported by :meth:`describe`.
    """

    def __init__(self, generator, model_config: ModelConfig, structure_mode: str = "standard", *,
                 device: str | torch.device | None = "cpu", precision: str = "fp32",
                 working_size: int = TRAIN_SIZE, crop_margin: float = 0.5, sigma: float = 2.0,
                 auto_original_pixels: int | None = None, blend: str = "poisson", edges: str = "known",
                 adapt: int | AdaptConfig = 0, progress: bool = False, meta: dict[str, Any] | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        check_edges(edges)
        check_blend(blend)
        if working_size < SIZE_MULTIPLE or working_size % SIZE_MULTIPLE:
            raise ValueError(f"working_size must be a positive multiple of {SIZE_MULTIPLE}, got {working_size}")
        if not 0 <= crop_margin < float("inf"):  # also NaN; a negative margin would crop into the hole
            raise ValueError(f"crop_margin (--crop-margin) must be a fraction >= 0 of each hole's size, got {crop_margin}")
        check_sigma(sigma)
        self.device = _resolve_device(device)
        if self.device.type == "cpu":
            apply_defaults()  # glibc keeps freed activations for the next call (ctsdg/cpu.py)
        self.backend = "torch" if isinstance(generator, torch.nn.Module) else "onnxruntime"
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
        if precision == "bf16" and self.device.type == "cpu":
            check_bf16("precision bf16")
        if self.backend == "onnxruntime" and precision != "fp32":
            raise ValueError("an ONNX model (a .onnx file, or backend onnxruntime) runs its exported fp32 graph on "
                             "onnxruntime; use precision fp32, or the PyTorch checkpoint it came from for bf16")
        self.adapt = as_adapt_config(adapt)
        if self.adapt.steps and self.backend == "onnxruntime":
            raise ValueError("adaptation trains the generator, which the onnxruntime backend cannot; "
                             "use the torch backend (a .safetensors or .pt checkpoint) or adapt 0")
        if self.adapt.uses_vgg:
            adaptation_vgg()  # missing VGG16 weights: an error now, with the fix, not at the first picture
        self.progress = progress
        self.generator = generator
        if self.backend == "torch":
            self.generator = generator.eval().to(self.device)
        self.model_config = model_config
        self.structure_mode = structure_mode
        self.precision = precision
        self.working_size = working_size
        self.crop_margin = crop_margin
        if auto_original_pixels is None:
            auto_original_pixels = AUTO_ORIGINAL_PIXELS.get(self.device.type, AUTO_ORIGINAL_PIXELS["cpu"])
        self.auto_original_pixels = int(auto_original_pixels)
        self.sigma = sigma
        self.blend = blend
        self.edges = edges
        self.meta = dict(meta or {})

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike | None = None, *, device: str | None = "cpu",
                        precision: str = "fp32", backend: str = "torch", **kwargs) -> Inpainter:
        """Load any checkpoint (ours, a training checkpoint, an official ``.pt``) or an exported ``.onnx``.

        Args:
            path_or_name: a file; ``None`` or ``"small"`` = the model bundled with the package.
            device, precision: see the class.
            backend: ``"torch"`` or ``"onnxruntime"``. A ``.onnx`` file always uses onnxruntime; with a
                PyTorch checkpoint and ``backend="onnxruntime"`` the ``.onnx`` beside it (same name) is
                used, as written by ``ctsdg export``.
            **kwargs: ``working_size``, ``crop_margin``, ``sigma``, ``blend``, ``edges``, ``adapt``,
                ``progress``.
        """
        from .checkpoint import BUNDLED_PATH, load_generator, resolve_checkpoint

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        path = resolve_checkpoint(path_or_name)
        if path.suffix.lower() != ".onnx" and backend == "onnxruntime":
            onnx_path = path.with_suffix(".onnx")
            if not onnx_path.is_file() and path == BUNDLED_PATH:  # not into the installed package's folder
                raise FileNotFoundError(
                    "the bundled model has no ONNX export yet; export it once and pass the file: ctsdg export "
                    "small --format onnx --output ctsdg-small.onnx, then --checkpoint ctsdg-small.onnx "
                    "(Inpainter.from_pretrained('ctsdg-small.onnx'))"
                )
            if not onnx_path.is_file():
                raise FileNotFoundError(
                    f"no ONNX model next to {path}; export it first: ctsdg export {path} --format onnx "
                    f"--output {onnx_path}"
                )
            path = onnx_path
        if path.suffix.lower() == ".onnx":
            from .export import OnnxGenerator

            onnx_gen = OnnxGenerator(path, device=_resolve_device(device))
            return cls(onnx_gen, onnx_gen.model_config, onnx_gen.structure_mode, device=device,
                       precision=precision, meta=onnx_gen.meta, **kwargs)
        loaded = load_generator(path, device="cpu")
        return cls(loaded.generator, loaded.model_config, loaded.structure_mode, device=device,
                   precision=precision, meta=loaded.meta, **kwargs)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for ``GET /api/v1/model`` and ``ctsdg inpaint --describe``)."""
        if self.backend == "torch":
            params = sum(p.numel() for p in self.generator.parameters())
        else:
            params = self.generator.parameter_count
        return {
            "architecture": self.model_config.architecture,
            "model_config": to_dict(self.model_config),
            "is_paper_architecture": self.model_config.is_official,
            "parameters": int(params),
            "checkpoint": self.meta.get("path"),
            "checkpoint_sha256": self.meta.get("sha256"),
            "checkpoint_format": self.meta.get("source_format"),
            "structure_mode": self.structure_mode,
            "mask_convention": "white (255) = fill, black (0) = keep",
            "size_multiple": SIZE_MULTIPLE,
            "train_size": TRAIN_SIZE,
            "working_size": self.working_size,
            "strategies": list(STRATEGIES),
            "default_strategy": f"auto: original up to {self.auto_original_pixels} padded pixels, else crop when "
                                "the hole boxes cover under half the image, else resize",
            "backend": self.backend,
            "device": str(self.device),
            "precision": self.precision,
            "blend": self.blend,
            "edges": self.edges,
            "adapt_steps": self.adapt.steps,
            "adapt_perceptual_weight": self.adapt.perceptual_weight if self.adapt.steps else 0.0,
        }

    # --- public calls ----------------------------------------------------------------------------

    def __call__(self, image, mask, *, extra_edges: np.ndarray | None = None, strategy: str | None = None,
                 dilate: int = 0, resize_mask: bool = False, invert_mask: bool = False, blend: str | None = None):
        """Inpaint ``image`` where ``mask`` is white; returns the same kind as ``image``.

        Args:
            image: numpy uint8/uint16 (H, W, 3), (H, W, 4) (alpha kept) or (H, W); a PIL image; or a path
                (returns a PIL image carrying ICC/EXIF/XMP in ``.info``).
            mask: numpy (H, W) uint8 or bool, PIL image or path; white (255) / True = fill.
            extra_edges: optional uint8 (H, W), 255 = a user-drawn structure line (read as masks are: bool,
                0/1, RGB, RGBA over black); inside the hole it is added to the Canny edge map and marked
                valid for the structure stream.
            strategy: ``"original"``, ``"resize"``, ``"crop"``, or None/``"auto"`` (by size).
            dilate: grow the hole by this many pixels first.
            resize_mask: resize a mask of another size (nearest neighbour) instead of refusing it.
            invert_mask: fill where the mask is black instead (a mask drawn over what to keep).
            blend: ``"poisson"`` or ``"none"`` for this call; None = the inpainter's (``blend`` above).
        """
        return self.inpaint(image, mask, extra_edges=extra_edges, strategy=strategy, dilate=dilate,
                            resize_mask=resize_mask, invert_mask=invert_mask, blend=blend).image

    def inpaint(self, image, mask, *, extra_edges: np.ndarray | None = None, strategy: str | None = None,
                dilate: int = 0, resize_mask: bool = False, invert_mask: bool = False,
                save_intermediate: bool = False, blend: str | None = None) -> InpaintResult:
        """Like :meth:`__call__`, returning an :class:`InpaintResult` (strategy, notes, intermediates)."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            pic = read_picture(image)  # a 16-bit RGB TIFF comes back as a uint16 array (PIL has no such mode)
            kind = "array" if pic.mode == "array" else "pil"
        elif isinstance(image, Image.Image):
            pic, kind = picture_from_pil(image), "pil"
        elif isinstance(image, np.ndarray):
            pic, kind = picture_from_array(image), "array"
        else:
            raise TypeError(f"image must be a path, PIL image or numpy array, got {type(image).__name__}"
                            f"{tensor_hint(image)}")
        input_notes: list[str] = []  # about the input: more frames than one; a mask on a turned photo
        if pic.frames > 1:
            input_notes.append(f"the file holds {pic.frames} frames or pages; only the first is filled and returned")
        hole = hole_from_any(mask, pic.size, resize_mask=resize_mask, orientation=pic.orientation, notes=input_notes)
        for msg in input_notes:
            log.warning(msg)
        if invert_mask:
            hole = ~hole
        if isinstance(dilate, bool) or not isinstance(dilate, (int, np.integer)) or dilate < 0:
            raise ValueError(f"dilate (pixels to grow the hole by) must be a whole number >= 0, got {dilate!r}")
        hole = dilate_hole(hole, int(dilate))
        strokes = None
        if extra_edges is not None:
            strokes = self._strokes(extra_edges, pic.size) & hole
        rgb, used, intermediates, messages = self.inpaint_rgb(pic.rgb, hole, strokes=strokes, strategy=strategy,
                                                              save_intermediate=save_intermediate, blend=blend)
        messages[:0] = input_notes
        if not invert_mask and MOSTLY_HOLE < hole.mean() < 1:
            msg = (f"the mask covers {100 * hole.mean():.0f} % of the image (white = fill); if it marks what to "
                   "keep, invert it (ctsdg inpaint --invert-mask, or inpainter(image, mask, invert_mask=True))")
            log.warning(msg)
            messages.append(msg)
        out = picture_to_array(pic, rgb) if kind == "array" else picture_to_pil(pic, rgb)
        return InpaintResult(out, used, intermediates, messages, pic.info)

    def _strokes(self, extra_edges, size: tuple[int, int]) -> np.ndarray:
        if not self.model_config.structure_priors or not self.model_config.dual_stream:
            raise ValueError("extra_edges needs a model with a structure stream fed by edges (structure_priors, dual_stream)")
        arr = np.asarray(extra_edges)
        if arr.dtype.kind == "f":
            raise TypeError(f"extra_edges must be uint8 (255 = line) or bool, got {arr.dtype}; for floats in [0, 1] "
                            "pass (edges > 0.5).astype(np.uint8) * 255")
        if arr.ndim < 2 or arr.shape[:2] != tuple(size):
            raise ValueError(f"extra_edges is {'x'.join(map(str, arr.shape[1::-1]))} but the image is {size[1]}x{size[0]}")
        try:  # then read as a mask is (0/1 labels, other integer types, RGBA as it looks over black, > 127), white = line
            return hole_mask_from_uint8(arr)[0].numpy() > 0.5
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"extra_edges: {exc}") from None

    # --- the strategies on plain arrays ------------------------------------------------------------

    def choose_strategy(self, hole: np.ndarray) -> str:
        """The ``auto`` rule (see the module docstring)."""
        h, w = hole.shape
        hp, wp = padded_shape(h, w)
        if hp * wp <= min(self.auto_original_pixels, self.original_max_pixels):
            return "original"
        boxes = crop_boxes(hole, self.working_size, self.crop_margin)
        if sum(b.area for b in boxes) < 0.5 * h * w:
            return "crop"
        return "resize"

    def inpaint_rgb(self, rgb: np.ndarray, hole: np.ndarray, *, strokes: np.ndarray | None = None,
                    strategy: str | None = None, save_intermediate: bool = False, blend: str | None = None
                    ) -> tuple[np.ndarray, str, dict[str, np.ndarray], list[str]]:
        """Core: ``rgb`` (H, W, 3) uint8/uint16, ``hole`` bool (H, W) -> (rgb out, strategy, intermediates, notes).

        Known pixels of the result are ``rgb``'s exactly: only ``hole`` pixels are written. ``blend`` None
        uses the inpainter's.
        """
        blend = check_blend(self.blend if blend is None else blend)
        if strategy in (None, "auto"):
            strategy = None
        elif strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES} or 'auto', got {strategy!r}")
        messages: list[str] = []
        if not hole.any():
            msg = "the mask is empty (no white pixel): nothing to fill, returning the input unchanged"
            log.warning(msg)
            return rgb.copy(), "none", {}, [msg]
        if hole.all():
            msg = "the mask covers the whole image: nothing is known, so the result is invented from nothing"
            log.warning(msg)
            messages.append(msg)
        strategy = strategy or self.choose_strategy(hole)
        intermediates: dict[str, np.ndarray] = {}
        out = rgb.copy()
        if strategy == "original":
            fill = self._original(rgb, hole, strokes, intermediates if save_intermediate else None, blend)
            out[hole] = fill[hole]
        elif strategy == "resize":
            box = Box(0, 0, *hole.shape)
            self._run_box(rgb, hole, strokes, box, out, intermediates if save_intermediate else None, "", blend)
        else:
            boxes = crop_boxes(hole, self.working_size, self.crop_margin)
            for i, box in enumerate(boxes):
                tag = f"_box{i}" if len(boxes) > 1 else ""
                self._run_box(rgb, hole, strokes, box, out, intermediates if save_intermediate else None, tag,
                              blend)
        return out, strategy, intermediates, messages

    @property
    def original_max_pixels(self) -> int:
        """Largest padded size ``original`` accepts with this backend."""
        return ORIGINAL_MAX_PIXELS if self.backend == "torch" else ONNX_ORIGINAL_MAX_PIXELS

    def _original(self, rgb, hole, strokes, intermediates, blend: str) -> np.ndarray:
        h, w = hole.shape
        hp, wp = padded_shape(h, w)
        limit = self.original_max_pixels
        if hp * wp > limit:
            why = ("its attention cost grows with the square of the pixel count" if self.backend == "torch"
                   else "the ONNX graph holds the whole attention matrix at once")
            raise ValueError(
                f"strategy 'original' on {w}x{h} would run the network at {wp}x{hp}, beyond {limit} pixels "
                f"({why}); use --strategy crop or --strategy resize (strategy='crop' or 'resize')"
            )
        pad = ((0, hp - h), (0, wp - w))
        mode = "reflect" if min(h, w) > 1 else "edge"
        rgb_p = np.pad(rgb, pad + ((0, 0),), mode=mode)
        hole_p = np.pad(hole, pad, mode=mode)  # reflected holes stay holes: nothing hidden leaks in
        strokes_p = None if strokes is None else np.pad(strokes, pad, mode=mode)
        image = _to_unit(rgb_p)
        hole_t = torch.from_numpy(hole_p.astype(np.float32))[None]
        stroke_t = None if strokes_p is None else torch.from_numpy(strokes_p.astype(np.float32))[None]
        fill = self.run_network(image, hole_t, stroke_t, intermediates, "")
        comp = self.composite(image[:, :h, :w], fill[:, :h, :w], hole_t[:, :h, :w], blend)
        return _from_unit(comp, rgb.dtype)

    def _run_box(self, rgb, hole, strokes, box: Box, out: np.ndarray, intermediates, tag: str, blend: str) -> None:
        """Run one box at the working size and paste its hole pixels into ``out``."""
        t, lft, b, r = box
        crop_hole = hole[t:b, lft:r]
        if not crop_hole.any():
            return
        shape = working_shape(b - t, r - lft, self.working_size)
        image = _to_unit(rgb[t:b, lft:r])
        hole_t = torch.from_numpy(crop_hole.astype(np.float32))[None]
        small_hole = _resize_hole(hole_t, shape)
        small_image = _resize_known(image, hole_t, small_hole, shape)
        small_strokes = None
        if strokes is not None:
            small_strokes = _resize_hole(torch.from_numpy(strokes[t:b, lft:r].astype(np.float32))[None], shape)
            small_strokes = small_strokes * small_hole
        fill = self.run_network(small_image, small_hole, small_strokes, intermediates, tag)
        comp = self.composite(small_image, fill, small_hole, blend)
        full = _from_unit(_resize(comp, (b - t, r - lft)), rgb.dtype)
        region = out[t:b, lft:r]
        region[crop_hole] = full[crop_hole]

    def composite(self, image: torch.Tensor, fill: torch.Tensor, hole: torch.Tensor,
                  blend: str | None = None) -> torch.Tensor:
        """(3, H, W) known picture and network fill in [0, 1], (1, H, W) hole {0, 1} -> the composite.

        Known pixels are ``image``'s; hole pixels are the fill, Poisson-blended unless ``blend`` (default:
        the inpainter's) is ``"none"``.
        """
        if (self.blend if blend is None else blend) == "poisson":
            return poisson_blend(image, fill, hole).clamp_(0, 1)
        return image * (1 - hole) + fill * hole

    # --- the network ------------------------------------------------------------------------------

    def structure_priors(self, image_unit: torch.Tensor, known: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) in [0, 1] -> (edge (1, H, W) {0,1}, gray (1, H, W) [0,1]) via ``ctsdg.data``.

        With ``known`` (1, H, W), Canny reads known pixels only: the object under the hole would
        otherwise leave its outline in the edge map around the hole, and the network would draw it back.
        """
        from .data import compute_structure

        edge, gray = compute_structure(image_unit * 2 - 1, sigma=self.sigma,
                                       official=self.structure_mode == "official", known=known)
        edge = torch.as_tensor(edge, dtype=torch.float32).reshape(1, *image_unit.shape[-2:])
        gray = torch.as_tensor(gray, dtype=torch.float32).reshape(1, *image_unit.shape[-2:])
        return edge, gray

    def _priors_for_adaptation(self, image_unit: torch.Tensor, known: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The structure priors as this inpainter computes them, for a crop and its known pixels."""
        return self.structure_priors(image_unit, known if self.edges == "known" else None)

    def run_network(self, image_unit: torch.Tensor, hole: torch.Tensor, strokes: torch.Tensor | None,
                    intermediates: dict[str, np.ndarray] | None = None, tag: str = "") -> torch.Tensor:
        """One forward pass at a size the network takes (after adapting a copy of the generator to this
        picture when ``adapt`` is on).

        Args:
            image_unit: (3, H, W) in [0, 1], H and W multiples of 128.
            hole: (1, H, W) {0, 1}, 1 = fill.
            strokes: (1, H, W) {0, 1} user edge strokes inside the hole, or None.
            intermediates: if a dict, edge/gray/projected edge/raw output are added (uint8, suffix ``tag``).

        Returns:
            the raw network output (3, H, W) in [0, 1] on CPU (composite it yourself).
        """
        known = hole_to_known(hole)
        edge, gray = self.structure_priors(image_unit, known if self.edges == "known" else None)
        image = image_unit * 2 - 1
        edge_in = edge * known
        structure_known = None
        if strokes is not None and strokes.any():
            edge_in = torch.maximum(edge_in, strokes)
            structure_known = torch.cat((torch.maximum(known, strokes), known), 0)  # (edge, gray) channels
        input_image = (image * known)[None]
        input_edge = torch.cat((edge_in, gray * known), 0)[None]
        known_b = known[None]
        skm = None if structure_known is None else structure_known[None]
        projected_edge = None
        if self.backend == "torch":
            dev = self.device
            generator = self.generator
            if self.adapt.steps:
                generator = adapt_generator(self.generator, image_unit, hole, self._priors_for_adaptation,
                                            self.adapt, progress=self.progress)
            autocast = (torch.autocast(dev.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
                        if self.precision != "fp32" else contextlib.nullcontext())
            with torch.inference_mode(), autocast:
                result = generator(input_image.to(dev), input_edge.to(dev), known_b.to(dev),
                                        with_projections=intermediates is not None,
                                        structure_known_mask=None if skm is None else skm.to(dev))
            output = result.output.float().cpu()[0]
            if result.projected_edge is not None:
                projected_edge = result.projected_edge.float().cpu()[0]
        else:
            if skm is None:
                skm = known_b.expand(-1, 2, -1, -1)
            output = self.generator(input_image, input_edge, known_b, skm)[0]
        output_unit = (output + 1) / 2
        if intermediates is not None:
            def u8(x: torch.Tensor) -> np.ndarray:
                return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
            intermediates[f"edge{tag}"] = u8(edge_in)
            intermediates[f"gray{tag}"] = u8(gray)
            intermediates[f"masked_input{tag}"] = u8(image_unit * known + 0.5 * (1 - known))
            intermediates[f"hole_mask{tag}"] = u8(hole)
            intermediates[f"raw_output{tag}"] = u8(output_unit)
            if projected_edge is not None:
                intermediates[f"projected_edge{tag}"] = u8(projected_edge)
        return output_unit.clamp(0, 1)

    # --- files -----------------------------------------------------------------------------------

    def inpaint_file(self, image_path: str | os.PathLike, mask_path: str | os.PathLike, output_path: str | os.PathLike,
                     *, overwrite: bool = False, strategy: str | None = None, dilate: int = 0,
                     resize_mask: bool = False, invert_mask: bool = False,
                     save_intermediate: bool = False, extra_edges: np.ndarray | None = None,
                     blend: str | None = None) -> InpaintResult:
        """Read, inpaint, write atomically. Intermediates go to ``<output stem>_intermediate/``; those of an
        earlier run there are refused unless ``overwrite``, which replaces them."""
        for name, value in (("image_path", image_path), ("mask_path", mask_path), ("output_path", output_path)):
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"inpaint_file reads and writes files: {name} must be a path, got "
                                f"{type(value).__name__}; for pictures in memory use inpainter(image, mask)")
        # refuse early, before minutes of compute, what save_image_atomic would refuse at the end
        output_path = check_image_output(output_path, overwrite=overwrite, inputs=(image_path, mask_path))
        check_image_storable(image_path, output_path)
        folder = output_path.with_name(output_path.stem + "_intermediate")
        earlier = earlier_intermediates(folder) if save_intermediate else []
        if earlier and not overwrite:
            raise FileExistsError(f"{folder} holds the intermediates of an earlier run ({earlier[0].name}, ...); pass "
                                  "--overwrite to replace them, or choose another --output")
        result = self.inpaint(image_path, mask_path, strategy=strategy, dilate=dilate, resize_mask=resize_mask,
                              invert_mask=invert_mask, save_intermediate=save_intermediate, extra_edges=extra_edges,
                              blend=blend)
        save_image_atomic(result.image, output_path, overwrite=overwrite, inputs=(image_path, mask_path),
                          info=result.info)
        if save_intermediate and result.intermediates:
            from PIL import Image

            folder.mkdir(exist_ok=True)
            for name, arr in result.intermediates.items():
                save_image_atomic(Image.fromarray(arr), folder / f"{name}.png", overwrite=True)
            write_text_atomic(folder / "describe.json", json.dumps({"strategy": result.strategy, **self.describe()}, indent=2))
            written = {f"{name}.png" for name in result.intermediates} | {"describe.json"}
            for path in earlier:  # an earlier run's pictures (its other boxes, say) would pass for this run's
                if path.name not in written:
                    path.unlink(missing_ok=True)
        return result


_INTERMEDIATE_FILE = re.compile(
    r"(edge|gray|masked_input|hole_mask|raw_output|projected_edge)(_box\d+)?\.png|describe\.json")


def earlier_intermediates(folder: Path) -> list[Path]:
    """The files of ``folder`` that ``--save-intermediate`` writes (by name; anything else is left alone)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and _INTERMEDIATE_FILE.fullmatch(p.name))


__all__ = ["Inpainter", "InpaintResult", "STRATEGIES", "crop_boxes", "working_shape", "padded_shape",
           "dilate_hole", "hole_from_any", "save_image_atomic"]
