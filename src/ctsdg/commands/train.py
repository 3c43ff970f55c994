r"""``ctsdg train``: train CTSDG on an image folder from a YAML preset, resume a run, or fine-tune from weights.

Examples::

    ctsdg train --config configs/small_cpu.yaml                      # start (run folder = run.out_dir)
    ctsdg train --config configs/small_cpu.yaml --resume             # continue exactly where it stopped
    ctsdg train --config configs/places2.yaml --set dataset.train_root=/data/places2 --set dataset.val_root=/data/places2
    ctsdg train --config configs/small_cpu.yaml --out-dir runs/mine --set dataset.train_root=my_photos \
        --init-from runs/small_cpu/checkpoints/step_0001000.pt     # fine-tune G, D and Adam on your photos
    torchrun --nproc_per_node 8 -m ctsdg.cli train --config configs/places2.yaml     # DDP, one GPU per process
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune CTSDG (resumable, TensorBoard, DDP via torchrun)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML preset (configs/*.yaml); with --resume RUN alone, the run's "
                        "stored config is used")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=5e-5 (repeatable; value parsed as YAML)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_OR_CHECKPOINT",
                        help="continue exactly from the newest checkpoint of run.out_dir, or of a given run "
                        "folder or checkpoint file")
    parser.add_argument("--init-from", metavar="WEIGHTS",
                        help="start at step 0 from weights: a ctsdg checkpoint, 'small' (the bundled model), or "
                        "the authors' .pt (generator + discriminator) to fine-tune on your own photos")
    parser.add_argument("--out-dir", help="run folder (same as --set run.out_dir=...)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps of this call (checkpoints "
                        "as configured; resume later with --resume)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: on)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal
    from pathlib import Path

    from ..train import train
    from ..train_checkpoint import config_from_checkpoint, resolve_resume
    from ..train_config import (
        apply_train_overrides,
        dump_yaml,
        load_train_config,
        train_config_from_dict,
        train_config_to_dict,
    )

    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1 (steps of this call), got {args.max_steps}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"run.out_dir={args.out_dir}")
    if args.config:
        config = load_train_config(args.config, overrides)
    elif args.resume and args.resume != "latest":
        path = resolve_resume(args.resume, None)
        data = train_config_to_dict(config_from_checkpoint(path))
        data["run"]["out_dir"] = str(Path(path).resolve().parent.parent)
        config = train_config_from_dict(apply_train_overrides(data, overrides))
    else:
        raise ValueError("pass --config PRESET.yaml (see configs/), or --resume RUN_FOLDER to continue a run")
    if args.print_config:
        print(dump_yaml(config), end="")
        return 0
    result = train(config, resume=args.resume, init_from=args.init_from, stop_after=args.max_steps,
                   progress=args.progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(f"stopped at step {result.step}; run folder {result.run_dir}"
          + (f"; best validation PSNR {result.best_psnr:.2f} dB" if result.best_psnr is not None else "")
          + (f"; interrupted by {result.interrupted}, checkpoint saved: continue with --resume"
             if result.interrupted else ""))
    if result.interrupted:  # the shell's convention for a signal-ended process: 128 + the signal's number
        return 128 + int(getattr(signal, result.interrupted, signal.SIGTERM))
    return 0
