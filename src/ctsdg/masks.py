"""Hole masks: folders of mask files, a free-form generator with ratio control, buckets, evaluation lists.

One convention for every file and API: **white (255) = fill, black = keep**, binarised at 127
(``conventions.hole_mask_from_uint8``), resized with nearest neighbour only. In code a mask is a
``hole_mask`` (1, H, W) float {0, 1}, 1 = fill.

* :class:`MaskFolder`: masks from files (e.g. the NVIDIA irregular mask set), matched to images by
  name, taken in order (``index % n``, the official test pairing) or sampled (official training).
* :class:`IrregularMaskGenerator`: free-form masks (strokes, blobs, boxes) whose hole ratio is
  within +-2% of a ratio drawn uniformly from a requested range, from a seeded RNG.
* :func:`bucket_of` / :func:`bucket_masks`: hole-ratio buckets, 10% steps or the paper's
  0-20 / 20-40 / 40-60%. A ratio r = k / N falls in bucket (lo, hi] (the first bucket includes 0);
  the comparison is done in integers, so a ratio exactly on an edge is never misfiled by rounding.
* :func:`make_eval_pairs` / :func:`load_eval_pairs`: a fixed, checksummed list of image/mask pairs
  for evaluation (format in ``docs/data.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .checkpoint import file_sha256  # one streamed sha256 for the package
from .conventions import hole_mask_to_uint8
from .data import list_images, read_mask, read_mask_uint8

logger = logging.getLogger("ctsdg.masks")

MATCH_MODES = ("sample", "index", "name")
MASK_KINDS = ("strokes", "blobs", "boxes")
BUCKET_SCHEMES = {
    "10": tuple((10 * i, 10 * (i + 1)) for i in range(10)),  # percent edges, 0-10 ... 90-100
    "paper": ((0, 20), (20, 40), (40, 60)),  # the paper's tables
}
EVAL_PAIRS_FORMAT = "ctsdg-eval-pairs/1"


# --- mask folders -------------------------------------------------------------------------------


class MaskFolder:
    """Mask files from a folder (recursive), used as a dataset's mask source.

    Args:
        folder: the mask folder; white (255) = fill.
        match: ``"sample"`` picks a random mask per sample (official training), ``"index"`` takes
            mask ``index % n`` (official test pairing), ``"name"`` takes the mask whose relative path
            without extension equals the image's (``a/b.jpg`` <- ``a/b.png``), or failing that, the
            one with the same file stem.

    Masks are resized to the sample size with nearest neighbour. A bad mask file (unreadable, all
    black, all white) is logged, recorded in ``bad_files`` and replaced by the next mask in
    ``sample`` / ``index`` mode; in ``name`` mode it is an error naming the file.
    """

    def __init__(self, folder: str | os.PathLike, match: str = "sample") -> None:
        if match not in MATCH_MODES:
            raise ValueError(f"mask match must be one of {MATCH_MODES}, got {match!r}")
        self.folder = Path(folder)
        self.files = list_images(self.folder)
        self.match = match
        self.bad_files: dict[str, str] = {}
        self._by_key: dict[str, Path] = {}
        self._by_stem: dict[str, Path] = {}
        self._position_of = {f: i for i, f in enumerate(self.files)}
        for f in self.files:
            self._by_key[f.relative_to(self.folder).with_suffix("").as_posix()] = f
            self._by_stem.setdefault(f.stem, f)

    def __len__(self) -> int:
        return len(self.files)

    def path_for(self, index: int, rng: np.random.Generator, name: str) -> Path:
        """The mask file for sample ``index`` of image ``name``."""
        return self.files[self._position(index, rng, name)]

    def _position(self, index: int, rng: np.random.Generator, name: str) -> int:
        if self.match == "name":
            key = Path(name).with_suffix("").as_posix()
            found = self._by_key.get(key) or self._by_stem.get(Path(name).stem)
            if found is None:
                raise ValueError(
                    f"no mask named like image {name} in {self.folder}; name the masks like the "
                    "images, or match masks by 'sample' or 'index'"
                )
            return self._position_of[found]
        if self.match == "index":
            return index % len(self.files)
        return int(rng.integers(len(self.files)))

    def __call__(
        self, index: int, rng: np.random.Generator, height: int, width: int, name: str
    ) -> torch.Tensor:
        start = self._position(index, rng, name)
        if self.match == "name":
            return read_mask(self.files[start], size=(height, width), resize=True)
        for offset in range(len(self.files)):
            candidate = self.files[(start + offset) % len(self.files)]
            if str(candidate) in self.bad_files:
                continue
            try:
                return read_mask(candidate, size=(height, width), resize=True)
            except ValueError as exc:
                self.bad_files[str(candidate)] = str(exc)
                logger.warning("skipping bad mask %s: %s", candidate, exc)
        raise ValueError(f"every mask in {self.folder} is unreadable, all black or all white")


# --- the irregular mask generator ---------------------------------------------------------------


@dataclass(frozen=True)
class IrregularMaskGenerator:
    """Free-form hole masks with a controlled hole ratio (strokes, blobs, boxes).

    For each sample a target ratio t ~ U(ratio_range) is drawn; blobs and boxes first cover a random
    share (up to 60%) of t, then brush strokes are painted segment by segment. A segment that would
    overshoot is shortened (and the brush thinned) so the final ratio lands within ``tolerance`` of t
    and, when the range is wider than ``tolerance``, inside the range itself; so always within +-2% of
    the requested range (tested over many seeds in ``tests/test_masks.py``).

    Args:
        ratio_range: (low, high) hole ratio, 0 < low <= high < 1, e.g. (0.2, 0.4).
        kinds: any of "strokes", "blobs", "boxes" (strokes are always used to finish).
        tolerance: allowed |ratio - t| (default 0.005).
    """

    ratio_range: tuple[float, float] = (0.1, 0.6)
    kinds: tuple[str, ...] = MASK_KINDS
    tolerance: float = 0.005

    def __post_init__(self) -> None:
        lo, hi = (float(r) for r in self.ratio_range)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"mask ratio range must satisfy 0 < low <= high < 1, got {self.ratio_range}")
        object.__setattr__(self, "ratio_range", (lo, hi))
        bad = [k for k in self.kinds if k not in MASK_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"mask kinds must be a non-empty subset of {MASK_KINDS}, got {self.kinds}")

    def __call__(
        self, index: int, rng: np.random.Generator, height: int, width: int, name: str = ""
    ) -> torch.Tensor:
        return torch.from_numpy(self.generate(rng, height, width).astype(np.float32))[None]

    def generate(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """One mask as a bool array (H, W), True = hole."""
        lo, hi = self.ratio_range
        target = float(rng.uniform(lo, hi))
        total = height * width
        tol_px = max(1, int(self.tolerance * total))
        goal = int(round(target * total))
        # accept [goal - tol, goal + tol], kept inside the requested range when that leaves room
        low_px, high_px = (
            max(goal - tol_px, math.ceil(lo * total)),
            min(goal + tol_px, math.floor(hi * total)),
        )
        if high_px - low_px < tol_px:
            low_px, high_px = goal - tol_px, goal + tol_px
        canvas = np.zeros((height, width), dtype=bool)
        count = 0
        side = min(height, width)

        shapes = [k for k in self.kinds if k != "strokes"]
        if shapes:
            budget = goal * rng.uniform(0.0, 0.6)
            for _ in range(40):
                if count >= budget:
                    break
                kind = shapes[int(rng.integers(len(shapes)))]
                layer = _blob(rng, height, width, side) if kind == "blobs" else _box(rng, height, width, side)
                merged = canvas | layer
                new = int(np.count_nonzero(merged))
                if new <= high_px:
                    canvas, count = merged, new

        brush = max(1, int(side * rng.uniform(0.03, 0.09)))
        for _ in range(200):  # strokes
            if count >= low_px:
                break
            y, x = float(rng.uniform(0, height)), float(rng.uniform(0, width))
            angle = float(rng.uniform(0, 2 * math.pi))
            for _ in range(int(rng.integers(4, 13))):
                if count >= low_px:
                    break
                angle += float(rng.normal(0.0, 0.8))
                length = float(rng.uniform(0.05, 0.2)) * side
                accepted = False
                for _ in range(12):  # shorten, then thin the brush, until the segment fits
                    y2 = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
                    x2 = min(max(x + length * math.cos(angle), 0.0), width - 1.0)
                    top, left, patch = _segment(height, width, x, y, x2, y2, brush)
                    region = canvas[top : top + patch.shape[0], left : left + patch.shape[1]]
                    new = count + int(np.count_nonzero(patch & ~region))
                    if new <= high_px:
                        accepted = True
                        break
                    if length > 2.0:
                        length /= 2.0
                    else:
                        brush = max(1, brush // 2)
                if not accepted:
                    break
                region |= patch  # a view into canvas
                count = new
                y, x = y2, x2
        return canvas


def _segment(
    height: int, width: int, x1: float, y1: float, x2: float, y2: float, brush: int
) -> tuple[int, int, np.ndarray]:
    """A brush segment with round caps (a capsule) in its bounding box: (top, left, bool patch).

    Pixel (row, col) is painted when its centre (col, row) lies within ``brush / 2`` of the segment
    from (x1, y1) to (x2, y2). Plain numpy on the bounding box: exact and cheap.
    """
    r = brush / 2.0
    left, top = max(0, math.floor(min(x1, x2) - r)), max(0, math.floor(min(y1, y2) - r))
    right, bottom = min(width, math.ceil(max(x1, x2) + r) + 1), min(height, math.ceil(max(y1, y2) + r) + 1)
    ys = np.arange(top, bottom, dtype=np.float64)[:, None]
    xs = np.arange(left, right, dtype=np.float64)[None, :]
    dx, dy = x2 - x1, y2 - y1
    length2 = dx * dx + dy * dy
    t = np.zeros((1, 1)) if length2 == 0 else np.clip(((xs - x1) * dx + (ys - y1) * dy) / length2, 0.0, 1.0)
    dist2 = (xs - (x1 + t * dx)) ** 2 + (ys - (y1 + t * dy)) ** 2
    return top, left, dist2 <= r * r


def _blob(rng: np.random.Generator, height: int, width: int, side: int) -> np.ndarray:
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    radius = side * rng.uniform(0.05, 0.18)
    theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    wobble = np.ones_like(theta)
    for k in (2, 3, 5):
        wobble += rng.uniform(0.0, 0.25) * np.sin(k * theta + rng.uniform(0, 2 * math.pi))
    pts = [
        (float(cx + radius * w * math.cos(t)), float(cy + radius * w * math.sin(t)))
        for t, w in zip(theta, wobble, strict=True)
    ]
    layer = Image.new("L", (width, height), 0)
    ImageDraw.Draw(layer).polygon(pts, fill=255)
    return np.asarray(layer) > 127


def _box(rng: np.random.Generator, height: int, width: int, side: int) -> np.ndarray:
    bh, bw = side * rng.uniform(0.08, 0.3), side * rng.uniform(0.08, 0.3)
    top, left = rng.uniform(0, max(1.0, height - bh)), rng.uniform(0, max(1.0, width - bw))
    layer = np.zeros((height, width), dtype=bool)
    layer[int(top) : int(top + bh), int(left) : int(left + bw)] = True
    return layer


# --- ratios and buckets -------------------------------------------------------------------------


def hole_ratio(hole_mask: torch.Tensor | np.ndarray) -> float:
    """Share of pixels to fill, in [0, 1]."""
    arr = hole_mask.numpy() if isinstance(hole_mask, torch.Tensor) else np.asarray(hole_mask)
    return float(np.count_nonzero(arr > 0.5)) / arr.size


def bucket_label(lo: int, hi: int) -> str:
    return f"{lo}-{hi}%"


def bucket_of(hole_pixels: int, total_pixels: int, scheme: str = "paper") -> str | None:
    """Bucket label of a mask with ``hole_pixels`` of ``total_pixels`` holes, or None if out of range.

    Buckets are (lo, hi] in percent, the first one [0, hi]; exact integer comparison
    (``100 * k <= hi * N``), so 20% exactly is in "0-20%" and 20% + 1 pixel in "20-40%".
    """
    if scheme not in BUCKET_SCHEMES:
        raise ValueError(f"bucket scheme must be one of {tuple(BUCKET_SCHEMES)}, got {scheme!r}")
    k, n = int(hole_pixels), int(total_pixels)
    for i, (lo, hi) in enumerate(BUCKET_SCHEMES[scheme]):
        above_lo = 100 * k >= lo * n if i == 0 else 100 * k > lo * n
        if above_lo and 100 * k <= hi * n:
            return bucket_label(lo, hi)
    return None


def _mask_pixels(path: Path, size: int | None) -> tuple[int, int]:
    """(hole pixels, total pixels) of a mask file, after a nearest resize to size x size if given."""
    from .conventions import hole_mask_from_uint8
    from .data import resize_hole_mask

    hole = hole_mask_from_uint8(read_mask_uint8(path))
    if size:
        hole = resize_hole_mask(hole, size, size)
    return int(torch.count_nonzero(hole > 0.5)), hole.shape[-1] * hole.shape[-2]


def _progress(items: Sequence, desc: str, progress: bool):
    """``items`` wrapped in a tqdm bar on stderr when ``progress`` and there is more than one."""
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", disable=not progress or len(items) < 2, file=sys.stderr)


def bucket_masks(
    folder: str | os.PathLike, scheme: str = "paper", size: int | None = 256, progress: bool = False,
    skipped: dict[str, str] | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Sort a mask folder into hole-ratio buckets.

    Args:
        folder: mask folder (white = fill), searched recursively.
        scheme: "paper" (0-20/20-40/40-60%) or "10" (10% steps).
        size: measure the ratio after a nearest resize to size x size (what evaluation sees); None =
            at the file's own size.
        progress: show a progress bar (stderr).
        skipped: when given, a mask that cannot be read is left out and added here (``{path: reason}``);
            otherwise it is an error. Left out are unreadable files only: an empty mask is measured.

    Returns:
        ``{label: [(relative path, ratio), ...]}`` for every bucket of the scheme (possibly empty),
        plus ``"out of range"`` for masks outside all buckets.
    """
    folder = Path(folder)
    result: dict[str, list[tuple[str, float]]] = {
        bucket_label(lo, hi): [] for lo, hi in BUCKET_SCHEMES[scheme]
    }
    result["out of range"] = []
    for path in _progress(list_images(folder, what="mask folder"), "measuring masks", progress):
        try:
            k, n = _mask_pixels(path, size)
        except (ValueError, OSError) as exc:
            if skipped is None:
                raise
            skipped[str(path)] = str(exc)
            continue
        label = bucket_of(k, n, scheme) or "out of range"
        result[label].append((path.relative_to(folder).as_posix(), k / n))
    return result


