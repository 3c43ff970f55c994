"""Images in, training samples out: reading, preprocessing presets, structure priors, datasets.

What a sample is (paper Sec. 3; official ``datasets/dataset.py``)::

    {"image":      (3, H, W) float in [-1, 1]   the full ground-truth image I_gt
     "known_mask": (1, H, W) float {0, 1}       1 = keep (the network's M_in; files use white = fill)
     "edge":       (1, H, W) float {0, 1}       Canny(sigma=2) of the FULL, unmasked image (E_gt)
     "gray":       (1, H, W) float in [0, 1]    gray image of the full image (Y_gt)
     "name":       str                          path of the source image relative to the data root}

The training step applies the mask: ``input_image = image * known_mask`` and
``input_edge = cat(edge * known_mask, gray * known_mask)``. With ``input_edges="known"`` a sample also
holds ``"known_edge"`` (1, H, W): Canny of the known pixels only, what ``ctsdg inpaint`` feeds the
network (docs/inference.md); the training step then feeds it in place of ``edge * known_mask``, and
``edge`` stays the target of the edge losses.

Structure priors (:func:`compute_structure`) come in two modes:

* ``standard``: gray and Canny edges of the image in [0, 1] (what the paper describes);
* ``official``: what the authors' code computes. Their image is already in [-1, 1] when it is cast to
  uint8, so values wrap modulo 256 (spec §3.3): ``u8 = trunc(255 * x) mod 256``. The released
  checkpoints were trained on this, so inference with them must use it. The wrap is written out
  explicitly here, never left to a float -> uint8 cast (whose result depends on the processor).

Preprocessing presets (``DataConfig.preset``):

* ``official``: resize to ``size`` x ``size`` with bilinear interpolation, ignoring the aspect ratio
  (``transforms.Resize((256, 256))`` in the official code);
* ``celeba``: centre crop 178 x 178, then resize (what the authors say they used for CelebA);
* ``random_crop``: a random square window whose side is drawn log-uniformly between ``size`` and the
  image's short side (several scales), resized to ``size``. This is what the bundled model trains on
  (large photos; see :mod:`ctsdg.corpus`). Photos are decoded once per worker into a copy whose longest
  side is at most ``cache_max_side`` (JPEG draft decoding), and crops are cut from that copy.

Determinism: every random choice of sample ``index`` comes from ``numpy.random.default_rng((seed,
index))``, never from global RNG state, so a sample is the same whatever the worker count or order.
Indices may exceed ``len(dataset)``: index ``k`` reads file ``k % len`` with randomness from ``k``;
:class:`EpochSampler` uses this to give each epoch fresh crops and masks.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .conventions import MASK_THRESHOLD, hole_mask_from_uint8, hole_to_known

logger = logging.getLogger("ctsdg.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PRESETS = ("official", "celeba", "random_crop")
STRUCTURE_MODES = ("standard", "official")
# where the network's input edges come from: Canny of the "known" pixels only (what inference feeds: the hole
# holds the object to remove), or of the "full" picture, masked (the paper's training and evaluation)
EDGES = ("known", "full")
CELEBA_CROP = 178  # EdgeConnect / CTSDG issue #11: centre 178 x 178 crop of the aligned 178 x 218 faces

# Truncated files are refused because Pillow's ImageFile.LOAD_TRUNCATED_IMAGES is False by default
# (we do not change that global; a program that sets it True gets grey-padded pictures instead).


def check_sigma(sigma: float, name: str = "sigma") -> float:
    """``sigma`` if the Canny edges' Gaussian can take it (> 0; skimage's Canny fails on every image
    otherwise), else ValueError naming ``name``."""
    if not sigma > 0:  # also NaN
        raise ValueError(f"{name} (the Canny edges' Gaussian) must be > 0 (the paper: 2), got {sigma}")
    return sigma


def check_edges(edges: str) -> str:
    """``edges`` if it is one of :data:`EDGES`, else ValueError naming them."""
    if edges not in EDGES:
        raise ValueError(f"edges must be one of {EDGES}, got {edges!r}")
    return edges


# --- reading files ------------------------------------------------------------------------------


def _open(path: str | os.PathLike, what: str, draft: int | None = None) -> Image.Image:
    """Open and fully decode an image file, turning every failure into an error naming the file.

    ``draft``: let JPEG decoding downscale by 2/4/8 while keeping both sides >= ``draft`` (fast).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); re-copy or delete it")
    try:
        im = Image.open(io.BytesIO(path.read_bytes()))  # no file handle left open
        if draft and im.format == "JPEG":
            im.draft("RGB", (draft, draft))
        im.load()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"{what} {path} is not a readable image ({exc}); re-export it as PNG or JPEG"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{what} {path} is truncated or corrupt ({exc}); re-copy or delete it") from exc
    return im


