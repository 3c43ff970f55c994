"""Classical (non-learned) inpainting baselines, each a method name usable by ``ctsdg evaluate``.

Every baseline is a function ``(image uint8 (H, W, 3) RGB, hole_mask uint8 (H, W) with 255 = fill) ->
uint8 (H, W, 3)``. Pixels outside the hole are returned unchanged (the functions composite at the end), so
a baseline's output is directly comparable with a composited network output.

==============  ======================================================  =============================
name            algorithm                                               package (extra ``eval``)
==============  ======================================================  =============================
``patchmatch``  PatchMatch (Barnes et al. 2009), the paper's first row  ``pypatchmatch`` (prebuilt .so)
``telea``       fast marching (Telea 2004), radius 3                    ``opencv-python-headless``
``ns``          Navier-Stokes (Bertalmio et al. 2001), radius 3         ``opencv-python-headless``
``biharmonic``  biharmonic equation (Damelin & Hoang 2018)              ``scikit-image``
==============  ======================================================  =============================

Choices (documented in docs/evaluation.md): OpenCV's inpaint radius is 3 pixels; PatchMatch uses patch
radius :data:`PATCHMATCH_PATCH_SIZE` (7x7 patches, the package's example setting) and a fixed seed, so
its output is deterministic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from .conventions import MASK_THRESHOLD

Baseline = Callable[[np.ndarray, np.ndarray], np.ndarray]

OPENCV_RADIUS = 3
PATCHMATCH_PATCH_SIZE = 3  # radius: patches of (2 * 3 + 1)² pixels
PATCHMATCH_SEED = 0
EXTRA_HINT = 'install the evaluation extra: pip install "ctsdg[eval]"'


def _check(image: np.ndarray, hole_mask: np.ndarray) -> np.ndarray:
    """Validate the inputs; return the boolean hole (True = fill)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"baselines take uint8 RGB images (H, W, 3); got {image.dtype} {image.shape}")
    if hole_mask.dtype != np.uint8 or hole_mask.ndim != 2:
        raise ValueError(f"baselines take a uint8 (H, W) hole mask with 255 = fill; got {hole_mask.dtype} {hole_mask.shape}")
    if hole_mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask is {hole_mask.shape[1]}x{hole_mask.shape[0]} but image is {image.shape[1]}x{image.shape[0]}; "
            "resize the mask with nearest-neighbour first"
        )
    return hole_mask > MASK_THRESHOLD


def _composite(image: np.ndarray, filled: np.ndarray, hole: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[hole] = filled[hole]
    return out


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError(f"the telea/ns baselines need OpenCV; {EXTRA_HINT}") from None
    return cv2


def telea(image: np.ndarray, hole_mask: np.ndarray) -> np.ndarray:
    """OpenCV ``INPAINT_TELEA`` with radius :data:`OPENCV_RADIUS`."""
    hole = _check(image, hole_mask)
    cv2 = _cv2()
    filled = cv2.inpaint(image, hole.astype(np.uint8) * 255, OPENCV_RADIUS, cv2.INPAINT_TELEA)
    return _composite(image, filled, hole)


def navier_stokes(image: np.ndarray, hole_mask: np.ndarray) -> np.ndarray:
    """OpenCV ``INPAINT_NS`` with radius :data:`OPENCV_RADIUS`."""
    hole = _check(image, hole_mask)
    cv2 = _cv2()
    filled = cv2.inpaint(image, hole.astype(np.uint8) * 255, OPENCV_RADIUS, cv2.INPAINT_NS)
    return _composite(image, filled, hole)


def biharmonic(image: np.ndarray, hole_mask: np.ndarray) -> np.ndarray:
    """scikit-image ``inpaint_biharmonic`` per channel, rounded back to uint8."""
    from skimage.restoration import inpaint_biharmonic

    hole = _check(image, hole_mask)
    if hole.all():
        raise ValueError("the biharmonic baseline needs at least one known pixel; the mask covers the whole image")
    filled = inpaint_biharmonic(image, hole, channel_axis=-1)  # float in [0, 1]
    filled = np.clip(np.round(filled * 255.0), 0, 255).astype(np.uint8)
    return _composite(image, filled, hole)


def patchmatch(image: np.ndarray, hole_mask: np.ndarray) -> np.ndarray:
    """PatchMatch inpainting from the ``pypatchmatch`` package, deterministic (seed :data:`PATCHMATCH_SEED`)."""
    hole = _check(image, hole_mask)
    try:
        from patchmatch import patch_match
    except ImportError:
        if sys.version_info < (3, 11):
            raise ImportError("the patchmatch baseline needs pypatchmatch 2.2.0, which needs Python 3.11 or newer; "
                              "run it under Python >= 3.11, or leave patchmatch out of the methods") from None
        raise ImportError(f"the patchmatch baseline needs the pypatchmatch package; {EXTRA_HINT}") from None
    if not patch_match.patchmatch_available:
        raise RuntimeError("pypatchmatch is installed but its native library did not load; reinstall pypatchmatch")
    patch_match.set_random_seed(PATCHMATCH_SEED)
    filled = patch_match.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8) * 255, patch_size=PATCHMATCH_PATCH_SIZE)
    return _composite(image, filled, hole)


BASELINES: dict[str, Baseline] = {
    "patchmatch": patchmatch,
    "telea": telea,
    "ns": navier_stokes,
    "biharmonic": biharmonic,
}


def get_baseline(name: str) -> Baseline:
    """The baseline called ``name`` (one of :data:`BASELINES`)."""
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}") from None
