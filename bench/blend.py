"""Cost of the Poisson blend (``ctsdg.blend``) by picture size and hole ratio.

The blend is one sparse LU factorisation over the hole pixels and one solve for the three channels.
``Inpainter`` blends at the size the network ran at: the working size (256² by default) for ``crop``
and ``resize``, the picture's own size for ``original``. Masks are this package's free-form masks
(``IrregularMaskGenerator``) drawn at each side; the time is the best of ``--repeats``.

    .venv/bin/python bench/blend.py [--sides 256 512 1024 --ratios 0.1 0.3 0.5 --repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from ctsdg.blend import poisson_blend
from ctsdg.masks import IrregularMaskGenerator


def hole_of_ratio(side: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """A free-form hole covering ``ratio`` of a side² picture (within the generator's tolerance)."""
    rng = np.random.default_rng(seed)
    generator = IrregularMaskGenerator(ratio_range=(ratio, ratio))
    return torch.as_tensor(generator.generate(rng, side, side), dtype=torch.float32)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print("| side | hole ratio | hole pixels | blend s |")
    print("|---|---|---|---|")
    for side in args.sides:
        image, fill = torch.rand(3, side, side), torch.rand(3, side, side)
        for ratio in args.ratios:
            hole = hole_of_ratio(side, ratio)
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                poisson_blend(image, fill, hole)
                best = min(best, time.perf_counter() - start)
            print(f"| {side} | {hole.mean().item():.2f} | {int(hole.sum().item()):,} | {best:.3f} |", flush=True)


if __name__ == "__main__":
    main()