def _sixteen_bit_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit int holding 16-bit) grayscale -> uint8 (H, W), 0..65535 -> 0..255 rounded."""
    arr = np.asarray(im).astype(np.int64)
    return np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``, the one reader every part of ctsdg uses.

    Handling of unusual files (each one tested in ``tests/test_data.py``):

    * EXIF orientation is applied (a phone photo comes out the way it is shown);
    * grayscale, 1-bit, palette, CMYK and YCbCr images are converted to RGB;
    * 16-bit grayscale is scaled to 8 bits (``round(v / 257)``);
    * an alpha channel is dropped (the colour channels are kept as they are);
    * multi-frame files (GIF, TIFF) use their first frame;
    * missing, zero-byte, truncated, unreadable and 32-bit float images raise an error naming the file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, truncated, not an image or in an unsupported mode.
    """
    return _to_rgb(_open(path, "image"), path)


def _to_rgb(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """EXIF-transpose and convert a decoded image to uint8 RGB (H, W, 3) (see :func:`read_image`)."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as exc:  # a broken EXIF block must not hide the picture's name
        raise ValueError(f"image {path} has a corrupt EXIF block ({exc}); re-save it without EXIF") from exc
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = _sixteen_bit_to_uint8(im)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode == "F":
        raise ValueError(f"image {path} holds 32-bit float pixels; convert it to 8-bit RGB first")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # a writable copy


def read_mask_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file as uint8 ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` without changing polarity."""
    im = _open(path, "mask")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _sixteen_bit_to_uint8(im)
    if im.mode == "F":
        raise ValueError(f"mask {path} holds 32-bit float pixels; save it as an 8-bit PNG (white = fill)")
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("P", "PA", "LA"):
        im = im.convert("RGBA")
    elif im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)