def check_json_output(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, a JSON output that is not named ``.json`` (it would write over an image
    given by mistake) or that exists without ``overwrite``."""
    if path.suffix.lower() != ".json":
        raise ValueError(f"--out {path} should end in .json")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def write_generated_masks(
    out_dir: str | os.PathLike,
    count: int,
    ratio_range: tuple[float, float],
    size: int = 256,
    seed: int = 0,
    kinds: tuple[str, ...] = MASK_KINDS,
    prefix: str = "mask",
    overwrite: bool = False,
    progress: bool = False,
    ratios: list[float] | None = None,
) -> list[Path]:
    """Write ``count`` generated masks as PNGs (white = fill) named ``{prefix}_{i:05d}.png``; files of those
    names already there are refused unless ``overwrite`` (masks that a pair list's checksums name, say).
    ``progress`` shows a bar (stderr); each mask's hole ratio is appended to ``ratios`` when given."""
    from .files import write_bytes_atomic

    if count < 1:
        raise ValueError(f"the number of masks (--count) must be >= 1, got {count}")
    if size < 1:
        raise ValueError(f"the mask side (--size) must be >= 1 pixel, got {size}")
    gen = IrregularMaskGenerator(ratio_range, kinds)  # checks the ratio range and kinds before writing anything
    out = Path(out_dir)
    names = [out / f"{prefix}_{i:05d}.png" for i in range(count)]
    existing = [p for p in names if p.exists()]
    if existing and not overwrite:
        which = f"{existing[0]} and {len(existing) - 1} more already exist" if len(existing) > 1 else \
            f"{existing[0]} already exists"
        raise FileExistsError(f"{which}; pass --overwrite to replace them, or choose another --out or --prefix")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, path in enumerate(_progress(names, "writing masks", progress)):
        arr = gen.generate(np.random.default_rng((seed, i)), size, size)
        write_bytes_atomic(path, _png_bytes(hole_mask_to_uint8(torch.from_numpy(arr.astype(np.float32)))))
        paths.append(path)
        if ratios is not None:
            ratios.append(hole_ratio(arr))
    return paths


def _png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# --- evaluation lists ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPair:
    """One evaluation pair with absolute paths; ``hole_ratio`` is measured at the list's ``size``."""

    image: Path
    mask: Path
    hole_ratio: float
    bucket: str | None


def entries_sha256(entries: Sequence[dict]) -> str:
    """Hash of the entries: sha256 of their canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(
        json.dumps(list(entries), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _relative_to(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def mask_problem(path: Path, size: int | None) -> tuple[tuple[int, int] | None, str | None]:
    """``((hole pixels, total pixels), None)`` for a mask an evaluation can use, ``(None, reason)`` for one it
    cannot: unreadable, or with no hole pixel or no kept pixel at ``size`` x ``size`` (None = its own size)."""
    try:
        k, n = _mask_pixels(path, size)
    except (ValueError, OSError) as exc:
        return None, str(exc)
    at = f" at {size}x{size}" if size else ""
    if k == 0:
        return None, f"mask {path} has no hole pixel{at}: nothing to fill (white = fill)"
    if k == n:
        return None, f"mask {path} has no kept pixel{at}: all white, nothing to keep (white = fill)"
    return (k, n), None


def image_problem(path: Path) -> str | None:
    """None for an image that reads (:func:`ctsdg.data.read_image`), else the reason."""
    from .data import read_image

    try:
        read_image(path)
    except (ValueError, OSError) as exc:
        return str(exc)
    return None


def make_eval_pairs(
    image_root: str | os.PathLike,
    mask_root: str | os.PathLike,
    out_file: str | os.PathLike,
    scheme: str = "paper",
    size: int | None = 256,
    per_bucket: int | None = None,
    count: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    skipped: dict[str, str] | None = None,
) -> dict:
    """Write a fixed, checksummed evaluation list pairing images with masks (a ``.json`` file; an existing
    one is refused unless ``overwrite``: results were scored against it).

    Images and masks are taken in sorted order. Without ``per_bucket``: image i gets mask
    ``i % n_masks`` (the official test pairing), for ``count`` images (default: all). With
    ``per_bucket=K``: for each bucket of ``scheme``, K pairs using that bucket's masks in order
    (cycled) and the next images in order (cycled). Masks outside every bucket are not used.

    Files an evaluation could not use are left out (the good ones keep their order): images that do not
    read (:func:`image_problem`; only as many images are read as the list needs) and masks that do not
    read or have no hole pixel or no kept pixel at ``size`` (:func:`mask_problem`). They are added to
    ``skipped`` (``{path: reason}``) when given; when no good image or mask remains it is an error.
    ``progress`` shows a bar (stderr) while the files are read.

    The file (JSON) is ``{"format", "scheme", "size", "image_root", "mask_root", "count",
    "list_sha256", "entries": [{"image", "mask", "image_sha256", "mask_sha256", "hole_ratio",
    "bucket"}, ...]}``; roots are relative to the list file's folder, entry paths relative to the
    roots, ``list_sha256`` is :func:`entries_sha256` of the entries.
    """
    for flag, value in (("--per-bucket", per_bucket), ("--count", count)):
        if value is not None and int(value) < 1:  # a list of no pairs is not an evaluation
            raise ValueError(f"{flag} (pairs) must be >= 1, got {value}")
    image_root, mask_root, out_file = Path(image_root), Path(mask_root), Path(out_file)
    check_json_output(out_file, overwrite)
    skipped = {} if skipped is None else skipped
    all_images = list_images(image_root)
    measured: dict[Path, tuple[int, int]] = {}
    for m in _progress(list_images(mask_root, what="mask folder"), "reading masks", progress):
        pixels, reason = mask_problem(m, size)
        if reason is None:
            measured[m] = pixels
        else:
            skipped[str(m)] = reason
    if not measured:
        raise ValueError(f"no mask in {mask_root} can be used ({len(skipped)} skipped, e.g. "
                         f"{next(iter(skipped.values()))}); run `ctsdg data check --masks {mask_root}`")
    masks = list(measured)
    if per_bucket is None:
        n = len(all_images) if count is None else int(count)  # by default one pair per good image, below
    else:
        by_bucket: dict[str, list[Path]] = {bucket_label(lo, hi): [] for lo, hi in BUCKET_SCHEMES[scheme]}
        for m in masks:
            label = bucket_of(*measured[m], scheme)
            if label is not None:
                by_bucket[label].append(m)
        empty = [label for label, ms in by_bucket.items() if not ms]
        if empty:
            raise ValueError(
                f"no masks in {mask_root} fall in bucket(s) {', '.join(empty)}; generate some with "
                "`ctsdg data masks --ratio LOW HIGH`"
            )
        n = len(by_bucket) * int(per_bucket)
    images: list[Path] = []  # the first good images, as many as the pairs need
    bad_images: dict[str, str] = {}
    bar = _progress(all_images, "reading images", progress)
    for image in bar:
        reason = image_problem(image)
        if reason is not None:
            bad_images[str(image)] = reason
            continue
        images.append(image)
        if len(images) == n:
            break
    bar.close()
    skipped.update(bad_images)
    if not images:
        raise ValueError(f"no image in {image_root} can be read ({len(bad_images)} skipped, e.g. "
                         f"{next(iter(bad_images.values()))}); run `ctsdg data check --images {image_root}`")
    pairs: list[tuple[Path, Path]] = []
    if per_bucket is None:
        n = len(images) if count is None else n
        pairs = [(images[i % len(images)], masks[i % len(masks)]) for i in range(n)]
    else:
        j = 0
        for ms in by_bucket.values():
            for i in range(int(per_bucket)):
                pairs.append((images[j % len(images)], ms[i % len(ms)]))
                j += 1
    hashes: dict[Path, str] = {}
    entries = []
    for image, mask in pairs:
        for p in (image, mask):
            if p not in hashes:
                hashes[p] = file_sha256(p)
        k, n = measured[mask]
        entries.append(
            {
                "image": image.relative_to(image_root).as_posix(),
                "mask": mask.relative_to(mask_root).as_posix(),
                "image_sha256": hashes[image],
                "mask_sha256": hashes[mask],
                "hole_ratio": round(k / n, 6),
                "bucket": bucket_of(k, n, scheme),
            }
        )
    base = out_file.parent if str(out_file.parent) else Path(".")
    payload = {
        "format": EVAL_PAIRS_FORMAT,
        "scheme": scheme,
        "size": size,
        "image_root": _relative_to(image_root, base),
        "mask_root": _relative_to(mask_root, base),
        "count": len(entries),
        "list_sha256": entries_sha256(entries),
        "entries": entries,
    }
    from .files import write_bytes_atomic

    write_bytes_atomic(out_file, (json.dumps(payload, indent=1) + "\n").encode())
    return payload


def load_eval_pairs(
    list_file: str | os.PathLike,
    verify: bool = True,
    image_root: str | os.PathLike | None = None,
    mask_root: str | os.PathLike | None = None,
) -> list[EvalPair]:
    """Read an evaluation list written by :func:`make_eval_pairs`, checking its checksums.

    Args:
        list_file: the JSON list.
        verify: check ``list_sha256`` and every file's sha256 (default). The list hash is always checked.
        image_root, mask_root: override the roots stored in the list (relative to the list's folder).

    Raises:
        ValueError: wrong format, edited entries (list hash) or a file whose sha256 differs.
        FileNotFoundError: the list or a listed file is missing.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"evaluation list {list_file} not found; create it with `ctsdg data pairs`")
    make = "make one with `ctsdg data pairs --images DIR --masks DIR --out LIST.json`"
    try:
        payload = json.loads(list_file.read_bytes())
    except UnicodeDecodeError as exc:  # a picture given by mistake
        raise ValueError(f"evaluation list {list_file} is not a JSON text file; give the list that "
                         f"`ctsdg data pairs --out` wrote, or {make}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"evaluation list {list_file} is not valid JSON ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != EVAL_PAIRS_FORMAT:
        found = f"format {payload.get('format')!r}" if isinstance(payload, dict) else \
            f"a JSON {type(payload).__name__}, not an object"
        raise ValueError(
            f"{list_file} is not a ctsdg evaluation list ({found}, expected {EVAL_PAIRS_FORMAT!r}); {make}"
        )
    try:
        return _pairs_of(payload, list_file, verify, image_root, mask_root)
    except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong type
        raise ValueError(f"evaluation list {list_file} is damaged ({type(exc).__name__}: {exc}); "
                         "re-create it with `ctsdg data pairs`") from exc


def _pairs_of(payload: dict, list_file: Path, verify: bool, image_root: str | os.PathLike | None,
              mask_root: str | os.PathLike | None) -> list[EvalPair]:
    entries = payload["entries"]
    if entries_sha256(entries) != payload["list_sha256"]:
        raise ValueError(
            f"the entries of {list_file} do not match its list_sha256: the list was edited; "
            "re-create it with `ctsdg data pairs`"
        )
    base = list_file.parent
    iroot = Path(image_root) if image_root is not None else base / payload["image_root"]
    mroot = Path(mask_root) if mask_root is not None else base / payload["mask_root"]
    pairs = []
    checked: dict[Path, str] = {}
    for e in entries:
        image, mask = iroot / e["image"], mroot / e["mask"]
        if verify:
            for p, want in ((image, e["image_sha256"]), (mask, e["mask_sha256"])):
                if not p.is_file():
                    raise FileNotFoundError(
                        f"{p} (listed in {list_file}) is missing; pass the right image/mask root"
                    )
                if p not in checked:
                    checked[p] = file_sha256(p)
                if checked[p] != want:
                    raise ValueError(
                        f"{p} does not match its sha256 in {list_file}: the file changed since the "
                        "list was made; restore it or re-create the list"
                    )
        pairs.append(EvalPair(image, mask, float(e["hole_ratio"]), e["bucket"]))
    return pairs


def unusable_pair_files(pairs: Sequence[EvalPair], size: int | None, progress: bool = False) -> dict[str, str]:
    """``{path: reason}`` for the files of ``pairs`` that an evaluation cannot use: what
    :func:`make_eval_pairs` leaves out (lists made by earlier versions may hold them). Each file is read once."""
    files = list(dict.fromkeys([(p.image, False) for p in pairs] + [(p.mask, True) for p in pairs]))
    bad: dict[str, str] = {}
    for path, is_mask in _progress(files, "reading files", progress):
        reason = mask_problem(path, size)[1] if is_mask else image_problem(path)
        if reason is not None:
            bad[str(path)] = reason
    return bad
