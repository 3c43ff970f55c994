"""Pictures of what the two streams compute (paper Fig. 1): texture and structure decoder features, the
projected image P_t(F_t) and the projected edge map P_s(F_s), for one image and mask.

The features are read with forward hooks on the generator's modules (nothing in generator.py changes):

=====================  =========================================  ==================================
picture                hooked module                              shape (256² input, base width C)
=====================  =========================================  ==================================
``texture_*``          ``dc_texture_1`` (last texture decoder)    F_t (1, C, 256, 256)
``structure_*``        ``dc_structure_1`` (last structure dec.)   F_s (1, C, 256, 256)
``projected_image``    ``texture_feature_projection`` (P_t)       (1, 3, 256, 256) in [-1, 1]
``projected_edge``     ``structure_feature_projection`` (P_s)     (1, 1, 256, 256) in [0, 1]
=====================  =========================================  ==================================

A C-channel feature map becomes a picture two ways: ``*_mean`` is the channel mean (viridis colour map) and
``*_pca`` maps the first three principal components of the C-dimensional pixel vectors to R, G, B. Both are
stretched between the 1st and 99th percentile.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

HOOKS = {
    "texture": "dc_texture_1",
    "structure": "dc_structure_1",
    "projected_image": "texture_feature_projection",
    "projected_edge": "structure_feature_projection",
}


def _stretch(x: np.ndarray) -> np.ndarray:
    """Map to [0, 1] between the 1st and 99th percentile (per column for 2-D input)."""
    lo, hi = np.percentile(x, 1, axis=0), np.percentile(x, 99, axis=0)
    return np.clip((x - lo) / np.maximum(hi - lo, 1e-12), 0, 1)


def channel_mean_picture(feat: torch.Tensor) -> np.ndarray:
    """(C, H, W) features -> uint8 (H, W, 3): channel mean through the viridis colour map."""
    from matplotlib import colormaps

    m = feat.float().mean(0).cpu().numpy()
    rgb = colormaps["viridis"](_stretch(m.reshape(-1)).reshape(m.shape))[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def pca_picture(feat: torch.Tensor) -> np.ndarray:
    """(C, H, W) features -> uint8 (H, W, 3): the first three principal components as R, G, B."""
    c, h, w = feat.shape
    x = feat.float().reshape(c, -1).T.cpu().numpy().astype(np.float64)  # (H·W, C)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x[:: max(1, x.shape[0] // 16384)], full_matrices=False)
    comps = vt[: min(3, c)]
    proj = x @ comps.T
    # fix each component's sign so that the picture does not flip between runs
    proj *= np.sign(proj.sum(0, keepdims=True) + 1e-12)
    if proj.shape[1] < 3:
        proj = np.concatenate([proj, np.zeros((proj.shape[0], 3 - proj.shape[1]))], 1)
    return (_stretch(proj).reshape(h, w, 3) * 255).round().astype(np.uint8)


def collect_feature_maps(inpainter, image: np.ndarray, hole_mask: np.ndarray, size: int = 256) -> dict[str, np.ndarray]:
    """Run ``inpainter``'s generator on one image and return the Figure-1 pictures as uint8 arrays.

    Args:
        inpainter: a :class:`ctsdg.inference.Inpainter` with the torch backend.
        image: uint8 (H, W, 3) RGB; resized (bilinear) to ``size`` x ``size``.
        hole_mask: uint8 (H, W), 255 = fill; resized with nearest neighbour.
        size: a multiple of 128 (the network's constraint); 256 = the training size.

    Returns:
        name -> uint8 picture (size, size, 3) or (size, size): ``input`` (hole grey), ``edge``, ``gray``,
        ``texture_mean``, ``texture_pca``, ``structure_mean``, ``structure_pca``, ``projected_image``,
        ``projected_edge``, ``output`` (raw) and ``composite``.
    """
    from .conventions import check_size_multiple, uint8_to_unit
    from .data import resize_bilinear, resize_hole_mask

    if inpainter.backend != "torch":
        raise ValueError("feature maps need the PyTorch generator; load the checkpoint with backend='torch'")
    check_size_multiple(size, size, "feature-map size")
    if image.shape[:2] != (size, size):
        image = resize_bilinear(image, size, size)
    hole = torch.from_numpy((hole_mask > 127).astype(np.float32))[None]
    hole = resize_hole_mask(hole, size, size)
    gen = inpainter.generator
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module_name in HOOKS.items():
        module = getattr(gen, module_name, None)
        if module is None:
            raise ValueError(f"this generator has no {module_name} (an ablation without it?); cannot draw {name}")

        def hook(_module, _inputs, output, name=name):
            out = output[0] if isinstance(output, tuple) else output
            captured[name] = out.detach().float().cpu()[0]

        handles.append(module.register_forward_hook(hook))
    intermediates: dict[str, np.ndarray] = {}
    try:
        image_unit = uint8_to_unit(np.ascontiguousarray(image))
        output = inpainter.run_network(image_unit, hole, None, intermediates=intermediates)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in HOOKS if n not in captured]
    if missing:
        raise RuntimeError(f"the generator did not run {missing}; projections need with_projections=True")
    known = 1.0 - hole
    composite = image_unit * known + output * hole
    u8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()  # noqa: E731
    return {
        "input": intermediates["masked_input"],
        "edge": intermediates["edge"],
        "gray": intermediates["gray"],
        "texture_mean": channel_mean_picture(captured["texture"]),
        "texture_pca": pca_picture(captured["texture"]),
        "structure_mean": channel_mean_picture(captured["structure"]),
        "structure_pca": pca_picture(captured["structure"]),
        "projected_image": u8((captured["projected_image"] + 1) / 2),
        "projected_edge": u8(captured["projected_edge"]),
        "output": u8(output),
        "composite": u8(composite),
    }


def save_feature_maps(pictures: dict[str, np.ndarray], out_dir: str | os.PathLike, overview: bool = True,
                      overwrite: bool = False, inputs: tuple[str | os.PathLike, ...] = ()) -> list[Path]:
    """Write each picture as ``<out_dir>/<name>.png`` (atomically) and, with ``overview``, ``figure1.png``.
    Files of those names already in ``out_dir`` are refused, before any is written, unless ``overwrite``;
    one that is one of the ``inputs`` (the photo, the mask) is refused even with ``overwrite``."""
    import io

    from PIL import Image

    from .files import write_bytes_atomic

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the pictures")
    names = [*pictures, *(["figure1"] if overview else [])]
    given = {Path(p).resolve() for p in inputs}
    for name in names:
        if (out_dir / f"{name}.png").resolve() in given:
            raise ValueError(f"{out_dir / f'{name}.png'} is one of the input files and would be replaced by the "
                             f"'{name}' picture; choose another --out")
    existing = [out_dir / f"{n}.png" for n in names if (out_dir / f"{n}.png").exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists ({len(existing)} of the {len(names)} pictures do); pass "
                              "--overwrite to replace them, or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pic in pictures.items():
        buf = io.BytesIO()
        Image.fromarray(pic).save(buf, format="PNG")
        write_bytes_atomic(out_dir / f"{name}.png", buf.getvalue())
        written.append(out_dir / f"{name}.png")
    if overview:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        order = ["input", "edge", "texture_pca", "structure_pca", "texture_mean", "structure_mean",
                 "projected_image", "projected_edge", "composite"]
        order = [n for n in order if n in pictures]
        fig, axes = plt.subplots(1, len(order), figsize=(2.2 * len(order), 2.5), squeeze=False)
        for ax, name in zip(axes[0], order, strict=True):
            pic = pictures[name]
            ax.imshow(pic, cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(name.replace("_", " "), fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        write_bytes_atomic(out_dir / "figure1.png", buf.getvalue())
        written.append(out_dir / "figure1.png")
    return written