def resize_hole_mask(hole_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a ``hole_mask`` (1, H, W) with nearest neighbour only (a mask stays binary)."""
    if tuple(hole_mask.shape[-2:]) == (height, width):
        return hole_mask
    im = Image.fromarray((hole_mask.reshape(hole_mask.shape[-2:]).numpy() > 0.5).astype(np.uint8) * 255)
    out = np.asarray(im.resize((width, height), Image.NEAREST)) > MASK_THRESHOLD
    return torch.from_numpy(out.astype(np.float32))[None]


def read_mask(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    resize: bool = False,
    allow_empty: bool = False,
    allow_full: bool = False,
) -> torch.Tensor:
    """Read a mask file as ``hole_mask`` (1, H, W) float {0, 1}, 1 = fill (white pixels > 127).

    1-bit, gray, RGB (hole where the largest channel is white), RGBA / LA / palette-with-alpha masks
    (alpha is the hole when the colour channels are all black) and 16-bit masks are accepted.

    Args:
        path: the mask file. White (255) = fill, black = keep.
        size: ``(height, width)`` the mask must have (usually the image's).
        resize: resize a mask of another size to ``size`` with nearest neighbour instead of failing.
        allow_empty: accept a mask with no hole (all black); by default that is an error.
        allow_full: accept a mask that is all hole (all white); by default that is an error.

    Raises:
        ValueError: unreadable mask, wrong size (without ``resize``), all black or all white.
    """
    hole_mask = hole_mask_from_uint8(read_mask_uint8(path))
    if size is not None and tuple(hole_mask.shape[-2:]) != tuple(size):
        h, w = hole_mask.shape[-2:]
        if not resize:
            raise ValueError(
                f"mask {path} is {w}x{h} but the image is {size[1]}x{size[0]}; resize the mask with "
                "nearest-neighbour (or pass --resize-mask / resize=True)"
            )
        hole_mask = resize_hole_mask(hole_mask, int(size[0]), int(size[1]))
    check_hole_mask(hole_mask, str(path), allow_empty=allow_empty, allow_full=allow_full)
    return hole_mask


def check_hole_mask(
    hole_mask: torch.Tensor, where: str, allow_empty: bool = False, allow_full: bool = False
) -> None:
    """Raise a clear error for a mask with nothing to fill or nothing to keep."""
    ratio = float(hole_mask.mean())
    if ratio == 0.0 and not allow_empty:
        raise ValueError(
            f"mask {where} is all black: nothing to fill (white = fill, black = keep); "
            "if your masks mark the hole in black, invert them"
        )
    if ratio == 1.0 and not allow_full:
        raise ValueError(
            f"mask {where} is all white: the whole image would be filled and nothing kept "
            "(white = fill, black = keep); if your masks mark the hole in black, invert them"
        )


# --- file lists ---------------------------------------------------------------------------------


def list_images(root: str | os.PathLike, recursive: bool = True, what: str = "image folder") -> list[Path]:
    """Image files under ``root`` (recursive by default), sorted by relative path. ``what`` names ``root``
    in the errors ("mask folder" for masks)."""
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(f"{what} {root} is a file; pass a folder")
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {root} does not exist")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files


def read_file_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """Paths listed one per line in ``list_file`` (first whitespace-separated column), relative to ``root``.

    Blank lines and lines starting with ``#`` are ignored. ``root`` defaults to the list's folder.
    An absolute path that exists is kept; other leading slashes are relative to ``root`` (Places2).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"file list {list_file} does not exist")
    base = Path(root) if root is not None else list_file.parent
    files = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            first = line.split()[0]
            # an absolute path that exists is used as is; otherwise it is relative to the root
            # (Places2 lists write "/a/airfield/00000001.jpg" relative to data_256/)
            files.append(
                Path(first)
                if Path(first).is_absolute() and Path(first).exists()
                else base / first.lstrip("/")
            )
    if not files:
        raise ValueError(f"file list {list_file} lists no files")
    return files


def standard_split(dataset: str, root: str | os.PathLike, split: str) -> list[Path]:
    """The standard train / val / test files of CelebA, Paris StreetView or Places2 under ``root``.

    Expected layouts (the ones the data sets are distributed in):

    * ``celeba``: ``root/list_eval_partition.txt`` or ``root/Eval/list_eval_partition.txt``
      (``000001.jpg 0``; 0 train, 1 val, 2 test) and ``root/img_align_celeba/``;
    * ``places2``: ``root/places365_train_standard.txt`` with ``root/data_256/`` (train) and
      ``root/places365_val.txt`` with ``root/val_256/`` (val = test, as in the literature);
    * ``paris``: ``root/paris_train_original/`` (train) and ``root/paris_eval_gt/`` (val = test).
    """
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if dataset == "celeba":
        candidates = [root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt"]
        list_file = next((c for c in candidates if c.is_file()), candidates[0])
        if not list_file.is_file():
            raise FileNotFoundError(f"{list_file} not found; download CelebA's Eval/list_eval_partition.txt")
        wanted = {"train": "0", "val": "1", "test": "2"}[split]
        rows = [line.split() for line in list_file.read_text().splitlines() if line.strip()]
        return [root / "img_align_celeba" / name for name, part in rows if part == wanted]
    if dataset == "places2":
        if split == "train":
            return read_file_list(root / "places365_train_standard.txt", root / "data_256")
        return read_file_list(root / "places365_val.txt", root / "val_256")
    if dataset == "paris":
        return list_images(root / ("paris_train_original" if split == "train" else "paris_eval_gt"))
    raise ValueError(f"unknown data set {dataset!r}; expected celeba, places2 or paris")


def scan_images(files: Sequence[str | os.PathLike], masks: bool = False) -> dict[str, str]:
    """Read every file once and return ``{path: reason}`` for the bad ones (empty dict = all good).

    With ``masks=True`` files are read as masks (all-black / all-white masks count as bad).
    """
    bad: dict[str, str] = {}
    for f in files:
        try:
            if masks:
                read_mask(f)
            else:
                read_image(f)
        except (ValueError, OSError) as exc:
            bad[str(f)] = str(exc)
    return bad


# --- structure priors ---------------------------------------------------------------------------


class Structure(NamedTuple):
    """Structure priors of one image: ``edge`` (1, H, W) {0, 1} and ``gray`` (1, H, W) in [0, 1]."""

    edge: torch.Tensor
    gray: torch.Tensor


def official_uint8(image: torch.Tensor) -> np.ndarray:
    """The authors' uint8 view of a [-1, 1] image: ``trunc(255 * x) mod 256`` (spec §3.3).

    ``ToPILImage`` computes ``uint8(x * 255)`` on the already normalised image; on x86 negative values
    wrap around: -1.0 -> 1, -0.75 -> 65, -0.5 -> 129, -0.25 -> 193, 0 -> 0, 0.5 -> 127, 1 -> 255.
    Truncation toward zero (not floor) gives exactly those values; the product is taken in float32
    like the original. Args: image (3, H, W) in [-1, 1]. Returns: uint8 (H, W, 3).
    """
    scaled = image.detach().to(torch.float32).cpu().numpy().transpose(1, 2, 0) * np.float32(255.0)
    wrapped = np.remainder(np.trunc(scaled).astype(np.int64), 256)  # remainder is >= 0 for a positive divisor
    return wrapped.astype(np.uint8)


def compute_structure(image: torch.Tensor, sigma: float = 2.0, official: bool = False,
                      known: torch.Tensor | np.ndarray | None = None) -> Structure:
    """Edge and gray priors of an image (paper Sec. 3.1; official ``utils/canny.py``).

    gray = skimage ``rgb2gray`` (0.2125 R + 0.7154 G + 0.0721 B); edge = skimage ``canny(gray, sigma)``
    with its default thresholds (0.1 / 0.2 of the float range). Training computes them on the full,
    unmasked image, as the authors do.

    Args:
        image: (3, H, W) float tensor in [-1, 1].
        sigma: Canny Gaussian sigma (paper and official code: 2).
        official: reproduce the authors' wrapped uint8 conversion (needed for their checkpoints).
        known: optional (H, W) or (1, H, W), nonzero = known pixel. Canny then reads known pixels only
            (skimage's ``mask``: its smoothing is normalised over known pixels, and no edge is reported
            on the hole or the known pixel next to it), so what lies under the hole cannot draw edges
            around it. Inference passes it: there the hole holds the object being removed.

    Returns:
        ``Structure(edge, gray)``, each (1, H, W) float32 in [0, 1] on ``image``'s device.
    """
    from skimage.color import rgb2gray
    from skimage.feature import canny

    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"compute_structure expects one image (3, H, W) in [-1, 1], got shape {tuple(image.shape)}"
        )
    if official:
        rgb = official_uint8(image)  # rgb2gray converts uint8 to float by / 255
    else:
        # numpy, not torch: small torch ops stall on a busy CPU (see _uint8_to_signed_numpy)
        rgb = ((image.detach().cpu().numpy().astype(np.float64).transpose(1, 2, 0) + 1.0) / 2.0).clip(
            0.0, 1.0
        )
    gray = rgb2gray(rgb)
    mask = None
    if known is not None:
        known = known.detach().cpu().numpy() if isinstance(known, torch.Tensor) else np.asarray(known)
        mask = known.reshape(gray.shape) != 0
    edge = canny(gray, sigma=sigma, mask=mask)
    to = {"device": image.device, "dtype": torch.float32}
    return Structure(
        torch.from_numpy(edge.astype(np.float32))[None].to(**to),
        torch.from_numpy(gray.astype(np.float32))[None].to(**to),
    )


# --- preprocessing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """How training / evaluation samples are made. Defaults: the paper's 256 x 256, standard priors."""

    preset: str = "official"  # "official" (resize), "celeba" (crop 178 + resize), "random_crop"
    size: int = 256  # output side in pixels (paper: 256)
    hflip: bool = False  # random horizontal flip (official code: none)
    color_jitter: float = 0.0  # s: brightness and saturation x U[1-s, 1+s], hue turned by U[-s/2, s/2] (0 = off)
    structure_mode: str = "standard"  # "standard" or "official" (wrapped uint8, for official weights)
    sigma: float = 2.0  # Canny sigma (paper: 2)
    input_edges: str = "full"  # the network's input edges: Canny of the "full" picture, masked (paper), or of the "known" pixels
    crop_max_fraction: float = 1.0  # random_crop: largest window side as a fraction of the short side
    cache_max_side: int = 1024  # random_crop: decode photos once at most this long side (0 = full size)
    seed: int = 0  # base seed; sample k uses default_rng((seed, k))

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"data.preset must be one of {PRESETS}, got {self.preset!r}")
        if self.structure_mode not in STRUCTURE_MODES:
            raise ValueError(
                f"data.structure_mode must be one of {STRUCTURE_MODES}, got {self.structure_mode!r}"
            )
        if self.input_edges not in EDGES:
            raise ValueError(f"data.input_edges must be 'full' (the paper) or 'known', got {self.input_edges!r}")
        if self.size < 8:
            raise ValueError(f"data.size must be at least 8 pixels, got {self.size}")
        check_sigma(self.sigma, "data.sigma")
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ValueError(f"data.color_jitter must be in [0, 1] (0 = off), got {self.color_jitter}")
        if not 0.0 < self.crop_max_fraction <= 1.0:
            raise ValueError(f"data.crop_max_fraction must be in (0, 1], got {self.crop_max_fraction}")
        if self.cache_max_side and self.cache_max_side < self.size:
            raise ValueError(
                f"data.cache_max_side ({self.cache_max_side}) must be 0 or at least data.size ({self.size})"
            )


