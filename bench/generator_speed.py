"""Generator forward time and peak memory, by image size and backend (issue 7).

    .venv/bin/python bench/generator_speed.py                          # 256 and 512, all backends
    .venv/bin/python bench/generator_speed.py --sizes 256 512 1024 --backends fp32 bf16 --repeats 3
    .venv/bin/python bench/generator_speed.py --parts --sizes 256 --repeats 5    # time per part
    .venv/bin/python bench/generator_speed.py --ops --sizes 256 --repeats 3      # time per kind of op
    .venv/bin/python bench/generator_speed.py --interleaved --sizes 256 --repeats 8   # same load, ratio per round
    .venv/bin/python bench/generator_speed.py --ab ctsdg.winograd.SPLIT_INPUT_TRANSFORM False True --sizes 256 --repeats 20

Backends (all: ``Generator()``, the paper's 52.1M-parameter model, batch 1, eval, no autograd):

    reference    the authors' straightforward computation (``forward(..., reference=True)``): dense
                 all-ones mask convolutions, per-channel masks, RAL as a 4096-patch convolution and a
                 transposed convolution, projection heads computed (the authors' generator runs them
                 on every call; until 2026-12-07 this backend skipped them in eval, about 3 % of its
                 time at 256², so earlier ratios read about 3 % low). What the speed-ups are measured
                 against on the same machine.
    fp32         the default fast path (what ``Generator()`` does in eval under ``torch.no_grad()``).
    bf16         the fast path under ``torch.autocast("cpu", dtype=torch.bfloat16)``; its error
                 against fp32 (mean absolute error on the [0, 1] image) is printed too.
    onnxruntime  the graph written by ``ctsdg.export.export_onnx`` run by onnxruntime (CPU), if
                 ctsdg.export and onnxruntime are importable.
    train-reference, train-fp32   the generator's part of a training iteration: train mode, batch
                 ``--train-batch`` (2), forward with the projection heads and backward of a loss on
                 all three outputs, reference vs fast path (not by default; the whole G+D+VGG step
                 is bench/train_step.py).
    compile-fp32, compile-bf16   ``torch.compile(Generator())`` (inductor, default mode) of the fast
                 path, fp32 or under bf16 autocast (not by default: compiling takes minutes on 2 cores;
                 the first call's time, compilation included, is printed beside the name).

Each (size, backend) runs in a fresh subprocess, so that its peak memory is its own: the peak
resident set size (VmHWM, reset through /proc/self/clear_refs) during the warm-up and the timed
forwards, minus the resident size before them (model weights and inputs excluded; freed memory is
handed back first with glibc's ``malloc_trim``).

``--allocator tuned`` (the default) runs as ``ctsdg`` commands and ``Inpainter`` do: glibc keeps freed
memory for the next call (``ctsdg.cpu.keep_freed_memory``), so a forward does not page-fault its
activations in again; ``--allocator default`` measures glibc's own behaviour. The header line also
prints what one 3×3 convolution reaches on this CPU in fp32 and bf16 (the convolutions' ceiling), and
the instruction set torch uses. On a CPU without native bf16 kernels (AVX2-only x86; see
``ctsdg.cpu.check_bf16``) the bf16 backends are left out, as one 256² forward takes about 40 s there;
``CTSDG_ALLOW_SLOW_BF16=1`` times them anyway.

Time: one warm-up run, then the best and the median of ``--repeats`` runs, wall clock; ``cpu`` is
the process CPU time of the best run (with other work on the machine, wall time grows and CPU time
much less). The machine's CPU model,
the cores this process may use, the torch threads and the load average are printed with the table.

``--parts``: where the time of one forward goes, part by part (encoders, decoders, the projection
heads, CFA's RAL and MSFA, the fusion layers, and the rest: Bi-GFF, the output layer and copies), for the authors'
computation and the fast path (and bf16 where it runs), round-robin in one process; the median over
``--repeats`` rounds after one warm-up round. Timed with forward hooks on the generator's modules.

``--interleaved``: the authors' computation, fp32 and bf16 in one process, one forward of each per
round, so that both sides of each speed-up share the machine's state; the best and median time of each,
and the speed-up round by round (median, min and max of reference time / backend time in the same round).
This machine's speed drifts by 10-15 % within minutes, and the separate processes above time the reference
and the fast path some seconds apart; the per-round ratio is what drift moves least.

``--ab NAME VALUE VALUE ...``: a same-process A/B of one setting, the way each kept or rejected idea in
docs/speed.md was measured: NAME is a module attribute (``ctsdg.winograd.SPLIT_INPUT_TRANSFORM``,
``ctsdg.cfa.QUERIES_PER_CHUNK``, ...), each VALUE a Python literal. The fp32 fast path (bf16 with
``--backends bf16``) runs one forward per value per round, the setting changed between them, after one
warm-up round; printed: each value's best and median time and the first value's time over this value's,
round by round (median, min-max). The setting is restored afterwards.

``--ops``: where the time goes by kind of op, and how fast each runs: convolutions and matrix products
(milliseconds, share, GFLOP as torch's profiler counts them, GFLOP/s) and everything else (the wall
time left, against the mean of ``--repeats`` forwards timed without the profiler), for the authors'
computation and the fast path, from ``torch.profiler`` over ``--repeats`` forwards after a warm-up. Winograd's layers count as matrix products: its transforms
as dense 36×36 products (memory-bound, so their GFLOP/s is low) and its channel products.

Weights are random (the official initialisation); the BatchNorm running statistics are set from one
train-mode pass over the input (momentum 1) and Bi-GFF's γ to 0.7/0.4, so that activations have a
trained network's scale: with untouched statistics the full-width features reach ~1e5, the output is
saturated at ±1 and the bf16 error would look far smaller than it is.
The authors' timings quoted in issue 7 (their code, same machine type, 2 threads) are 0.80 s at 256²
and 7.4 s at 512²; the "vs authors" column divides by them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

AUTHORS_SECONDS = {256: 0.80, 512: 7.4}  # issue 7: the authors' generator, batch 1, eval, 2 threads
BACKENDS = ("reference", "fp32", "bf16", "onnxruntime", "train-reference", "train-fp32", "compile-fp32", "compile-bf16")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False



def calibrate(gen, inputs) -> None:
    """Give random weights a trained network's activation scale: non-zero Bi-GFF gammas and BatchNorm
    running statistics set from one train-mode pass over ``inputs``; leaves ``gen`` in eval mode."""
    import torch

    with torch.no_grad():
        gen.bigff.texture_gamma.fill_(0.7)
        gen.bigff.structure_gamma.fill_(0.4)
        for m in gen.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        gen.train()(*inputs)
        gen.eval()

def worker(size: int, backend: str, repeats: int, threads: int, train_batch: int = 2,
           allocator: str = "tuned") -> dict:
    """One (size, backend) measurement in this process; returns a JSON-able dict."""
    import contextlib

    import torch

    from ctsdg import Generator
    from ctsdg.cpu import keep_freed_memory, release_freed_memory

    if allocator == "tuned":
        keep_freed_memory()  # what ctsdg's commands and Inpainter do (ctsdg/cpu.py)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = Generator().eval()
    g = torch.Generator().manual_seed(0)
    batch = train_batch if backend.startswith("train") else 1
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    known = torch.ones(batch, 1, size, size)
    known[..., size // 4: size // 2, size // 3: 2 * size // 3] = 0  # a hole of 1/12 of the image
    edge = torch.cat(((torch.rand(batch, 1, size, size, generator=g) > 0.9).float(),
                      torch.rand(batch, 1, size, size, generator=g)), 1)
    inputs = (image * known, edge * known, known)
    calibrate(gen, inputs)  # activations at a trained network's scale (see below)

    if backend == "onnxruntime":
        import tempfile

        from ctsdg.export import OnnxGenerator, export_onnx

        path = os.path.join(tempfile.mkdtemp(prefix="ctsdg-bench-"), "g.onnx")
        export_onnx(gen, path)
        onnx_gen = OnnxGenerator(path)
        import onnxruntime as ort  # noqa: F401  (threads: onnxruntime uses all cores by default)

        def run():
            return onnx_gen(*inputs, known.expand(-1, 2, -1, -1))
    elif backend.startswith("train"):
        gen.train()

        def run():
            gen.zero_grad(set_to_none=True)
            out = gen(*inputs, reference=backend == "train-reference")
            (out.output.mean() + out.projected_image.mean() + out.projected_edge.mean()).backward()
            return out.output.detach()
    else:
        bf16 = backend.endswith("bf16")
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        # compile-*: torch.compile (inductor) of the fast path; its compilation falls in the warm-up
        model = torch.compile(gen) if backend.startswith("compile") else gen

        def run():
            with torch.no_grad(), ctx():
                return model(*inputs, reference=backend == "reference").output

    # peak resident memory over the warm-up and the timed runs, above what was resident before them:
    # measured from before the warm-up because with the tuned allocator freed memory stays resident
    release_freed_memory()  # the calibration pass's memory, kept by the tuned allocator
    rss0 = _status_kib("VmRSS")
    peak_ok = _reset_peak()
    t_warm = time.perf_counter()
    out = run()  # warm-up (oneDNN primitive creation, allocator; compilation for compile-*)
    warmup_s = time.perf_counter() - t_warm
    times, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = _status_kib("VmHWM") - rss0 if peak_ok else None
    error = None  # after the peak is read: the fp32 pass it needs is not the backend's memory
    if backend in ("bf16", "onnxruntime", "compile-fp32", "compile-bf16"):
        with torch.no_grad():
            fp32 = gen(*inputs).output
        error = ((out.float() - fp32) / 2).abs().mean().item()  # on the [0, 1] image
    del out
    best = min(range(repeats), key=times.__getitem__)
    return {"size": size, "backend": backend, "best_s": times[best], "median_s": statistics.median(times),
            "cpu_s": cpus[best], "peak_mib": None if peak is None else peak / 1024, "mae_vs_fp32": error,
            "threads": threads, "batch": batch, "allocator": allocator, "warmup_s": warmup_s}


def roofline(threads: int, with_bf16: bool = True) -> dict:
    """GFLOP/s of one 3×3 convolution (128 -> 128 channels, 128², channels-last, batch 1) in fp32 and
    bf16: what this CPU's oneDNN convolutions reach, the ceiling for the generator's convolutions. With
    more than one thread, also fp32 on one thread ("fp32_one_thread"): on a shared host the threads
    may not scale (:func:`probe_line`)."""
    import torch

    torch.set_num_threads(threads)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16} if with_bf16 else {"fp32": torch.float32}
    res = {name: _conv_gflops(dtype) for name, dtype in dtypes.items()}
    if threads > 1:
        torch.set_num_threads(1)
        res["fp32_one_thread"] = _conv_gflops(torch.float32)
        torch.set_num_threads(threads)
    return res


def _conv_gflops(dtype) -> float:
    """GFLOP/s of the probe's convolution in ``dtype`` on torch's current threads (10 calls timed
    together, after 2 warm-up calls)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(1, 128, 128, 128, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(2):
            F.conv2d(x, w, padding=1)
        t0 = time.perf_counter()
        for _ in range(10):
            F.conv2d(x, w, padding=1)
    return 2 * 128 * 128 * 9 * 128 * 128 * 10 / (time.perf_counter() - t0) / 1e9


# Below this speed-up of the probe's threads over one thread, the header says the cores are shared:
# on 2026-12-07 the Zen 4 guest's two vCPUs gave ×1.02 at 11:53 UTC and ×1.9 two minutes later
# (docs/speed_history.md, "A fourteenth look").
SHARED_SCALING = 1.3


def probe_line(peak: dict, threads: int) -> str:
    """The header's line on :func:`roofline`: fp32 (and one thread's, and how much the threads gain), bf16."""
    fp32 = f"{peak['fp32']:.0f} GFLOP/s fp32"
    shared = ""
    if "fp32_one_thread" in peak:
        scaling = peak["fp32"] / peak["fp32_one_thread"]
        fp32 += f" ({peak['fp32_one_thread']:.0f} on one thread: ×{scaling:.2f} on {threads})"
        if scaling < SHARED_SCALING:
            shared = (f"; its {threads} threads ran only ×{scaling:.2f} as fast as one, so something else is "
                      "using these cores and the times below are slower than this CPU's")
    bf16 = f"{peak['bf16']:.0f} GFLOP/s bf16" if "bf16" in peak else "bf16 not measured"
    return f"# one 3x3 convolution (128->128, 128², channels-last) runs at {fp32} and {bf16} here{shared}"


def _calibrated_model(size: int, threads: int, width: int = 64, allocator: str | None = None) -> tuple:
    """The generator (eval, :func:`calibrate`-d) and one batch-1 input of ``size``² with a hole of 1/12,
    for the in-process modes (``--interleaved``, ``--parts``, ``--ops``, ``--ab``). ``allocator`` "tuned":
    glibc keeps freed memory from here on, as ``ctsdg`` commands do."""
    import torch

    from ctsdg import Generator, ModelConfig

    if allocator == "tuned":
        from ctsdg.cpu import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = Generator(ModelConfig(base_width=width)).eval()
    image = torch.rand(1, 3, size, size) * 2 - 1
    known = torch.ones(1, 1, size, size)
    known[..., size // 4: size // 2, size // 3: 2 * size // 3] = 0
    inputs = (image * known, torch.rand(1, 2, size, size) * known, known)
    calibrate(gen, inputs)  # activations at a trained network's scale, as in worker()
    return gen, inputs


def interleaved(size: int, rounds: int, threads: int, modes: tuple[str, ...] = ("reference", "fp32", "bf16"),
                allocator: str = "tuned", width: int = 64) -> dict:
    """``modes`` (reference, fp32, bf16) in one process, round-robin, so that they share the same load;
    ``{mode: {"wall": [...], "cpu": [...]}}``, one wall and CPU time per round, over ``rounds`` rounds
    after one warm-up round. ``allocator`` as for the separate-process table ("tuned": glibc keeps freed
    memory, as ``ctsdg`` commands do)."""
    import contextlib

    import torch

    gen, inputs = _calibrated_model(size, threads, width, allocator)
    times: dict[str, dict[str, list[float]]] = {mode: {"wall": [], "cpu": []} for mode in modes}
    with torch.no_grad():
        for i in range(rounds + 1):
            for mode in modes:
                bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
                with bf16:
                    t0, c0 = time.perf_counter(), time.process_time()
                    gen(*inputs, reference=mode == "reference")
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if i:
                    times[mode]["wall"].append(wall)
                    times[mode]["cpu"].append(cpu)
    return times


def round_ratios(times: dict, mode: str | int, base: str | int = "reference") -> list[float]:
    """``base``'s time over ``mode``'s in each round of :func:`interleaved` (or of :func:`ab`, whose keys
    are the values' positions): the speed-up measured under
    the same load, round by round (a machine whose speed drifts between rounds moves both alike)."""
    return [b / m for b, m in zip(times[base]["wall"], times[mode]["wall"], strict=True)]


def ab(size: int, rounds: int, threads: int, name: str, values: list, allocator: str = "tuned", width: int = 64,
       mode: str = "fp32") -> dict:
    """The fast path's forward (``mode`` fp32 or bf16) with the module attribute ``name`` set to each of
    ``values`` in turn, one forward per value per round after one warm-up round, in one process;
    ``{i: {"wall": [...]}}`` for the i-th value, as :func:`interleaved` gives (so :func:`round_ratios`
    reads it). The attribute is restored afterwards."""
    import contextlib
    import importlib

    import torch

    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"--ab: cannot import {module_name!r} ({e}); give a module attribute such as "
                         "ctsdg.winograd.SPLIT_INPUT_TRANSFORM") from None
    if not hasattr(module, attr):
        raise SystemExit(f"--ab: {module_name} has no attribute {attr!r}")
    gen, inputs = _calibrated_model(size, threads, width, allocator)
    original = getattr(module, attr)
    times: dict[int, dict[str, list[float]]] = {j: {"wall": []} for j in range(len(values))}
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
    try:
        with torch.no_grad(), bf16:
            for i in range(rounds + 1):
                for j, value in enumerate(values):
                    setattr(module, attr, value)
                    t0 = time.perf_counter()
                    gen(*inputs)
                    if i:
                        times[j]["wall"].append(time.perf_counter() - t0)
    finally:
        setattr(module, attr, original)
    return times


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SystemExit(f"--ab: {text!r} is not a Python literal (True, 512, 1 << 21 is not: write 2097152)") from None


# (label, modules timed by forward hooks); CFA's RAL is CFA minus its MSFA, "the rest" is the forward
# minus every timed part: Bi-GFF (called as a module only by the authors' computation; the fast path
# runs its gates and products inline), the output layer, concatenations and copies
PARTS = (("encoders (2 streams)", ("ec_",)), ("decoders (2 streams)", ("dc_",)),
         ("projection heads", ("texture_feature_projection", "structure_feature_projection")),
         ("fusion layers", ("fusion_layer1", "fusion_layer2")), ("CFA: RAL", ("cfa",)), ("CFA: MSFA", ("cfa.msfa",)))


def parts(size: int, rounds: int, threads: int, modes: tuple[str, ...] = ("reference", "fp32", "bf16"),
          width: int = 64) -> dict:
    """``{mode: {part: median seconds}}`` over ``rounds`` rounds after a warm-up, modes round-robin."""
    import contextlib
    import statistics as stats

    import torch

    gen, inputs = _calibrated_model(size, threads, width)
    spent: dict[str, float] = {}
    started: dict[str, float] = {}

    def timed(name: str, names: tuple[str, ...]) -> bool:  # "ec_": the top-level ec_* modules, not their layers
        return any(name.startswith(p) and "." not in name if p.endswith("_") else name == p for p in names)

    for name, module in gen.named_modules():
        if any(timed(name, names) for _, names in PARTS):
            module.register_forward_pre_hook(lambda m, a, n=name: started.__setitem__(n, time.perf_counter()))
            module.register_forward_hook(
                lambda m, a, o, n=name: spent.__setitem__(n, spent.get(n, 0.0) + time.perf_counter() - started[n]))
    samples: dict[str, dict[str, list[float]]] = {mode: {} for mode in modes}
    with torch.no_grad():
        for i in range(rounds + 1):
            for mode in modes:
                spent.clear()
                bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
                with bf16:
                    t0 = time.perf_counter()
                    gen(*inputs, reference=mode == "reference")
                    total = time.perf_counter() - t0
                if not i:
                    continue
                row = {label: sum(t for n, t in spent.items() if timed(n, names)) for label, names in PARTS}
                row["CFA: RAL"] -= row["CFA: MSFA"]
                row["the rest (Bi-GFF, output layer, copies)"] = total - sum(row.values())
                row["total"] = total
                for label, t in row.items():
                    samples[mode].setdefault(label, []).append(t)
    return {mode: {label: stats.median(ts) for label, ts in rows.items()} for mode, rows in samples.items()}


OP_CLASSES = (  # (label, profiler keys): time and FLOPs of these ops, the rest is "everything else"
    ("convolutions (oneDNN)", ("aten::conv2d", "aten::conv_transpose2d")),
    ("matrix products (mm, bmm: the fast RAL, Winograd)", ("aten::mm", "aten::bmm")),
)


def ops(size: int, rounds: int, threads: int, modes: tuple[str, ...] = ("reference", "fp32"),
        width: int = 64) -> dict:
    """``{mode: {class: (ms, GFLOP)}}`` per forward, from ``torch.profiler`` (``with_flops``) over ``rounds``
    forwards after a warm-up: convolutions (inclusive time of ``aten::conv2d``), matrix products
    (``mm`` and ``bmm``, their own time), and everything else: element-wise work, copies,
    concatenations, the softmax, upsampling. The total is the mean wall time of ``rounds`` forwards
    timed just before, without the profiler (which slows the many small ops by a third or more), and
    "everything else" is that total minus the profiled convolutions and products."""
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile

    gen, inputs = _calibrated_model(size, threads, width)
    table = {}
    with torch.no_grad():
        for mode in modes:
            bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
            with bf16:
                gen(*inputs, reference=mode == "reference")  # warm-up
                t0 = time.perf_counter()  # the total without the profiler, which slows the many small ops
                for _ in range(rounds):
                    gen(*inputs, reference=mode == "reference")
                wall_ms = (time.perf_counter() - t0) * 1e3 / rounds
                with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
                    for _ in range(rounds):
                        gen(*inputs, reference=mode == "reference")
            row = {}
            for label, keys in OP_CLASSES:
                found = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in keys]
                inclusive = label.startswith("convolutions")  # conv2d's time is in the oneDNN kernels it calls
                us = sum(e.cpu_time_total if inclusive else e.self_cpu_time_total for e in found)
                flops = sum(_transposed_conv_flops(e) if e.key == "aten::conv_transpose2d" else e.flops for e in found)
                row[label] = (us / 1e3 / rounds, flops / 1e9 / rounds)
            row["everything else"] = (wall_ms - sum(ms for ms, _ in row.values()), 0.0)
            row["total"] = (wall_ms, sum(gf for _, gf in row.values()))
            table[mode] = row
    return table


