"""Seconds per training iteration and peak memory of ``ctsdg.train.train_step`` (G step + D step).

Default: batch 6 at 256 x 256 (the paper's setting), full width (base_width 64) and the small width (16),
synthetic data (the data pipeline is not timed), the real VGG16 when installed. Each configuration runs in
its own process so that its peak memory is its own.

    python bench/train_step.py                          # CPU: widths 64 and 16, batch 6, 256², 3 timed steps
    python bench/train_step.py --device cuda --amp bf16 --steps 20
    python bench/train_step.py --widths 16 --size 128 --batch 6 --json   # the small_cpu preset's step
    python bench/train_step.py --widths 64 --batch 2 --generator reference   # issue 7: the authors' iteration here
    python bench/train_step.py --widths 64 --batch 2 --interleaved --steps 8  # both alternately, per-round ratios
    python bench/train_step.py --widths 64 --batch 2 --parts                  # G, D, VGG16, Adam timed alone

``--generator reference`` is the authors' computation of the whole step: their generator forward
(``reference=True``), VGG16 in NCHW and the discriminator with the backend's convolutions, torch's
default Adam; the same losses and data. The default is what ``ctsdg train`` runs.

Times: wall-clock seconds per iteration (median) and, on CPU, process CPU seconds per iteration (user +
system over all threads), which is less sensitive to other jobs sharing the machine.
Peak memory: CUDA ``max_memory_allocated`` on a GPU; on CPU the process's peak resident set (ru_maxrss),
which includes the Python interpreter and torch (about 0.3 GB, see the ``baseline`` column).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from generator_speed import machine, machine_line  # bench/generator_speed.py: CPU, ISA, cores, torch, load


def _machine_line() -> str:
    return machine_line(machine())


def _setup(args: argparse.Namespace, generator: str):
    """Networks, optimisers, step options and one synthetic batch for ``generator`` ("fast" or
    "reference"), and the kind of VGG16 weights found."""
    import torch

    from ctsdg.config import ModelConfig
    from ctsdg.discriminator import Discriminator, PatchConv2d
    from ctsdg.generator import Generator
    from ctsdg.losses import VGG16_POOL_ENDS, VGG16Pools, load_vgg16_pools
    from ctsdg.train import DiscriminatorPair, Nets, Optimizers, StepOptions, build_optimizers
    from ctsdg.train_config import OptimConfig

    device = torch.device(args.device)
    torch.manual_seed(0)
    g = Generator(ModelConfig(base_width=args.width)).to(device)
    d = Discriminator(ModelConfig(base_width=args.width)).to(device)
    try:
        vgg, vgg_kind = load_vgg16_pools().to(device), "imagenet"
    except (FileNotFoundError, ValueError):
        vgg, vgg_kind = VGG16Pools().to(device), "random"  # same cost
    if generator == "reference":  # the authors' computation: same D and losses
        class ReferenceForward(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *a, **kw):
                return self.inner(*a, reference=True, **kw)

        g = ReferenceForward(g)
        for module in d.modules():  # the authors' discriminator: the backend's own 4×4 convolutions
            if isinstance(module, PatchConv2d):
                module.winograd = False
        pools = vgg

        def vgg(image):  # the authors' VGG16 pass: NCHW, the backend's own convolutions (no Winograd)
            feats, x, start = [], image, 0
            for end in VGG16_POOL_ENDS:
                x = pools.features[start:end](x)
                feats.append(x)
                start = end
            return feats

        # torch's default Adam (the authors' optimiser), not the fused one
        config = OptimConfig()
        opt = Optimizers(torch.optim.Adam(g.parameters(), lr=config.lr, betas=config.betas),
                         torch.optim.Adam(d.parameters(), lr=config.lr * config.discriminator_lr_ratio, betas=config.betas))
    else:
        opt = build_optimizers(g, d, OptimConfig())  # as `ctsdg train` builds them (fused Adam on CPU and CUDA)
    nets = Nets(g, d, DiscriminatorPair(d), vgg)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scalers = (None, None)
    if amp == torch.float16:
        scalers = (torch.amp.GradScaler(device.type), torch.amp.GradScaler(device.type))
    options = StepOptions(amp_dtype=amp, scaler_g=scalers[0], scaler_d=scalers[1])
    b, s = args.batch, args.size
    gen = torch.Generator().manual_seed(1)
    known = (torch.rand(b, 1, s // 16, s // 16, generator=gen) > 0.35).float()
    batch = {
        "image": torch.rand(b, 3, s, s, generator=gen) * 2 - 1,
        "known_mask": torch.nn.functional.interpolate(known, size=(s, s), mode="nearest"),
        "edge": (torch.rand(b, 1, s, s, generator=gen) > 0.9).float(),
        "gray": torch.rand(b, 1, s, s, generator=gen),
    }
    return batch, nets, opt, options, vgg_kind


def _process_setup(args: argparse.Namespace) -> None:
    import torch

    if args.allocator == "tuned":
        from ctsdg.cpu import keep_freed_memory

        keep_freed_memory()  # what `ctsdg train` does (ctsdg/cpu.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.winograd == "off":
        from ctsdg import winograd

        winograd.ENABLED = False  # VGG16's wide layers take oneDNN's convolution (forward and backward)


def interleaved(args: argparse.Namespace) -> None:
    """Our step and the authors' alternately in one process (the same drift of the machine hits both):
    per-round ratio, medians. No peak memory (both live in the process)."""
    import torch

    from ctsdg.train import train_step

    _process_setup(args)
    setups = {kind: _setup(args, kind) for kind in ("reference", "fast")}
    for batch, nets, opt, options, _ in setups.values():
        for _ in range(args.warmup):
            train_step(batch, nets, opt, options)
    times: dict[str, list[float]] = {kind: [] for kind in setups}
    print(_machine_line())
    print(f"# width {args.width}, batch {args.batch}, {args.size}², amp {args.amp}, {torch.get_num_threads()} threads, "
          f"{args.allocator} allocator, torch {torch.__version__}; rounds of (authors' step, our step)")
    print("| round | authors' s | ours s | ratio |")
    print("|---|---|---|---|")
    for r in range(args.steps):
        for kind, (batch, nets, opt, options, _) in setups.items():
            start = time.perf_counter()
            train_step(batch, nets, opt, options)
            times[kind].append(time.perf_counter() - start)
        print(f"| {r + 1} | {times['reference'][-1]:.2f} | {times['fast'][-1]:.2f} | "
              f"{times['reference'][-1] / times['fast'][-1]:.2f}× |", flush=True)
    print(interleaved_summary(times))


def interleaved_summary(times: dict[str, list[float]]) -> str:
    """The last line of :func:`interleaved`: each step's median time and the median, least and greatest
    of the per-round ratios (with an even number of rounds, the mean of the two middle ones)."""
    ratios = [a / b for a, b in zip(times["reference"], times["fast"], strict=True)]
    return (f"median: authors' {statistics.median(times['reference']):.2f} s, ours "
            f"{statistics.median(times['fast']):.2f} s; ratio median {statistics.median(ratios):.2f}× "
            f"(range {min(ratios):.2f}–{max(ratios):.2f}×)")


def parts(args: argparse.Namespace) -> None:
    """Where our step's time goes: its pieces timed alone (best of --steps after --warmup), with the
    same shapes as inside the step. The pieces overlap nothing, so "rest" (losses, batch
    preparation, the finite checks) is the whole step minus their sum."""
    import torch

    from ctsdg.train import DiscriminatorPair, prepare_batch, train_step

    _process_setup(args)
    batch, nets, opt, options, _ = _setup(args, "fast")
    g, d, vgg = nets.generator, nets.discriminator, nets.vgg
    prepared = prepare_batch(batch, args.device)
    fake = g(prepared.input_image, prepared.input_edge, prepared.known_mask).output.detach().requires_grad_()

    def best(fn) -> float:
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def generator():  # forward with the projection heads, backward from all three outputs
        out = g(prepared.input_image, prepared.input_edge, prepared.known_mask)
        (out.output.sum() + out.projected_image.sum() + out.projected_edge.sum()).backward()

    def d_in_g_step():  # D frozen, gradient to its input only
        d.requires_grad_(False)
        prediction, edge = d(fake, prepared.gray, prepared.edge, is_real=False)
        (prediction.sum() + edge.sum()).backward()
        d.requires_grad_(True)

    def d_step():
        outs = DiscriminatorPair(d)(prepared.image, fake.detach(), prepared.gray, prepared.edge)
        sum(o.sum() for o in outs).backward()

    def vgg16():  # [output; composite] with autograd, the target without
        feats = vgg(torch.cat((fake, fake * 0.5), dim=0))
        with torch.no_grad():
            vgg(prepared.image)
        sum(f.sum() for f in feats).backward()

    def adam():
        opt.generator.step()
        opt.discriminator.step()

    step = best(lambda: train_step(batch, nets, opt, options))
    pieces = {"G forward + backward": generator, "D in the G step": d_in_g_step, "D step": d_step,
              "VGG16": vgg16, "Adam (G and D)": adam}
    times = {name: best(fn) for name, fn in pieces.items()}
    print(_machine_line())
    print(f"# width {args.width}, batch {args.batch}, {args.size}², amp {args.amp}, {torch.get_num_threads()} threads, "
          f"best of {args.steps}, torch {torch.__version__}")
    print("| piece | s |")
    print("|---|---|")
    print(f"| whole step | {step:.2f} |")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} |")
    print(f"| rest | {step - sum(times.values()):.2f} |")


def one(args: argparse.Namespace) -> dict:
    import torch

    from ctsdg.train import train_step

    if args.generator == "reference":
        args.winograd = "off"  # the authors' VGG16 pass (_setup) never takes it
    _process_setup(args)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    device = torch.device(args.device)
    batch, nets, opt, options, vgg_kind = _setup(args, args.generator)
    b, s = args.batch, args.size

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        train_step(batch, nets, opt, options)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step(batch, nets, opt, options)
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024**3
        kind = "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        kind = "cpu_peak_rss"
    times.sort()
    return {
        "generator": args.generator, "width": args.width, "batch": b, "size": s, "device": args.device, "amp": args.amp, "vgg": vgg_kind,
        "threads": torch.get_num_threads(), "steps": args.steps, "allocator": args.allocator, "winograd": args.winograd,
        "s_per_it_median": statistics.median(times), "s_per_it_min": times[0],
        "cpu_s_per_it_median": statistics.median(cpu_times),
        "peak_gb": round(peak, 3), "peak_kind": kind, "baseline_gb": round(baseline, 3),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", default="64,16", help="comma-separated base widths")
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = default)")
    parser.add_argument("--generator", choices=("fast", "reference"), default="fast",
                        help="fast: Generator() as it trains (default); reference: the authors' computation "
                             "(forward(..., reference=True)), for the same-machine comparison")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                        help="tuned: glibc keeps freed memory, as `ctsdg train` runs (default); default: glibc's own")
    parser.add_argument("--winograd", choices=("on", "off"), default="on",
                        help="on: the frozen VGG16's wide layers run Winograd on CPU in fp32, as `ctsdg train` does "
                             "(default); off: oneDNN's convolution, for comparison")
    parser.add_argument("--interleaved", action="store_true",
                        help="the authors' step and ours alternately in one process, --steps rounds, at the first "
                             "of --widths: per-round ratios (no peak memory)")
    parser.add_argument("--parts", action="store_true",
                        help="where our step's time goes, at the first of --widths: G, D, VGG16 and Adam timed alone")
    parser.add_argument("--json", action="store_true", help="print one JSON line per configuration")
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)  # internal: run one configuration
    args = parser.parse_args()

    if args.interleaved or args.parts:
        args.width = int(args.widths.split(",")[0])
        (interleaved if args.interleaved else parts)(args)
        return
    if args.width is not None:
        print(json.dumps(one(args)))
        return
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        cmd = [sys.executable, __file__, "--width", str(width), "--device", args.device, "--batch", str(args.batch),
               "--size", str(args.size), "--steps", str(args.steps), "--warmup", str(args.warmup), "--amp", args.amp,
               "--threads", str(args.threads), "--generator", args.generator, "--allocator", args.allocator,
               "--winograd", args.winograd]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        if args.json:
            print(out, flush=True)
    if not args.json:
        print(_machine_line())
        print(f"{'generator':>9} {'width':>5} {'batch':>5} {'size':>5} {'device':>6} {'amp':>5} {'s/it':>8} {'cpu s/it':>8} "
              f"{'peak GB':>8} {'baseline':>8}  vgg")
        for r in rows:
            print(f"{r['generator']:>9} {r['width']:>5} {r['batch']:>5} {r['size']:>5} {r['device']:>6} {r['amp']:>5} "
                  f"{r['s_per_it_median']:>8.2f} {r['cpu_s_per_it_median']:>8.2f} {r['peak_gb']:>8.2f} "
                  f"{r['baseline_gb']:>8.2f}  {r['vgg']} "
                  f"({r['peak_kind']}, {r['threads']} threads, {r['allocator']} allocator, Winograd {r['winograd']}, "
                  f"torch {r['torch']})")


if __name__ == "__main__":
    main()