def resize_bilinear(
    image: np.ndarray, height: int, width: int, box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """PIL bilinear resize of a uint8 (H, W, 3) image (what ``transforms.Resize`` does on PIL images)."""
    return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR, box=box))


def center_crop(image: np.ndarray, side: int, where: str = "image") -> np.ndarray:
    """Centre crop like ``transforms.CenterCrop``: top = round((H - side) / 2), left likewise."""
    h, w = image.shape[:2]
    if h < side or w < side:
        raise ValueError(
            f"{where} is {w}x{h}, smaller than the {side}x{side} centre crop; use preset 'official'"
        )
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return image[top : top + side, left : left + side]


def preprocess(
    image: np.ndarray, config: DataConfig, rng: np.random.Generator, where: str = "image"
) -> np.ndarray:
    """Apply ``config.preset`` (and flip) to a uint8 (H, W, 3) image -> uint8 (size, size, 3).

    ``random_crop`` on an image whose short side is below ``config.size`` first upscales it (bilinear)
    so that its short side equals ``size``; the other presets resize anyway.
    """
    s = config.size
    if config.preset == "official":
        out = resize_bilinear(image, s, s)
    elif config.preset == "celeba":
        out = resize_bilinear(center_crop(image, CELEBA_CROP, where), s, s)
    else:
        h, w = image.shape[:2]
        short = min(h, w)
        if short < s:
            scale = s / short
            image = resize_bilinear(image, max(s, round(h * scale)), max(s, round(w * scale)))
            h, w = image.shape[:2]
            short = min(h, w)
        largest = max(s, short * config.crop_max_fraction)
        side = math.exp(rng.uniform(math.log(s), math.log(largest))) if largest > s else float(s)
        side = min(side, short)
        top = rng.uniform(0.0, h - side)
        left = rng.uniform(0.0, w - side)
        out = resize_bilinear(image, s, s, box=(left, top, left + side, top + side))
    if config.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    if config.color_jitter:
        out = color_jitter(np.ascontiguousarray(out), config.color_jitter, rng)
    return np.array(out, dtype=np.uint8, order="C")  # a writable copy (PIL arrays are read-only)


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random colour of a uint8 (H, W, 3) image, for training on few photos (not in the paper): in
    PIL's 8-bit HSV, brightness (V) and saturation (S) scaled by factors drawn from [1 - s, 1 + s]
    and the hue turned by a fraction of the colour circle drawn from [-s/2, s/2]. Grays stay gray."""
    s = strength
    hue, sat, val = rng.uniform(-s / 2, s / 2), rng.uniform(1 - s, 1 + s), rng.uniform(1 - s, 1 + s)
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue * 256.0) % 256.0
    hsv[..., 1] *= sat
    hsv[..., 2] *= val
    hsv = np.clip(np.rint(hsv), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def read_image_for_crops(path: str | os.PathLike, max_side: int) -> np.ndarray:
    """Read an image downscaled so its longest side is at most ``max_side`` (0 = full size).

    JPEGs are decoded at a reduced scale (``Image.draft``), which makes a 5000 px photo ~10x faster.
    """
    if not max_side:
        return read_image(path)
    arr = _to_rgb(_open(path, "image", draft=max_side), path)
    h, w = arr.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        arr = resize_bilinear(arr, max(1, round(h * scale)), max(1, round(w * scale)))
    return arr


# --- datasets -----------------------------------------------------------------------------------


def _uint8_to_signed_numpy(pixels: np.ndarray) -> torch.Tensor:
    """``conventions.uint8_to_signed`` computed in numpy (bit-identical, tested).

    Small torch ops in a DataLoader's main process use several threads and stall on a busy CPU
    (measured: 90 ms for one 256 x 256 image at load 7 on 2 cores); numpy does it in ~1 ms.
    """
    unit = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(unit * np.float32(2.0) - np.float32(1.0)))


# A mask source gives a hole_mask (1, H, W) {0, 1} for sample ``index`` using ``rng``.
MaskSource = Callable[[int, np.random.Generator, int, int, str], torch.Tensor]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG of sample ``index``: independent of workers, order and global state."""
    return np.random.default_rng((int(seed), int(index)))


