"""Would Winograd convolutions pay here? (issue 7, docs/speed.md "Where the time goes at 256²")

Times oneDNN's direct 3×3 convolution against F(4×4, 3×3) Winograd written in eager PyTorch (tiles
gathered with one copy, input and output transforms as products with the 36×36 and 16×36 Kronecker
matrices, 36 batched channel products) on the generator's largest convolutions, and prints the max
abs error of each against a float64 convolution. Not used by ctsdg: see the doc for why.

    .venv/bin/python bench/winograd_probe.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ctsdg import cpu

# F(4×4, 3×3) with interpolation points 0, ±1, ±2, ∞ (Lavin & Gray 2016)
B_T = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
A_T = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                   dtype=torch.float64)
INPUT_TRANSFORM = torch.kron(B_T, B_T).float()  # (36, 36): vec(Bᵀ d B) for a 6×6 tile d
OUTPUT_TRANSFORM = torch.kron(A_T, A_T).float()  # (16, 36): vec(Aᵀ m A), the 4×4 output tile

# (in channels, out channels, side) of the generator's costliest 3×3 convolutions at a 512² input
SHAPES = [(128, 128, 512), (66, 64, 512), (192, 64, 256), (768, 256, 64), (1024, 512, 32), (128, 128, 256)]


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> (36, C, K): G g Gᵀ per (out, in) channel pair."""
    u = torch.einsum("ai,kcij,bj->abck", G, weight.double(), G)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3×3 convolution, padding 1, of a channels-last x (N, C, H, W) with the transformed weight u."""
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = -(-h // 4), -(-w // 4)
    xp = F.pad(x, (1, 1 + 4 * tw - w, 1, 1 + 4 * th - h)).contiguous(memory_format=torch.channels_last)
    sn, sc, sh, sw = xp.stride()
    tiles = xp.as_strided((6, 6, n, th, tw, c), (sh, sw, sn, 4 * sh, 4 * sw, sc))
    v = torch.mm(INPUT_TRANSFORM, tiles.reshape(36, -1)).view(36, n * th * tw, c)
    m = torch.bmm(v, u)  # (36, tiles, K): one channel product per transformed tile position
    y = torch.mm(OUTPUT_TRANSFORM, m.view(36, -1)).view(4, 4, n, th, tw, k)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, 4 * th, 4 * tw, k)[:, :h, :w].permute(0, 3, 1, 2)
    return y + bias.view(1, -1, 1, 1)


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
    print("| conv (in→out, side) | oneDNN direct ms | Winograd F(4×4,3×3) ms | max abs error direct | max abs error Winograd |")
    print("|---|---|---|---|---|")
    for c, k, side in SHAPES:
        x = torch.randn(1, c, side, side).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5
        bias = torch.randn(k)
        u = transform_weight(weight)
        exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
        err_direct = (F.conv2d(x, weight, bias, padding=1).double() - exact).abs().max().item()
        err_wino = (winograd_conv3x3(x, u, bias).double() - exact).abs().max().item()
        direct = best_ms(args.repeats, F.conv2d, x, weight, bias, padding=1)
        wino = best_ms(args.repeats, winograd_conv3x3, x, u, bias)
        print(f"| {c}→{k}, {side}² | {direct:.1f} | {wino:.1f} | {err_direct:.1e} | {err_wino:.1e} |", flush=True)


if __name__ == "__main__":
    main()
