"""``ctsdg convert``: turn a checkpoint (above all the authors' official ``.pt``) into ours.

    ctsdg convert celeba.pt celeba.safetensors
    -> celeba.safetensors                  generator + config + structure mode (loadable by every ctsdg tool)
    -> celeba.discriminator.safetensors    discriminator, for fine-tuning (skip with --no-discriminator)

    ctsdg convert small wide.safetensors --widen 2    a 2x wider model computing the same function (ctsdg/widen.py)

    ctsdg convert runs/x/checkpoints/step_0001750.pt runs/x/checkpoints/step_0002000.pt avg.safetensors
    -> avg.safetensors (+ .discriminator)  several checkpoints of one run: their uniform weight average
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official CTSDG .pt (or any checkpoint we read) into our .safetensors",
        description="Read SRC without executing pickled code (weights_only=True) and write OUT.safetensors "
                    "with the generator, its config and structure mode inside. An official checkpoint's "
                    "discriminator goes to a second file, OUT.discriminator.safetensors, for fine-tuning.",
    )
    p.add_argument("sources", nargs="+", metavar="source",
                   help="checkpoint to convert (official {'n_iter','generator','discriminator'}, ...); give several "
                        "checkpoints of one run to write their uniform weight average (checkpoint averaging, as "
                        "SWA does; docs/training.md)")
    p.add_argument("output", help="output .safetensors file")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="storage type of the weights, generator and discriminator (loading always gives fp32)")
    p.add_argument("--discriminator", action=argparse.BooleanOptionalAction, default=True,
                   help="also write the discriminator beside the output (default: yes, when present)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--widen", type=int, metavar="K",
                   help="write a K times wider model that computes the same function (Net2WiderNet, "
                        "ctsdg/widen.py), to start training a wider model from this one; its discriminator "
                        "(inside a .pt, or beside a .safetensors) is widened too")
    p.add_argument("--widen-noise", type=float, default=0.01, metavar="S",
                   help="with --widen: noise added to the copied weights, relative to each narrow weight's standard "
                        "deviation, so that the copies can learn different things (default 0.01; 0 = exact)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ctsdg.checkpoint import average_checkpoints, convert_checkpoint, load_generator

    if not str(args.output).endswith(".safetensors"):
        raise ValueError(f"output {args.output} should end in .safetensors")
    if len(args.sources) > 1:
        if args.widen is not None:
            raise ValueError("--widen takes one source; average first, then widen the average")
        written = average_checkpoints(args.sources, args.output, dtype=args.dtype,
                                      with_discriminator=args.discriminator, overwrite=args.overwrite)
    elif args.widen is not None:
        from ctsdg.widen import widen_checkpoint

        if args.dtype != "fp32" or not args.discriminator:
            raise ValueError("--widen writes fp32 files with the discriminator (for training); "
                             "leave out --dtype and --no-discriminator")
        written = widen_checkpoint(args.sources[0], args.output, args.widen, noise=args.widen_noise,
                                   overwrite=args.overwrite)
    else:
        written = convert_checkpoint(args.sources[0], args.output, dtype=args.dtype,
                                     with_discriminator=args.discriminator, overwrite=args.overwrite)
    loaded = load_generator(written[0])  # read back: proves the file is complete and loadable
    n = sum(p.numel() for p in loaded.generator.parameters())
    what = f"the average of {len(args.sources)} checkpoints, " if len(args.sources) > 1 else ""
    print(f"wrote {written[0]} (generator, {what}{n:,} parameters, {args.dtype}, structure mode "
          f"{loaded.structure_mode})", file=sys.stderr)
    if len(written) > 1:
        print(f"wrote {written[1]} (discriminator, {args.dtype}, for fine-tuning: "
              "ctsdg.checkpoint.load_discriminator_state)", file=sys.stderr)
    elif args.discriminator and len(args.sources) == 1:
        # (an average names the source without a discriminator itself, in a warning)
        print("no discriminator in the source (nor beside it); only the generator was written", file=sys.stderr)
    return 0
