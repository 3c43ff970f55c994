"""RAL forward + backward with autograd (the training path), ours against the authors' form.

Times ``ctsdg.cfa.region_affinity`` (inference forward inside an ``autograd.Function`` with a
hand-written backward) and ``region_affinity_reference`` (the authors' per-sample convolution and
transposed convolution, differentiated by autograd) on the map CFA sees in training at 256²:
batch 2, 64 channels, 128² (full width). Prints the best of ``--repeats`` for the forward and the
backward, the process's peak memory, and the largest difference of the input gradients.

    .venv/bin/python bench/ral_backward.py [--batch 2 --channels 64 --side 128 --repeats 3] [--amp bf16]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from ctsdg import cpu
from ctsdg.cfa import region_affinity, region_affinity_reference


def timed(ral, x: torch.Tensor, weight: torch.Tensor, repeats: int, amp: torch.dtype | None):
    best_fwd = best_bwd = float("inf")
    grad = None
    for _ in range(repeats + 1):  # the first call warms up
        x.grad = None
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = ral(x)
        mid = time.perf_counter()
        (out.float() * weight).sum().backward()
        end = time.perf_counter()
        if grad is not None:
            best_fwd, best_bwd = min(best_fwd, mid - start), min(best_bwd, end - mid)
        grad = x.grad.clone()
    return best_fwd, best_bwd, grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--side", type=int, default=128, help="side of the map RAL sees (128 at a 256² input)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", choices=("none", "bf16"), default="none")
    args = parser.parse_args()
    cpu.apply_defaults()
    torch.manual_seed(0)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    x = torch.randn(args.batch, args.channels, args.side, args.side, requires_grad=True)
    weight = torch.randn(args.batch, args.channels, args.side, args.side)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.channels} "
          f"channels, {args.side}² map, amp {args.amp}, best of {args.repeats}")
    print("| RAL | forward s | backward s | forward + backward s | peak RSS GB so far |")
    print("|---|---|---|---|---|")
    grads = {}
    for name, ral in (("ours", region_affinity), ("authors", region_affinity_reference)):
        fwd, bwd, grads[name] = timed(ral, x, weight, args.repeats, amp)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(f"| {name} | {fwd:.3f} | {bwd:.3f} | {fwd + bwd:.3f} | {peak:.2f} |", flush=True)
    diff = (grads["ours"] - grads["authors"]).abs().max().item()
    largest = grads["authors"].abs().max().item()
    print(f"max |∂x ours − ∂x authors'| = {diff:.2e} (largest |∂x| {largest:.2e})")


if __name__ == "__main__":
    main()
