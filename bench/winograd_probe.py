"""Winograd against oneDNN's direct convolution, layer by layer (issue 7, docs/speed.md).

Times ``ctsdg.winograd.conv3x3`` (F(4×4, 3×3) in eager PyTorch: tiles gathered with one copy, input
and output transforms as products with the 36×36 and 16×36 Kronecker matrices, 36 batched channel
products, in bands of tile rows) against ``F.conv2d`` on the generator's costliest 3×3 layers, with
the max abs error of each against a float64 convolution, and whether ``winograd.applies`` takes
Winograd for that layer in the fast path.

    .venv/bin/python bench/winograd_probe.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ctsdg import cpu, winograd

# (in channels, out channels, side) of the generator's costliest 3×3 convolutions at 256² and 512² inputs
SHAPES = [(128, 128, 512), (66, 64, 512), (192, 64, 256), (768, 256, 64), (1024, 512, 32), (128, 128, 256),
          (384, 128, 64), (1024, 512, 16)]


def best_ms(repeats: int, fn, *args, **kwargs) -> float:
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cpu.apply_defaults()
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, best of {args.repeats}")
    print("| conv (in→out, side) | oneDNN direct ms | Winograd F(4×4,3×3) ms | max abs error direct | "
          "max abs error Winograd | used by the fast path |")
    print("|---|---|---|---|---|---|")
    for c, k, side in SHAPES:
        x = torch.randn(1, c, side, side).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5
        bias = torch.randn(k)
        u = winograd.transform_weight(weight)
        exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
        err_direct = (F.conv2d(x, weight, bias, padding=1).double() - exact).abs().max().item()
        err_wino = (winograd.conv3x3(x, u, bias).double() - exact).abs().max().item()
        direct = best_ms(args.repeats, F.conv2d, x, weight, bias, padding=1)
        wino = best_ms(args.repeats, winograd.conv3x3, x, u, bias)
        with torch.no_grad():
            used = "yes" if winograd.applies(x, weight, 1, 1) else "no"
        print(f"| {c}→{k}, {side}² | {direct:.1f} | {wino:.1f} | {err_direct:.1e} | {err_wino:.1e} | {used} |",
              flush=True)


if __name__ == "__main__":
    main()
