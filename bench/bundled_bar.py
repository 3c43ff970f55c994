"""Issue 5's bar, set by set: does the bundled model beat Telea and Navier–Stokes on PSNR, SSIM and
LPIPS, and PatchMatch on PSNR and SSIM, in the 0–20 % and 20–40 % buckets of the validation photos?

For each mask seed it builds what docs/model_card.md scores (skipping what is already in ``--out``):
the validation photos (``ctsdg data photos``, once), 10 masks per bucket (``ctsdg data masks --seed S``),
the checksummed pair list (``ctsdg data pairs --scheme paper --per-bucket 10``), then ``ctsdg evaluate``
on its first 20 pairs (the bar's two buckets) as users get the model: edges from the known pixels,
Poisson blend, LPIPS-Alex. It prints one row per seed and line of the bar, the model's number against
the best of the baselines it must beat, and the lines passed per seed and over the seeds' mean.
``ctsdg evaluate``'s caches make a re-run score only what changed (another ``--adapt``, another model).

    .venv/bin/python bench/bundled_bar.py --out runs/bar --seeds 9 10 11 12
    .venv/bin/python bench/bundled_bar.py --out runs/bar --seeds 9 10 11 12 --adapt 60 --adapt-perceptual 20

Time on 2 CPU cores: about 1.5 min per seed for the baselines (once), seconds for the model, and about
95 s a picture (32 min a seed) with ``--adapt 60 --adapt-perceptual 20``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

BUCKETS = ("0-20%", "20-40%")
MASK_BUCKETS = (("a", "0.02", "0.2"), ("b", "0.2", "0.4"), ("c", "0.4", "0.6"))  # 10 masks each
#: the bar's lines: metric, whether higher is better, the baselines to beat
LINES = (("psnr", True, ("telea", "ns", "patchmatch")), ("ssim", True, ("telea", "ns", "patchmatch")),
         ("lpips_alex", False, ("telea", "ns")))
BASELINES = ("telea", "ns", "patchmatch")


def cli(*args: str) -> None:
    from ctsdg.cli import main

    if main([str(a) for a in args]) != 0:
        raise SystemExit(f"ctsdg {' '.join(map(str, args))} failed")


def prepare(out: Path, seed: int) -> Path:
    """The pair list of one mask seed (photos, masks and list written once)."""
    photos = out / "photos"
    if not (photos / "val").is_dir():
        cli("data", "photos", "--out", photos)
    masks = out / f"masks{seed}"
    for prefix, low, high in MASK_BUCKETS:
        if not any(masks.glob(f"bucket_{prefix}_*.png")):
            cli("data", "masks", "--out", masks, "--count", 10, "--ratio", low, high, "--seed", seed,
                "--prefix", f"bucket_{prefix}")
    pairs = out / f"pairs{seed}.json"
    if not pairs.exists():
        cli("data", "pairs", "--images", photos / "val", "--masks", masks, "--out", pairs, "--scheme", "paper",
            "--size", 256, "--per-bucket", 10)
    return pairs


def read_summary(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {bucket: {metric: mean}}} from ``ctsdg evaluate``'s summary.csv (paper buckets)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["scheme"] == "paper" and row["bucket"] in BUCKETS and row["n"] not in ("", "0"):
                table.setdefault(row["method"], {})[row["bucket"]] = {
                    metric: float(row[metric]) for metric, _, _ in LINES}
    return table


def bar_lines(table: dict, model: str) -> list[tuple[str, str, float, float, str, bool]]:
    """(bucket, metric, the model's mean, the best rival's, its name, passed) for the bar's 6 lines."""
    rows = []
    for bucket in BUCKETS:
        for metric, higher, rivals in LINES:
            scores = {name: table[name][bucket][metric] for name in rivals}
            best = (max if higher else min)(scores, key=scores.get)
            ours = table[model][bucket][metric]
            passed = ours > scores[best] if higher else ours < scores[best]
            rows.append((bucket, metric, ours, scores[best], best, passed))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="work folder: photos, masks, pair lists, reports")
    p.add_argument("--seeds", type=int, nargs="+", default=[9, 10, 11, 12], help="mask seeds (default 9 10 11 12)")
    p.add_argument("--checkpoint", default="small", help="the model (default: the bundled one)")
    p.add_argument("--adapt", type=int, default=0, help="ctsdg evaluate --adapt STEPS (default 0)")
    p.add_argument("--adapt-perceptual", type=float, default=0.0, help="ctsdg evaluate --adapt-perceptual")
    p.add_argument("--limit", type=int, default=20, help="pairs scored per seed (default 20: both buckets)")
    args = p.parse_args(argv)

    label = "model" + (f"-adapt{args.adapt}" if args.adapt else "") + (
        f"-perceptual{args.adapt_perceptual:g}" if args.adapt_perceptual else "")
    per_seed = {}
    for seed in args.seeds:
        pairs = prepare(args.out, seed)
        report = args.out / f"report{seed}"
        cli("evaluate", "--list", pairs, "--out", report, "--limit", args.limit, "--lpips", "alex", "--no-fid",
            "--edges", "known", "--examples", 0, "--adapt", args.adapt, "--adapt-perceptual", args.adapt_perceptual,
            f"{label}={args.checkpoint}@poisson", *BASELINES)
        per_seed[seed] = read_summary(report / "summary.csv")
    pooled = {name: {bucket: {metric: statistics.mean(t[name][bucket][metric] for t in per_seed.values())
                              for metric, _, _ in LINES} for bucket in BUCKETS}
              for name in (label, *BASELINES)}

    print(f"\n# issue 5's bar: {label} = {args.checkpoint}, Poisson blend, edges from known pixels, "
          f"{args.limit} pairs a seed\n")
    print("| seed | bucket | metric | model | best rival | rival | passed |")
    print("|---|---|---|---|---|---|---|")
    totals = []
    for name, table in [*((str(s), t) for s, t in per_seed.items()), ("mean", pooled)]:
        lines = bar_lines(table, label)
        totals.append(f"{name}: {sum(r[-1] for r in lines)} of 6")
        for bucket, metric, ours, best, rival, passed in lines:
            digits = 4 if metric != "psnr" else 2
            print(f"| {name} | {bucket} | {metric} | {ours:.{digits}f} | {best:.{digits}f} | {rival} | "
                  f"{'yes' if passed else 'no'} |")
    print("\nlines passed: " + "; ".join(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