def _transposed_conv_flops(event) -> int:
    """FLOPs of ``aten::conv_transpose2d`` calls (the profiler counts none): every input pixel meets the
    whole kernel, 2 · N·H·W · C_in · (C_out / groups) · kh·kw, from the recorded input shapes."""
    (n, _, h, w), (c_in, c_out_per_group, kh, kw) = event.input_shapes[0], event.input_shapes[1]
    return 2 * n * h * w * c_in * c_out_per_group * kh * kw * event.count


def gflop(size: int, reference: bool) -> float:
    """Multiply-adds x 2 of convolutions and matrix products (torch's FLOP counter, meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ctsdg import Generator

    with torch.device("meta"):
        gen = Generator().eval()
        inputs = (torch.zeros(1, 3, size, size), torch.zeros(1, 2, size, size), torch.ones(1, 1, size, size))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        gen(*inputs, reference=reference, with_projections=reference)
    return counter.get_total_flops() / 1e9


# What limits the instruction sets of torch's own kernels, oneDNN's and MKL's below what the CPU has:
# with all three at AVX2, an AVX-512 machine runs the code a CPU without AVX-512 would run (docs/speed_history.md,
# "A tenth look").
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def machine() -> dict:
    import torch

    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), model)
        flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
        if "avx512_bf16" in flags:
            model += " (AVX-512 BF16)"
    except (OSError, subprocess.CalledProcessError):
        pass
    from ctsdg.cpu import has_fast_bf16

    return {"cpu": model, "cores_available": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": os.getloadavg(),
            "isa": torch.backends.cpu.get_cpu_capability(), "fast_bf16": has_fast_bf16(),
            "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if os.environ.get(name)}}


def machine_line(info: dict, extra: str = "") -> str:
    """The ``# machine:`` header line every bench table starts with."""
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    bf16 = "" if info["fast_bf16"] else ", no native bf16"
    limits = info.get("isa_limits")
    if limits:
        bf16 += "; instruction sets limited by " + " ".join(f"{k}={v}" for k, v in limits.items())
    return (f"# machine: {info['cpu']} (torch sees {info['isa']}{bf16}), {info['cores_available']} cores available, "
            f"torch {info['torch']}, Python {info['python']}{extra}, load average {load}")


