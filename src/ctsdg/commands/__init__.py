"""One module per ``ctsdg`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``; below, the
adaptation options that ``inpaint``, ``evaluate`` and ``serve`` share."""

from __future__ import annotations

import argparse

#: measured on the validation photos (docs/model_card.md, "Adapting to the picture")
PERCEPTUAL_HELP = ("with --adapt: add the paper's VGG16 perceptual term at WEIGHT to the adaptation steps (20 "
                   "lowered LPIPS without costing SSIM on the validation photos; about 1.6 s a step instead of "
                   "0.9 at 256² on 2 CPU cores); needs the VGG16 weights (`ctsdg weights install`); 0 (default) = off")


def add_adapt_options(parser: argparse.ArgumentParser, steps_help: str) -> None:
    """``--adapt STEPS`` and ``--adapt-perceptual WEIGHT``."""
    parser.add_argument("--adapt", type=int, default=0, metavar="STEPS", help=steps_help)
    parser.add_argument("--adapt-perceptual", type=float, default=0.0, metavar="WEIGHT", help=PERCEPTUAL_HELP)


def adapt_setting(args: argparse.Namespace):
    """The ``adapt`` argument of ``Inpainter`` from the options: a number of steps, or an ``AdaptConfig``
    when the perceptual term is on. Raises ValueError with the fix for values that cannot mean anything."""
    from ..adapt import AdaptConfig

    if args.adapt < 0:
        raise ValueError(f"--adapt must be a number of steps >= 0 (30 is a good start), got {args.adapt}")
    if not args.adapt_perceptual >= 0:  # also NaN
        raise ValueError(f"--adapt-perceptual must be a weight >= 0 (20 is the measured one), got "
                         f"{args.adapt_perceptual}")
    if not args.adapt_perceptual:
        return args.adapt
    if not args.adapt:
        raise ValueError("--adapt-perceptual weighs a term of the adaptation steps; give their number too, "
                         "e.g. --adapt 60 --adapt-perceptual 20")
    return AdaptConfig(steps=args.adapt, perceptual_weight=args.adapt_perceptual)
