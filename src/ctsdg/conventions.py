"""The one place for value ranges, mask polarity, size multiples and conversions.

Every other module imports these names instead of re-deriving them.

Ranges
    * Network images are float tensors in [-1, 1] (``image = 2 * pixel - 1``), shape (B, 3, H, W).
    * Metrics work on [0, 1] floats.
    * Files and user-facing arrays are uint8 in [0, 255], shape (H, W, 3).

Mask polarity
    * Files and every public API: **white (255) = region to fill**, black (0) = keep.
    * In code a bare ``mask`` is never used: ``hole_mask`` is 1 where pixels are filled,
      ``known_mask`` is 1 where pixels are kept. The official network takes ``known_mask``.
    * Mask files are binarised at ``MASK_THRESHOLD`` (a value > 127 is a hole) and resized with
      nearest neighbour only.

Sizes
    * The generator has seven stride-2 stages, so both sides must be multiples of ``SIZE_MULTIPLE``.
    * It was trained (by the authors and by us) at ``TRAIN_SIZE`` x ``TRAIN_SIZE``.
"""

from __future__ import annotations

import numpy as np
import torch

SIZE_MULTIPLE = 128
TRAIN_SIZE = 256
MASK_THRESHOLD = 127  # uint8 mask value strictly above this is a hole (white = fill)


def hole_to_known(hole_mask: torch.Tensor) -> torch.Tensor:
    """Flip polarity: 1 = fill  ->  1 = keep. The only place this flip is written."""
    return 1.0 - hole_mask


def known_to_hole(known_mask: torch.Tensor) -> torch.Tensor:
    """Flip polarity: 1 = keep  ->  1 = fill."""
    return 1.0 - known_mask


def uint8_to_unit(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float tensor (3, H, W) in [0, 1]."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def uint8_to_signed(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float tensor (3, H, W) in [-1, 1], the network's image range."""
    return unit_to_signed(uint8_to_unit(image))


def unit_to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


def signed_to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (what the official ``postprocess`` does)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def unit_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float tensor (3, H, W) in [0, 1] -> uint8 (H, W, 3), rounded to nearest."""
    x = x.detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def signed_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float tensor (3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    return unit_to_uint8(signed_to_unit(x))


def hole_mask_from_uint8(mask: np.ndarray) -> torch.Tensor:
    """A mask as read from a file or given by a user -> ``hole_mask`` (1, H, W) float {0, 1}.

    Accepts (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 arrays (bool, and other integer types holding
    0..255, too). For RGB masks a pixel is a hole
    when its largest channel is white. An RGBA mask is read as it looks over black, so a transparent
    pixel is kept whatever colour it stores (white strokes on a layer that was filled white and then
    erased); when the colour channels are all black, alpha > 127 marks the hole (a black brush painted
    on transparency) unless every pixel is opaque (an all-black picture saved with an alpha channel marks
    nothing), and when no pixel has any opacity the alpha is ignored.
    A one-channel mask holding only 0 and 1 is a label mask, as many data sets store them: 1 = fill
    (read as 8-bit gray, it would be all keep). Inference, training and evaluation all read masks here.
    """
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    if mask.dtype.kind in "iu" and mask.dtype != np.uint8 and mask.size and 0 <= mask.min() and mask.max() <= 255:
        mask = mask.astype(np.uint8)  # e.g. (m > 0) * 255, or a 0/1 label mask (1 = fill, below), in int64
    if mask.dtype != np.uint8:
        hint = ("; for a float mask in [0, 1] (1 = fill) pass (mask > 0.5).astype(np.uint8) * 255"
                if mask.dtype.kind == "f" else "")
        raise TypeError(f"expected a uint8 mask (255 = fill), got {mask.dtype}{hint}")
    if mask.ndim == 2 and mask.size and mask.max() == 1:  # uint8, so min is 0 or 1: a 0/1 label mask
        mask = mask * np.uint8(255)
    if mask.ndim == 3:
        channels = mask.shape[2]
        if channels == 4:
            color, alpha = mask[..., :3], mask[..., 3]
            if color.max() == 0:  # black paint: where it is opaque, unless it is opaque everywhere (a black
                mask = alpha if alpha.min() < 255 else color.max(axis=2)  # picture with an alpha channel: empty)
            elif alpha.max() == 0:
                mask = color.max(axis=2)
            else:  # over black: the brightest channel times the opacity, rounded
                mask = ((color.max(axis=2).astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
        elif channels in (1, 3):
            mask = mask.max(axis=2)
        else:
            raise ValueError(f"a mask must have 1, 3 or 4 channels, got {channels}")
    elif mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W) or (H, W, C), got shape {mask.shape}")
    return torch.from_numpy((mask > MASK_THRESHOLD).astype(np.float32))[None]


def hole_mask_to_uint8(hole_mask: torch.Tensor) -> np.ndarray:
    """``hole_mask`` (1, H, W) or (H, W) -> uint8 (H, W) with 255 = fill."""
    m = hole_mask.detach().reshape(hole_mask.shape[-2:]).cpu().numpy()
    return np.where(m > 0.5, 255, 0).astype(np.uint8)


def composite(output: torch.Tensor, target: torch.Tensor, known_mask: torch.Tensor) -> torch.Tensor:
    """Known pixels from ``target``, hole pixels from ``output``: ``gt * M + out * (1 - M)``."""
    return target * known_mask + output * (1.0 - known_mask)


def check_size_multiple(height: int, width: int, what: str = "input") -> None:
    """Raise a clear error unless both sides are multiples of ``SIZE_MULTIPLE``."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height == 0 or width == 0:
        raise ValueError(
            f"{what} is {width}x{height} but the CTSDG network needs both sides to be positive "
            f"multiples of {SIZE_MULTIPLE}; pad or resize first (ctsdg.Inpainter does this for you)"
        )