def load_line(threads: int) -> str:
    """The closing ``# load average at end`` line; it adds that other work shared the cores only when the
    one-minute load average is above the torch threads."""
    load = os.getloadavg()[0]
    busy = f" (above the {threads} threads: other work shared the cores)" if load > threads else ""
    return f"# load average at end {load:.2f}{busy}"


def bf16_runs(info: dict) -> bool:
    """Whether to time bf16 here: only with native bf16 kernels, where it is fast (ctsdg.cpu.check_bf16),
    unless CTSDG_ALLOW_SLOW_BF16=1 (an AVX2-only CPU takes about 40 s per 256² forward)."""
    from ctsdg.cpu import ALLOW_SLOW_BF16, bf16_allowed

    if bf16_allowed():
        return True
    print(f"# bf16 not timed: this CPU has no native bf16 kernels ({info['isa']}); {ALLOW_SLOW_BF16}=1 times it "
          "anyway", file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS[:4]), choices=BACKENDS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads (default: the cores this process may use)")
    p.add_argument("--train-batch", type=int, default=2, help="batch of the train-* backends")
    p.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                   help="tuned: glibc keeps freed memory (ctsdg.cpu.keep_freed_memory, what ctsdg's commands "
                        "and Inpainter do); default: glibc's own settings")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--worker", nargs=2, metavar=("SIZE", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--parts", action="store_true",
                   help="time per part of the forward (encoders, decoders, CFA, ...), reference vs fast path")
    p.add_argument("--ops", action="store_true",
                   help="time and GFLOP/s per kind of op (convolutions, matrix products, the rest; torch.profiler)")
    p.add_argument("--width", type=int, default=64, help="base width of --parts, --ops, --interleaved and --ab (64: the paper's)")
    p.add_argument("--interleaved", action="store_true",
                   help="reference, fp32, bf16 round-robin in one process (fairest on a shared machine)")
    p.add_argument("--ab", nargs="+", metavar=("NAME", "VALUE"),
                   help="same-process A/B of a module attribute (e.g. ctsdg.winograd.SPLIT_INPUT_TRANSFORM False "
                        "True): the fast path with each value in turn, the first value's time over each value's per round")
    args = p.parse_args(argv)
    if args.ab:
        if len(args.ab) < 3:
            p.error("--ab takes a module attribute and at least two values, e.g. --ab ctsdg.winograd.ENABLED True False")
        name, values = args.ab[0], [_literal(v) for v in args.ab[1:]]
        mode = "bf16" if args.backends == ["bf16"] else "fp32"
        info = machine()
        print(machine_line(info, f", {args.threads} threads, width {args.width}, allocator {args.allocator}, "
                                 f"{args.repeats} rounds, {mode}, A/B of {name}"))
        print(f"| size | {name} | best s | median s | {args.ab[1]}'s time / this, per round: median (min-max) |")
        print("|---|---|---|---|---|")
        for size in args.sizes:
            times = ab(size, args.repeats, args.threads, name, values, args.allocator, args.width, mode)
            for j, value in enumerate(args.ab[1:]):
                t, ratios = times[j]["wall"], round_ratios(times, j, base=0)
                print(f"| {size}² | {value} | {min(t):.3f} | {statistics.median(t):.3f} | "
                      f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
        print(load_line(args.threads))
        return 0
    if args.parts or args.interleaved or args.ops:
        info = machine()
        modes = ("reference", "fp32", "bf16") if bf16_runs(info) else ("reference", "fp32")
    if args.ops:
        print(machine_line(info, f", {args.threads} threads, width {args.width}; ops: {args.repeats} forwards under "
                                 f"torch.profiler, totals: the mean of {args.repeats} without it"))
        for size in args.sizes:
            table = ops(size, args.repeats, args.threads, modes, args.width)
            for mode in modes:
                total_ms = table[mode]["total"][0]
                print(f"| {size}², {mode} | ms | share | GFLOP | GFLOP/s |")
                print("|---|---|---|---|---|")
                for label, (ms, gf) in table[mode].items():
                    rate = f"{gf / ms * 1e3:.0f}" if gf and ms > 0 else ""
                    print(f"| {label} | {ms:.1f} | {100 * ms / total_ms:.0f} % | {gf:.2f} | {rate} |")
        print(load_line(args.threads))
        return 0
    if args.parts:
        print(machine_line(info, f", {args.threads} threads, width {args.width}, median of {args.repeats} rounds"))
        for size in args.sizes:
            table = parts(size, args.repeats, args.threads, modes, args.width)
            print(f"| {size}², ms | " + " | ".join(modes) + " |")
            print("|---|" + "---|" * len(modes))
            for label in table[modes[0]]:
                print(f"| {label} | " + " | ".join(f"{table[m][label] * 1e3:.1f}" for m in modes) + " |")
        print(load_line(args.threads))
        return 0
    if args.interleaved:
        print(machine_line(info, f", {args.threads} threads, width {args.width}, allocator {args.allocator}, "
                                 f"{args.repeats} rounds"))
        print("| size | backend | best s | median s | cpu s (best) | vs reference (best over best) "
              "| ratio per round: median (min-max) |")
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes:
            times = interleaved(size, args.repeats, args.threads, modes, args.allocator, args.width)
            ref_best = min(times["reference"]["wall"])
            for mode, t in times.items():
                best = min(range(len(t["wall"])), key=t["wall"].__getitem__)
                ratios = round_ratios(times, mode)
                print(f"| {size}² | {mode} | {t['wall'][best]:.3f} | {statistics.median(t['wall']):.3f} "
                      f"| {t['cpu'][best]:.3f} | {ref_best / t['wall'][best]:.2f}x "
                      f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
        print(load_line(args.threads))
        return 0
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.repeats, args.threads, args.train_batch,
                                args.allocator)))
        return 0

    info = machine()
    with_bf16 = bf16_runs(info)
    backends = [b for b in args.backends if with_bf16 or not b.endswith("bf16")]
    peak = roofline(args.threads, with_bf16)
    print(machine_line(info, f", {args.threads} threads, allocator {args.allocator}"))
    print(probe_line(peak, args.threads))
    rows = []
    for size in args.sizes:
        for backend in backends:
            cmd = [sys.executable, __file__, "--worker", str(size), backend, "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--train-batch", str(args.train_batch),
                   "--allocator", args.allocator]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["?"])[-1]
                print(f"# {size} {backend}: failed ({last})", file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"# done {size} {backend}: {rows[-1]['best_s']:.3f} s", file=sys.stderr, flush=True)

    for r in rows:
        r["gflop"] = gflop(r["size"], True) if r["backend"] == "reference" else (
            gflop(r["size"], False) if r["backend"] in ("fp32", "bf16", "compile-fp32", "compile-bf16") else None)  # forward, batch 1
    ref = {(r["size"], r["backend"].startswith("train")): r["best_s"] for r in rows
           if r["backend"] in ("reference", "train-reference")}
    print("| size | backend | GFLOP | best s | median s | cpu s | peak MiB | vs reference | vs authors (issue 7) "
          "| MAE vs fp32 on [0,1] |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        key = (r["size"], r["backend"].startswith("train"))
        vs_ref = f"{ref[key] / r['best_s']:.2f}x" if key in ref else "-"
        vs_auth = f"{AUTHORS_SECONDS[r['size']] / r['best_s']:.2f}x" if r["size"] in AUTHORS_SECONDS and not key[1] else "-"
        mae = "-" if r["mae_vs_fp32"] is None else f"{r['mae_vs_fp32'] * 255:.3f}/255"
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        flops = "-" if r["gflop"] is None else f"{r['gflop']:.1f}"
        name = r["backend"] + (f" (batch {r['batch']})" if r["batch"] > 1 else "")
        if r["backend"].startswith("compile"):
            name += f" (first call, compiling: {r['warmup_s']:.0f} s)"
        print(f"| {r['size']}² | {name} | {flops} | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['cpu_s']:.3f} "
              f"| {peak} | {vs_ref} | {vs_auth} | {mae} |")
    print(load_line(args.threads))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"machine": info, "threads": args.threads, "roofline_gflops": peak, "rows": rows}, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