class InpaintingDataset(torch.utils.data.Dataset):
    """Images from a folder (recursive) or a file list, with masks and structure priors.

    Args:
        files: an image folder, a text file listing images, or a sequence of image paths.
        config: preprocessing and structure settings (:class:`DataConfig`).
        masks: a mask source ``masks(index, rng, height, width, name) -> hole_mask (1, H, W)``, such
            as :class:`ctsdg.masks.MaskFolder` or :class:`ctsdg.masks.IrregularMaskGenerator`.
        root: base folder for relative names (default: the folder, or the list's folder).
        skip_bad: on a bad image or mask, log it, record it in ``bad_files`` (and append it to
            ``bad_files_log`` if given) and return the next good sample instead of raising.
        bad_files_log: optional text file that collects ``path<TAB>reason`` lines from all workers.
        cache_items: ``random_crop`` keeps this many decoded photos per worker (least recently used
            dropped; at ``cache_max_side`` 1024 a photo takes about 2 MB); 0 = no cache.

    Returns samples as described in the module docstring. Index ``k`` may exceed ``len(self)``.
    """

    def __init__(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        config: DataConfig,
        masks: MaskSource,
        root: str | os.PathLike | None = None,
        skip_bad: bool = True,
        bad_files_log: str | os.PathLike | None = None,
        cache_items: int = 128,
    ) -> None:
        if isinstance(files, (str, os.PathLike)):
            p = Path(files)
            if p.is_dir():
                self.files = list_images(p)
                root = p if root is None else root
            elif p.is_file():
                self.files = read_file_list(p, root)
                root = Path(root) if root is not None else p.parent
            else:
                raise FileNotFoundError(f"{p} is neither an image folder nor a file list")
        else:
            self.files = [Path(f) for f in files]
            if not self.files:
                raise ValueError("the dataset got an empty list of images")
        self.root = Path(root) if root is not None else None
        self.config = config
        self.masks = masks
        self.skip_bad = skip_bad
        self.bad_files_log = Path(bad_files_log) if bad_files_log is not None else None
        self.bad_files: dict[str, str] = {}
        self.cache_items = cache_items
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def name(self, file_index: int) -> str:
        path = self.files[file_index]
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.as_posix()

    def _load(self, file_index: int) -> np.ndarray:
        if self.config.preset != "random_crop":
            return read_image(self.files[file_index])
        if file_index in self._cache:
            self._cache.move_to_end(file_index)
            return self._cache[file_index]
        pixels = read_image_for_crops(self.files[file_index], self.config.cache_max_side)
        if self.cache_items > 0:
            self._cache[file_index] = pixels
            while len(self._cache) > self.cache_items:  # least recently used first
                self._cache.popitem(last=False)
        return pixels

    def make_sample(self, index: int, file_index: int) -> dict:
        """Build sample ``index`` from file ``file_index`` (raises on a bad file)."""
        rng = sample_rng(self.config.seed, index)
        path = self.files[file_index]
        pixels = preprocess(self._load(file_index), self.config, rng, where=f"image {path}")
        image = _uint8_to_signed_numpy(pixels)
        s = self.config.size
        name = self.name(file_index)
        hole_mask = self.masks(index, rng, s, s, name)
        if tuple(hole_mask.shape) != (1, s, s):
            raise ValueError(
                f"the mask source returned shape {tuple(hole_mask.shape)} for {name}; expected (1, {s}, {s})"
            )
        edge, gray = compute_structure(
            image, self.config.sigma, official=self.config.structure_mode == "official"
        )
        # the flip on the numpy view: 1 - x is the same maths, without a torch op that stalls a busy CPU
        known_mask = torch.from_numpy(hole_to_known(hole_mask.to(torch.float32).numpy()))
        sample = {"image": image, "known_mask": known_mask, "edge": edge, "gray": gray, "name": name}
        if self.config.input_edges == "known":
            sample["known_edge"] = compute_structure(image, self.config.sigma, official=self.config.structure_mode
                                                     == "official", known=known_mask).edge
        return sample

    def _report(self, path: Path, exc: Exception) -> None:
        key = str(path)
        if key in self.bad_files:
            return
        self.bad_files[key] = str(exc)
        logger.warning("skipping bad training file %s: %s", key, exc)
        if self.bad_files_log is not None:
            with open(self.bad_files_log, "a") as f:  # one short append per bad file; safe across workers
                f.write(f"{key}\t{str(exc).replace(chr(10), ' ')}\n")

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        n = len(self.files)
        for offset in range(n):
            file_index = (index + offset) % n
            if str(self.files[file_index]) in self.bad_files:
                continue
            try:
                return self.make_sample(index, file_index)
            except (ValueError, OSError) as exc:
                if not self.skip_bad:
                    raise
                self._report(self.files[file_index], exc)
        raise RuntimeError(
            f"every one of the {n} images is unreadable or has a bad mask; see the log for each file"
        )


class EpochSampler(torch.utils.data.Sampler[int]):
    """Seeded shuffling over epochs: epoch ``e`` yields ``e * n + permutation_e(n)``, from ``start``.

    Sample indices grow across epochs, so :class:`InpaintingDataset` draws fresh crops and masks each
    epoch while staying deterministic; ``start`` (a sample count) resumes exactly where a run stopped.
    ``num_samples`` bounds the total number of indices (``None`` = endless).
    """

    def __init__(self, n: int, seed: int = 0, start: int = 0, num_samples: int | None = None) -> None:
        if n <= 0:
            raise ValueError("EpochSampler needs at least one sample")
        self.n, self.seed, self.start, self.num_samples = n, seed, start, num_samples

    def __iter__(self) -> Iterator[int]:
        k = self.start
        end = None if self.num_samples is None else self.start + self.num_samples
        while end is None or k < end:
            epoch, pos = divmod(k, self.n)
            perm = np.random.default_rng((self.seed, epoch, 7919)).permutation(self.n)
            yield epoch * self.n + int(perm[pos])
            k += 1

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an endless EpochSampler has no length")
        return self.num_samples
