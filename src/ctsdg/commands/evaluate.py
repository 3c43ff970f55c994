"""``ctsdg evaluate``: PSNR / SSIM / L1 / LPIPS / FID by hole-ratio bucket over a checksummed pair list,
for checkpoints, folders of predictions and classical baselines side by side (docs/evaluation.md).

Examples::

    ctsdg evaluate --list data/val_pairs.json --out runs/eval patchmatch telea ns biharmonic
    ctsdg evaluate --list data/val_pairs.json --out runs/eval ours=runs/exp/last.safetensors
    ctsdg evaluate --list data/val_pairs.json --out runs/eval theirs=path/to/predictions/
    ctsdg evaluate --list data/val_pairs.json --out runs/eval raw=small@none seamless=small@poisson
    torchrun --nproc_per_node 4 -m ctsdg.cli evaluate --list places2_pairs.json --out runs/eval ckpt.pt
"""

from __future__ import annotations

import argparse

from . import adapt_setting, add_adapt_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score checkpoints, prediction folders and baselines by hole-ratio bucket (paper Table 1)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("methods", nargs="+", metavar="METHOD",
                        help="[LABEL=]SPEC[@BLEND]; SPEC is a baseline (patchmatch, telea, ns, biharmonic), a "
                             "folder of predictions named 00000.png, 00001.png, ... by pair index, a checkpoint "
                             "file, or small (the bundled model); @poisson or @none sets that model's blend")
    parser.add_argument("--list", required=True, dest="list_file",
                        help="evaluation pair list (JSON written by `ctsdg data pairs`); its checksums are verified")
    parser.add_argument("--out", required=True, help="output folder: table.md, summary.csv, per_pair.csv, "
                        "results.json, metric_vs_hole_ratio.png, examples.png, cache/")
    parser.add_argument("--size", type=int, default=256, help="evaluation size (images bilinear, masks nearest); "
                        "hole ratios and buckets are measured at this size (default 256, the paper's)")
    parser.add_argument("--style", choices=("standard", "lbam"), default="standard",
                        help="standard: scikit-image SSIM, per-image PSNR; lbam: the LBAM code the authors "
                             "used (SSIM on 0..255 with range-1 constants, PSNR from batch MSE)")
    parser.add_argument("--lpips", default="alex,vgg", help="comma-separated LPIPS backbones (alex, vgg) or 'none'")
    parser.add_argument("--fid", action=argparse.BooleanOptionalAction, default=True,
                        help="compute FID (Inception-v3 features); --no-fid skips it")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (under torchrun cuda = cuda:LOCAL_RANK)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs of the list")
    parser.add_argument("--examples", type=int, default=6, help="rows in examples.png (0 = none)")
    parser.add_argument("--pattern", default="{index:05d}.png",
                        help="file name of a prediction in a folder; fields {index} and {stem} (image stem)")
    parser.add_argument("--save-predictions", action="store_true",
                        help="also write each method's predictions to OUT/predictions/<method>/00000.png ...")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="check every listed file's sha256 (default); --no-verify checks only the list hash")
    parser.add_argument("--blend", choices=("none", "poisson"), default="none",
                        help="how models' fills are composited: none (default) pastes the raw output, as the "
                             "paper's evaluation does; poisson scores what `ctsdg inpaint` writes by default")
    parser.add_argument("--edges", choices=("full", "known"), default="full",
                        help="where the models' Canny edges come from: full (default) the whole ground-truth "
                             "picture, masked, as the paper's evaluation does; known: the known pixels only, "
                             "as `ctsdg inpaint` does (nothing of the ground truth reaches the model)")
    add_adapt_options(parser, "train a copy of each model STEPS steps on each pair's known pixels before filling "
                              "it, as `ctsdg inpaint --adapt` does (default 0: the paper's protocol)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the reports of another evaluation in --out (the same evaluation again "
                             "needs no flag: it resumes from its cache)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..distributed import init_from_env
    from ..evaluate import EvalConfig, run_evaluation

    lpips = () if args.lpips.strip().lower() in ("", "none") else tuple(n.strip() for n in args.lpips.split(","))
    device = args.device
    dist_info = init_from_env("cuda" if device.startswith("cuda") else "cpu")
    if dist_info.enabled and device == "cuda":
        device = f"cuda:{dist_info.local_rank}"
    config = EvalConfig(size=args.size, style=args.style, lpips=lpips, fid=args.fid, device=device)
    result = run_evaluation(
        args.list_file, args.methods, args.out, config, verify=args.verify, limit=args.limit,
        examples=args.examples, progress=args.progress, rank=dist_info.rank, world=dist_info.world_size,
        pattern=args.pattern, save_predictions=args.save_predictions, blend=args.blend,
        edges=args.edges, adapt=adapt_setting(args), overwrite=args.overwrite,
    )
    if result is not None:
        print(open(os.path.join(args.out, "table.md")).read())
        print(f"wrote {args.out}/table.md, summary.csv, per_pair.csv, results.json, metric_vs_hole_ratio.png"
              + (", examples.png" if args.examples > 0 else ""))
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0
