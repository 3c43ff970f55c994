"""bf16 against fp32 with trained weights (issue 7: the error of the bf16 option, stated).

Runs a trained model (default: the bundled ``ctsdg-small``) on four validation photos from
scikit-image at each size, with a rectangular hole, once in fp32 and once under bf16 autocast, and
prints the mean absolute difference of the raw network output on the [0, 1] image, over all pixels
and inside the hole (the only pixels that survive compositing), in grey levels (/255).

    .venv/bin/python bench/bf16_error.py [--sizes 256 512] [--checkpoint model.safetensors]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from skimage import data

from ctsdg import Inpainter, cpu
from ctsdg.data import center_crop, resize_bilinear

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def square(rgb: np.ndarray, size: int) -> torch.Tensor:
    """Centre square of an RGB photo, resized to size², as (3, size, size) in [0, 1]."""
    crop = center_crop(rgb, min(rgb.shape[:2]))
    return torch.from_numpy(resize_bilinear(crop, size, size).astype(np.float32) / 255.0).permute(2, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--checkpoint", default=None, help="a checkpoint or a bundled name (default: the bundled model)")
    args = parser.parse_args()
    cpu.apply_defaults()
    runs = {p: Inpainter.from_pretrained(args.checkpoint, precision=p) for p in ("fp32", "bf16")}
    print(f"# {runs['fp32'].describe().get('name', args.checkpoint or 'bundled')}, torch {torch.__version__}")
    print("| photo | size | mean abs diff, all pixels | mean abs diff, inside the hole |")
    print("|---|---|---|---|")
    for name in PHOTOS:
        for size in args.sizes:
            image = square(getattr(data, name)(), size)
            hole = torch.zeros(1, size, size)
            hole[:, size // 4:size // 2, size // 3:2 * size // 3] = 1
            out = {p: inpainter.run_network(image, hole, None) for p, inpainter in runs.items()}
            diff = (out["bf16"] - out["fp32"]).abs() * 255
            inside = diff[:, hole[0] > 0]
            print(f"| {name} | {size}² | {diff.mean().item():.2f}/255 | {inside.mean().item():.2f}/255 |", flush=True)


if __name__ == "__main__":
    main()
