"""Where a method wins and loses, photo by photo: its margin over the best of other methods in
``ctsdg evaluate``'s ``per_pair.csv`` files (issue 5, docs/model_card.md).

For every pair in the chosen buckets, the margin is the method's metric minus the best baseline's on
that same pair (for LPIPS lower is better, so a negative margin is a win). It prints the mean margin
and the wins per photo, worst photo first, then per bucket, over all the reports given (e.g. the same
photos with three sets of masks).

    ctsdg evaluate --list pairs9.json --out report9 --lpips alex --no-fid --edges known \\
        ctsdg-small+poisson=small@poisson telea ns          # and the same for pairs10.json, pairs11.json
    .venv/bin/python bench/per_photo.py report9/per_pair.csv report10/per_pair.csv report11/per_pair.csv \\
        --method ctsdg-small+poisson --against telea ns --metric lpips_alex
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

LOWER_IS_BETTER = {"lpips_alex", "lpips_vgg", "l1", "mse"}


def margins(files: list[str], method: str, against: list[str], metric: str, buckets: list[str]
            ) -> list[tuple[str, str, float]]:
    """(photo stem, bucket, margin) for every pair of ``buckets`` scored by ``method`` and all of
    ``against``; the margin is signed so that negative is better for ``method``."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    rows = []
    for file in files:
        pairs: dict[str, dict[str, dict]] = defaultdict(dict)
        with open(file, newline="") as f:
            for row in csv.DictReader(f):
                if row["bucket"] in buckets:
                    pairs[row["index"]][row["method"]] = row
        for scored in pairs.values():
            if method not in scored or any(name not in scored for name in against):
                continue
            best = min(sign * float(scored[name][metric]) for name in against)
            photo = Path(scored[method]["image"]).stem.split("__")[-1]
            rows.append((photo, scored[method]["bucket"], sign * float(scored[method][metric]) - best))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_pair", nargs="+", help="per_pair.csv files written by ctsdg evaluate")
    parser.add_argument("--method", required=True, help="the method's name as in the CSV")
    parser.add_argument("--against", nargs="+", required=True, help="the methods to beat; the best counts")
    parser.add_argument("--metric", default="lpips_alex")
    parser.add_argument("--buckets", nargs="+", default=["0-20%", "20-40%"])
    args = parser.parse_args()
    rows = margins(args.per_pair, args.method, args.against, args.metric, args.buckets)
    if not rows:
        raise SystemExit(f"no pair has {args.method} and all of {args.against} in {args.buckets}; "
                         "check the names in the CSV's method column")
    print(f"# {args.metric}, {args.method} against the best of {', '.join(args.against)} "
          f"(negative margin = {args.method} better), {len(rows)} pairs")
    print("| photo | pairs | mean margin | wins |")
    print("|---|---|---|---|")
    by_photo = defaultdict(list)
    for photo, _, margin in rows:
        by_photo[photo].append(margin)
    for photo, values in sorted(by_photo.items(), key=lambda kv: -statistics.mean(kv[1])):
        print(f"| {photo} | {len(values)} | {statistics.mean(values):+.4f} | {sum(v < 0 for v in values)} |")
    for bucket in args.buckets:
        values = [m for _, b, m in rows if b == bucket]
        if values:
            print(f"| all, {bucket} | {len(values)} | {statistics.mean(values):+.4f} | {sum(v < 0 for v in values)} |")


if __name__ == "__main__":
    main()
