"""fp32 products emulated with three bf16 products ("bf16x3"), against plain fp32 (issue 7, docs/speed_history.md,
"A sixth look").

A probe of an idea that is not in the package. On CPUs with AMX, oneDNN runs bf16 products about 8×
faster than fp32 ones. A float32 x splits exactly into x_hi + x_lo + r with x_hi = bf16(x),
x_lo = bf16(x - x_hi) and |r| ≤ 2⁻¹⁶|x|, so x·w ≈ x_hi·w_hi + x_hi·w_lo + x_lo·w_hi needs three bf16
products with float32 accumulation and a float32 result. Eager PyTorch has no bf16 product with a
float32 output on CPU (bf16 in gives bf16 out; ``torch.mm(..., out_dtype=...)`` has no CPU kernel), but
oneDNN's "bf16 fpmath" mode (``torch.backends.mkldnn.{conv,matmul}.fp32_precision = "bf16"``) takes
float32 tensors, computes in bf16 and returns float32, which is exact for operands that are already
bf16 values. This script times, for one of the generator's 3×3 layers and one matrix product of its
shape, plain fp32, the fpmath mode on its own (one inexact pass), and the three-product split (as three
calls, and stacked into one call with three times the depth), with each one's max abs error against a
float64 computation.

    .venv/bin/python bench/split_bf16_probe.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ctsdg import cpu


def best_ms(fn, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t = hi + lo + r, hi and lo float32 tensors holding bf16 values, |r| ≤ 2⁻¹⁶|t|."""
    hi = t.bfloat16().float()
    return hi, (t - hi).bfloat16().float()


def report(name: str, gflop: float, ref: torch.Tensor, variants: dict) -> None:
    for label, (fn, precision) in variants.items():
        torch.backends.mkldnn.conv.fp32_precision = torch.backends.mkldnn.matmul.fp32_precision = precision
        try:
            ms = best_ms(fn)
            err = (fn().double() - ref).abs().max().item()
        finally:
            torch.backends.mkldnn.conv.fp32_precision = torch.backends.mkldnn.matmul.fp32_precision = "none"
        print(f"| {name} | {label} | {ms:.1f} | {gflop / ms * 1e3:.0f} | {err:.1e} |")


def main() -> None:
    cpu.apply_defaults()
    torch.manual_seed(0)
    print(f"# {torch.get_num_threads()} threads, bf16 instructions: {cpu.bf16_allowed()}")
    print("| product | form | best ms | GFLOP/s (fp32 equivalent) | max abs error |")
    print("|---|---|---|---|---|")
    x = torch.randn(1, 128, 128, 128).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3) * 0.03
    ref = F.conv2d(x.double(), w.double(), padding=1)
    (xh, xl), (wh, wl) = split(x), split(w)
    xh, xl = (t.contiguous(memory_format=torch.channels_last) for t in (xh, xl))
    x3 = torch.cat([xh, xh, xl], 1).contiguous(memory_format=torch.channels_last)
    w3 = torch.cat([wh, wl, wh], 1)
    conv = lambda a, b: F.conv2d(a, b, padding=1)  # noqa: E731
    report("3×3 conv 128→128 at 128²", 2 * 128 * 128 * 9 * 128 * 128 / 1e9, ref, {
        "fp32": (lambda: conv(x, w), "none"),
        "bf16 fpmath, one pass": (lambda: conv(x, w), "bf16"),
        "bf16x3, three calls": (lambda: conv(xh, wh) + conv(xh, wl) + conv(xl, wh), "bf16"),
        "bf16x3, one call, 3× deep": (lambda: conv(x3, w3), "bf16"),
    })
    a, b = torch.randn(4096, 1152), torch.randn(1152, 128) * 0.03
    ref = a.double() @ b.double()
    (ah, al), (bh, bl) = split(a), split(b)
    report("matrix product 4096×1152×128", 2 * 4096 * 1152 * 128 / 1e9, ref, {
        "fp32": (lambda: a @ b, "none"),
        "bf16 fpmath, one pass": (lambda: a @ b, "bf16"),
        "bf16x3, three calls": (lambda: ah @ bh + ah @ bl + al @ bh, "bf16"),
        "bf16 in and out (autocast's kind)": (lambda: (a.bfloat16() @ b.bfloat16()).float(), "none"),
    })


if __name__ == "__main__":
    main()
