"""Winograd against oneDNN's direct convolution, layer by layer (issue 7, docs/speed.md).

Times ``ctsdg.winograd.conv3x3`` against ``F.conv2d`` on the generator's costliest 3×3 layers: F(4×4, 3×3)
with its gather and transforms in C where the package was built with them (``winograd_native.py``), and
with the eager ones (tiles gathered with one copy, input and output transforms as products with the
36×36 and 16×36 Kronecker matrices), both with 36 batched channel products in bands of tile rows. With
the max abs error of each against a float64 convolution, and whether ``winograd.applies`` takes Winograd
for that layer in the fast path.

The Winograd column is what the fast path runs: with the C kernels, the fused one-pass kernel where it
applies (``winograd.float_fused``: K a multiple of 64, a small weight, a CPU with AVX-512) and the C
transforms in bands otherwise; the "in bands" column is the C transforms in bands everywhere
(``winograd.FUSED_FLOAT = False``).

``--bf16``: the same layers under bf16 autocast in inference: oneDNN's direct bf16 convolution against
F(2×2, 3×3) in bf16 (``winograd.bf16_inference``), fused where ``winograd.bf16_fused`` says so and in bands
(``winograd.FUSED_BF16 = False``), with each one's mean absolute error over the mean absolute output of a
float64 convolution of the same bf16 input, and whether the fast path takes it.

``--bands``: the same layers' Winograd time at several band sizes (``winograd.SCRATCH_ELEMENTS`` from
2^24 down to 2^20 values per band), and the tile rows per band the default takes.

``--transform``: the input transform of one band (kron(Bᵀ, Bᵀ) times the band's tiles, the product
``winograd._input_transform`` runs) for the layers that take Winograd at 256² and 512², on 1 and 2 threads:
as one product and as two products of half the rows in one batched call (what 2 threads take for
F(4×4, 3×3)); the output transform (kron(Aᵀ, Aᵀ), 16 or 4 rows) the same two ways, which is not split.
Then, on the threads torch has, the 36-row product by its number of columns (tiles × channels), one
product against the halves round by round: where ``winograd.SPLIT_MIN_COLUMNS`` comes from.

``--training``: the layers that take Winograd with a trained weight in an fp32 training step at full
width, batch 2, 256² (``winograd.conv3x3_trained``, ``winograd.conv4x4``): forward and backward
(the input's gradient, and the weight's where the step needs it) against ``F.conv2d`` under autograd,
with the largest error of the output and the gradients relative to their largest value. Also Winograd
with its 36-row transforms (the forward's input transform, the backward's products on the tiles and on
their gradients) as one product each instead of two halves (``winograd.SPLIT_INPUT_TRANSFORM`` off),
alternating with the split round by round: the median over rounds of unsplit / split.

    .venv/bin/python bench/winograd_probe.py
    .venv/bin/python bench/winograd_probe.py --bf16
    .venv/bin/python bench/winograd_probe.py --bands
    .venv/bin/python bench/winograd_probe.py --training
    .venv/bin/python bench/winograd_probe.py --transform
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ctsdg import cpu, winograd, winograd_native

# (in channels, out channels, side) of the generator's costliest 3×3 convolutions at 256² and 512² inputs
SHAPES = [(128, 128, 512), (66, 64, 512), (192, 64, 256), (768, 256, 64), (1024, 512, 32), (128, 128, 256),
          (67, 64, 256), (192, 64, 128), (128, 64, 128), (64, 64, 128), (384, 128, 64), (1024, 512, 16)]


def _times_ms(repeats: int, warmups: int, fn, *args, **kwargs) -> list[float]:
    """``repeats`` wall times of ``fn(*args, **kwargs)`` in ms, sorted, after ``warmups`` untimed calls."""
    for _ in range(warmups):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)


def best_ms(repeats: int, fn, *args, **kwargs) -> float:
    return _times_ms(repeats, 1, fn, *args, **kwargs)[0]


# (kernel, in, out, side, weight gradient too, where) in a full-width training step, batch 2, 256²
TRAINING_SHAPES = [
    (3, 768, 256, 32, True, "decoder, 32² (×2 streams)"),
    (3, 384, 128, 64, True, "decoder, 64² (×2 streams)"),
    (3, 128, 128, 256, True, "Bi-GFF's two gates as one"),
    (3, 128, 64, 256, True, "one Bi-GFF gate, fusion layer"),
    (3, 192, 64, 128, True, "decoder, 128²"),
    (4, 256, 512, 32, True, "D's stride-1 layer, D step"),
    (4, 256, 512, 32, False, "D's stride-1 layer, G step (D frozen)"),
    (4, 64, 128, 32, True, "D's stride-1 layer at width 16"),
]


def _training_row(repeats: int, r: int, c: int, k: int, side: int, weight_grad: bool
                  ) -> tuple[float, float, float, str, bool]:
    """One layer (padding 1, as in the networks): oneDNN ms, Winograd ms, the per-round median of Winograd
    with the transforms unsplit over split (:func:`split_ratio`), relative errors, used."""
    x = torch.randn(2, c, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = (torch.randn(k, c, r, r) / (r * r * c) ** 0.5).requires_grad_(weight_grad)
    out_side = side + 3 - r
    grad = torch.randn(2, k, out_side, out_side).contiguous(memory_format=torch.channels_last)
    leaves = (x, weight) if weight_grad else (x,)

    def wino_fn(x, w):
        return winograd.conv3x3_trained(x, w) if r == 3 else winograd.conv4x4(x, w, None, 1)

    def run(fn):
        return torch.autograd.grad(fn(x, weight), leaves, grad)

    direct = best_ms(repeats, run, lambda x, w: F.conv2d(x, w, padding=1))
    wino = best_ms(repeats, run, wino_fn)
    unsplit = split_ratio(2 * repeats, run, wino_fn)
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_(weight_grad)
    exact_out = F.conv2d(x64, w64, padding=1)
    exact = (exact_out, *torch.autograd.grad(exact_out, (x64, w64) if weight_grad else (x64,), grad.double()))
    out = wino_fn(x, weight)
    got = (out, *torch.autograd.grad(out, leaves, grad))
    errors = ", ".join(f"{((a.double() - b).abs().max() / b.abs().max()).item():.1e}"
                       for a, b in zip(got, exact, strict=True))
    used = winograd.applies(x, weight, 1, 1, autograd=True) if r == 3 else winograd.applies_4x4(x, weight, 1, 1)
    return direct, wino, unsplit, errors, used


def split_ratio(rounds: int, fn, *args) -> float:
    """:func:`per_round_ratio` of ``fn(*args)`` with ``winograd.SPLIT_INPUT_TRANSFORM`` off over on; the
    knob is restored afterwards."""
    before = winograd.SPLIT_INPUT_TRANSFORM

    def with_split(value: bool):
        winograd.SPLIT_INPUT_TRANSFORM = value
        return fn(*args)

    try:
        return per_round_ratio(rounds, (with_split, False), (with_split, True))
    finally:
        winograd.SPLIT_INPUT_TRANSFORM = before


def training(repeats: int) -> None:
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 2, forward + backward, "
          f"best of {repeats}")
    print("| conv (where) | oneDNN ms | Winograd ms | unsplit / split transforms, per round | "
          "largest relative error (output, input grad, weight grad) | used in training |")
    print("|---|---|---|---|---|---|")
    for r, c, k, side, weight_grad, where in TRAINING_SHAPES:
        direct, wino, unsplit, errors, used = _training_row(repeats, r, c, k, side, weight_grad)
        print(f"| {r}×{r} {c}→{k}, {side}² ({where}) | {direct:.1f} | {wino:.1f} | {unsplit:.3f} | {errors} | "
              f"{'yes' if used else 'no'} |", flush=True)


def bands(repeats: int) -> None:
    default = winograd.SCRATCH_ELEMENTS
    exponents = (24, 23, 22, 21, 20)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, best of {repeats}; "
          f"default SCRATCH_ELEMENTS 2^{default.bit_length() - 1}")
    print("| conv (in→out, side) | " + " | ".join(f"2^{e} ms" for e in exponents) + " | tile rows per band (default) |")
    print("|---|" + "---|" * (len(exponents) + 1))
    for c, k, side in SHAPES:
        x = torch.randn(1, c, side, side).contiguous(memory_format=torch.channels_last)
        m = winograd.output_tile(x)
        u = winograd.transform_weight(torch.randn(k, c, 3, 3) / (9 * c) ** 0.5, m)
        times = []
        for e in exponents:
            winograd.SCRATCH_ELEMENTS = 1 << e
            times.append(best_ms(repeats, winograd.conv3x3, x, u))
        winograd.SCRATCH_ELEMENTS = default
        tiles = -(-side // m)
        rows = winograd._band_rows(1, tiles, c, k, tiles)
        print(f"| {c}→{k}, {side}² | " + " | ".join(f"{t:.1f}" for t in times) + f" | {rows} of {tiles} |", flush=True)


def median_ms(repeats: int, fn, *args) -> float:
    return _times_ms(repeats, 3, fn, *args)[repeats // 2]


def transform(repeats: int) -> None:
    threads = torch.get_num_threads()
    print(f"# torch {torch.__version__}, fp32, one band of tiles as `winograd._conv` makes it, median of {repeats}; "
          "'same' = the halves give the single product's numbers bit for bit")
    print("| layer (in→out, side), F(m×m, 3×3) | tiles × channels | threads | input: one product ms | "
          "input: two halves ms | same | output: one product ms | output: two halves ms |")
    print("|---|---|---|---|---|---|---|---|")
    for c, k, side in SHAPES:
        x = torch.randn(1, c, side, side)
        with torch.no_grad():
            if not winograd.applies(x, torch.empty(k, c, 3, 3), 1, 1):
                continue
        m = winograd.output_tile(x)
        t = m + 2
        tw = -(-side // m)
        rows = winograd._band_rows(1, tw, c, k, tw)
        in_transform, out_transform, _ = winograd._matrices(torch.device("cpu"), m, 3)
        tiles = torch.randn(t * t, rows * tw * c)
        prod = torch.randn(t * t, rows * tw * k)
        for n in (1, 2):
            torch.set_num_threads(n)
            one = median_ms(repeats, torch.mm, in_transform, tiles)
            two = median_ms(repeats, winograd.row_halves, in_transform, tiles)
            same = torch.equal(torch.mm(in_transform, tiles), winograd.row_halves(in_transform, tiles))
            out_one = median_ms(repeats, torch.mm, out_transform, prod)
            out_two = median_ms(repeats, winograd.row_halves, out_transform, prod)
            print(f"| {c}→{k}, {side}², m = {m} | {rows * tw} × {c} | {n} | {one:.3f} | {two:.3f} | "
                  f"{'yes' if same else 'no'} | {out_one:.3f} | {out_two:.3f} |", flush=True)
    torch.set_num_threads(threads)
    in_transform = winograd._matrices(torch.device("cpu"), 4, 3)[0]
    print(f"\n# F(4×4, 3×3)'s input transform by width, {threads} threads, per-round median of {repeats} rounds "
          f"(winograd.SPLIT_MIN_COLUMNS = {winograd.SPLIT_MIN_COLUMNS})")
    print("| columns | one product / two halves |")
    print("|---|---|")
    for columns in COLUMNS:
        tiles = torch.randn(36, columns)
        ratio = per_round_ratio(repeats, (torch.mm, in_transform, tiles), (winograd.row_halves, in_transform, tiles))
        print(f"| {columns} | {ratio:.3f} |", flush=True)


# the widths of the sweep in transform(): from below a band of the narrow layers to a band of Bi-GFF's gates
COLUMNS = (4096, 8192, 16384, 32768, 65536)


def per_round_ratio(rounds: int, first: tuple, second: tuple) -> float:
    """Median over ``rounds`` of the time of ``first[0](*first[1:])`` over that of ``second[0](*second[1:])``,
    one after the other in each round, after three untimed rounds."""
    import statistics

    ratios = []
    for i in range(rounds + 3):
        start = time.perf_counter()
        first[0](*first[1:])
        middle = time.perf_counter()
        second[0](*second[1:])
        end = time.perf_counter()
        if i >= 3:
            ratios.append((middle - start) / (end - middle))
    return statistics.median(ratios)


def _with(name: str, value, fn, *args):
    """``fn(*args)`` with ``winograd.<name>`` set to ``value``, restored afterwards."""
    setting = getattr(winograd, name)
    setattr(winograd, name, value)
    try:
        return fn(*args)
    finally:
        setattr(winograd, name, setting)


def bf16(repeats: int) -> None:
    """The ``--bf16`` table (see above)."""
    amx = winograd._cpu_with_amx()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast, batch 1, best of {repeats}"
          f"; fused kernel {'available' if winograd_native.fused_available(torch.bfloat16) else 'not available'}"
          f"{'; AMX: the fast path keeps oneDNN (bf16 Winograd is off there), timed anyway' if amx else ''}")
    print("| conv (in→out, side) | oneDNN direct bf16 ms | F(2×2, 3×3) bf16 ms (kernel) | in bands ms | "
          "mean error direct | mean error Winograd | used by the fast path |")
    print("|---|---|---|---|---|---|---|")
    for c, k, side in SHAPES:
        x = torch.randn(1, c, side, side).relu().bfloat16().contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5
        exact = F.conv2d(x.double(), weight.double(), padding=1)
        scale = exact.abs().mean().item()
        u = winograd.transform_weight(weight, 2).bfloat16()
        weight_bf16 = weight.bfloat16()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            err_direct = (F.conv2d(x, weight_bf16, padding=1).double() - exact).abs().mean().item() / scale
            err_wino = (winograd.conv3x3(x, u).double() - exact).abs().mean().item() / scale
            direct = best_ms(repeats, F.conv2d, x, weight_bf16, padding=1)
            wino = best_ms(repeats, winograd.conv3x3, x, u)
            banded = _with("FUSED_BF16", False, best_ms, repeats, winograd.conv3x3, x, u)
            kernel = "fused" if winograd.bf16_fused(c, k) else "bands"
            used = "yes" if _with("_cpu_with_amx", lambda: False, winograd.applies, x, weight, 1, 1) and not amx else "no"
        # three decimals: a small layer (16→8 at 16²) takes tens of microseconds, which one decimal shows as 0.0
        print(f"| {c}→{k}, {side}² | {direct:.3f} | {wino:.3f} ({kernel}) | {banded:.3f} | {100 * err_direct:.2f} % | "
              f"{100 * err_wino:.2f} % | {used} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--training", action="store_true", help="the layers of a training step (see above)")
    parser.add_argument("--bands", action="store_true", help="Winograd's time by band size (see above)")
    parser.add_argument("--bf16", action="store_true", help="the same layers under bf16 autocast (see above)")
    parser.add_argument("--transform", action="store_true",
                        help="the input and output transforms, one product or two halves, on 1 and 2 threads")
    args = parser.parse_args()
    cpu.apply_defaults()
    if args.transform:
        torch.manual_seed(0)
        transform(max(args.repeats, 50))
        return
    if args.training:
        training(args.repeats)
        return
    if args.bands:
        torch.manual_seed(0)
        bands(args.repeats)
        return
    if args.bf16:
        torch.manual_seed(0)
        bf16(args.repeats)
        return
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, best of {args.repeats}")
    print(f"# C transforms: {'used' if winograd.native() else 'not used (not built, or CTSDG_NATIVE=0): the eager ones in both columns'}")
    print("| conv (in→out, side) | oneDNN direct ms | Winograd ms (F(m×m, 3×3) the fast path takes there; kernel) | "
          "C transforms in bands ms | Winograd, eager transforms ms | max abs error direct | max abs error Winograd | "
          "used by the fast path |")
    print("|---|---|---|---|---|---|---|---|")
    for c, k, side in SHAPES:
        x = torch.randn(1, c, side, side).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5
        bias = torch.randn(k)
        m = winograd.output_tile(x)
        u = winograd.transform_weight(weight, m)
        exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
        err_direct = (F.conv2d(x, weight, bias, padding=1).double() - exact).abs().max().item()
        err_wino = (winograd.conv3x3(x, u, bias).double() - exact).abs().max().item()
        direct = best_ms(args.repeats, F.conv2d, x, weight, bias, padding=1)
        wino = best_ms(args.repeats, winograd.conv3x3, x, u, bias)
        banded = _with("FUSED_FLOAT", False, best_ms, args.repeats, winograd.conv3x3, x, u, bias)
        eager = _with("NATIVE", False, best_ms, args.repeats, winograd.conv3x3, x, u, bias)
        kernel = ("fused" if winograd.float_fused(c, k) else "bands") if m == 4 and winograd.native() else "eager"
        with torch.no_grad():
            used = "yes" if winograd.applies(x, weight, 1, 1) else "no"
        print(f"| {c}→{k}, {side}² | {direct:.1f} | {wino:.1f} (m = {m}; {kernel}) | {banded:.1f} | {eager:.1f} | "
              f"{err_direct:.1e} | {err_wino:.1e} | {used} |", flush=True)


if __name__ == "__main__":
    main()
