"""Does grain in the fill buy LPIPS, and what does it cost in PSNR and SSIM? (issue 5, docs/model_card.md)

An experiment, not a feature. LPIPS rewards texture and our fill is smooth. This adds zero-mean noise
to the hole of saved predictions and scores them beside the predictions as they were. The noise is
high-pass white noise (the noise minus its Gaussian blur, σ = 1). Its standard deviation per channel is
``k`` times the robust (MAD) standard deviation of the picture's own high-pass residual (picture minus
its Gaussian blur, σ = 1) in a ring of known pixels around the hole (``--ring`` px). ``k = 0`` is the
prediction unchanged. The noise is seeded, so the numbers are the same on every run.

    ctsdg evaluate --list pairs.json --out report --edges known --no-fid --save-predictions small@poisson
    .venv/bin/python bench/grain_lpips.py --list pairs.json --predictions report/predictions/ctsdg-small_poisson \\
        --out grain --k 0 0.5 1

It writes ``OUT/k<k>/00000.png ...`` and ``ctsdg evaluate``'s report of all of them in ``OUT/report``
(LPIPS-Alex, PSNR, SSIM by bucket).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ctsdg import masks
from ctsdg.evaluate import EvalConfig, load_pair, run_evaluation


def add_grain(pred: np.ndarray, hole: np.ndarray, k: float, ring: int, rng: np.random.Generator) -> np.ndarray:
    """``pred`` (H, W, 3) uint8 with high-pass noise in ``hole`` (H, W) bool, ``k`` times the high-pass
    spread of the known ring around it, per channel."""
    out = pred.astype(np.float64)
    residual = out - ndimage.gaussian_filter(out, (1, 1, 0))
    band = ndimage.binary_dilation(hole, iterations=ring) & ~hole
    noise = rng.standard_normal(out.shape)
    noise -= ndimage.gaussian_filter(noise, (1, 1, 0))
    for c in range(3):
        r = residual[..., c][band]
        spread = 1.4826 * np.median(np.abs(r - np.median(r)))  # MAD: edges in the ring do not count
        out[..., c][hole] += k * spread / noise[..., c].std() * noise[..., c][hole]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", required=True, help="the pairs list the predictions were made for")
    parser.add_argument("--predictions", required=True, help="a folder of 00000.png ... at the evaluation size")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--ring", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    pairs = masks.load_eval_pairs(args.list)
    holes = [load_pair(pair, args.size)[1] > 127 for pair in pairs]
    preds = [np.asarray(Image.open(Path(args.predictions) / f"{i:05d}.png").convert("RGB")) for i in range(len(pairs))]
    out = Path(args.out)
    specs = []
    for k in args.k:
        folder = out / f"k{k:g}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i, (pred, hole) in enumerate(zip(preds, holes, strict=True)):
            Image.fromarray(add_grain(pred, hole, k, args.ring, rng)).save(folder / f"{i:05d}.png")
        specs.append(f"grain k={k:g}={folder}")
    run_evaluation(args.list, specs, out / "report", EvalConfig(size=args.size, lpips=("alex",), fid=False), progress=False)
    print((out / "report" / "table.md").read_text())


if __name__ == "__main__":
    main()
