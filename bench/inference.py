"""Seconds per image and peak memory of ``Inpainter`` for each size x strategy x backend.

    .venv/bin/python bench/inference.py                              # everything, paper-size model
    .venv/bin/python bench/inference.py --sizes 256 512 4000x3000 --backends torch-fp32 torch-bf16
    .venv/bin/python bench/inference.py --checkpoint model.safetensors --onnx model.onnx --json out.json

Images are scikit-image's coffee photo (CC0) resized to each size; each mask is one object-like ellipse
covering 5 % of the image. The model is ``--checkpoint`` or, by default, the paper's architecture
(``ModelConfig()``, random weights: speed does not depend on the weights). Backends: ``torch-fp32``,
``torch-bf16`` (autocast) and ``onnxruntime`` (needs ``--onnx FILE``, or exports one first, which takes
minutes at full width).

Memory, two columns: on CUDA ``torch.cuda.max_memory_allocated`` during the call (minus, in the first
column, what was allocated before it); on CPU the peak resident set size of the process sampled every
2 ms during the call (minus, in the first column, the resident size just before it). After the warm-up
call the allocators reuse memory, so "added" can be near 0; the absolute peak includes every model this
process loaded: run one backend per process (``--backends torch-fp32``) for a user's real footprint.

Combinations that cannot run are reported, not skipped silently: ``original`` is refused above
``ORIGINAL_MAX_PIXELS`` by the Inpainter itself, and the exported ONNX graph holds the whole attention
matrix at once, so onnxruntime ``original`` is skipped above 512² (``--onnx-original-max``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '4000x3000' -> (height 3000, width 4000)."""
    if "x" in text:
        w, h = text.lower().split("x")
        return int(h), int(w)
    return int(text), int(text)


def make_pair(height: int, width: int, hole_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from skimage import data

    image = np.array(Image.fromarray(data.coffee()).resize((width, height), Image.BICUBIC))
    yy, xx = np.mgrid[:height, :width]
    # ellipse with axes ratio 1.5 : 1, area = pi * a * b = hole_fraction * H * W
    b = np.sqrt(hole_fraction * height * width / (np.pi * 1.5))
    a = 1.5 * b
    cy, cx = 0.55 * height, 0.6 * width
    mask = ((((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2) <= 1).astype(np.uint8) * 255
    return image, mask


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread; ``.peak - .start`` is what the block added."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measure(inpainter, image, mask, strategy, repeats: int) -> tuple[float, float, float]:
    """(median seconds, MiB added at the peak, absolute peak MiB) of ``repeats`` calls after one warm-up."""
    cuda = inpainter.device.type == "cuda"
    inpainter(image, mask, strategy=strategy)  # warm-up: allocator, kernels, onnxruntime arenas
    times, peaks, absolute = [], [], []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t = time.perf_counter()
            inpainter(image, mask, strategy=strategy)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            peaks.append(torch.cuda.max_memory_allocated() - base)
            absolute.append(torch.cuda.max_memory_allocated())
        else:
            with PeakRSS() as rss:
                t = time.perf_counter()
                inpainter(image, mask, strategy=strategy)
                times.append(time.perf_counter() - t)
            peaks.append(rss.peak - rss.start)
            absolute.append(rss.peak)
    return float(np.median(times)), max(peaks) / 2**20, max(absolute) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model file (default: paper architecture, random weights)")
    p.add_argument("--base-width", type=int, default=64, help="width of the random model (default 64 = paper)")
    p.add_argument("--sizes", nargs="+", default=["256", "512", "1024", "4000x3000"])
    p.add_argument("--strategies", nargs="+", default=["original", "resize", "crop"])
    p.add_argument("--backends", nargs="+", default=["torch-fp32", "torch-bf16", "onnxruntime"])
    p.add_argument("--onnx", default=None, help=".onnx for the onnxruntime backend (exported if missing)")
    p.add_argument("--onnx-original-max", type=int, default=512 * 512,
                   help="largest padded pixel count for onnxruntime 'original' (full attention matrix)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--blend", choices=("poisson", "none"), default="poisson",
                   help="how the fill is composited (Inpainter's default: poisson; none: the raw paste)")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)

    from ctsdg import Generator, ModelConfig
    from ctsdg.checkpoint import load_generator
    from ctsdg.inference import ORIGINAL_MAX_PIXELS, Inpainter, padded_shape

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        loaded = load_generator(args.checkpoint)
        generator, config, mode = loaded.generator, loaded.model_config, loaded.structure_mode
    else:
        config = ModelConfig(base_width=args.base_width)
        generator, mode = Generator(config).eval(), "standard"

    inpainters = {}
    for backend in args.backends:
        if backend in ("torch-fp32", "torch-bf16"):
            try:
                inpainters[backend] = Inpainter(generator, config, mode, device=args.device,
                                                precision=backend.split("-")[1], blend=args.blend)
            except ValueError as exc:  # bf16 on a CPU without bf16 instructions (ctsdg.cpu.check_bf16)
                if backend != "torch-bf16":
                    raise
                print(f"# {backend} not timed: {exc}", file=sys.stderr)
        elif backend == "onnxruntime":
            from ctsdg.export import OnnxGenerator, export_onnx

            onnx_path = Path(args.onnx or f"bench_width{config.base_width}.onnx")
            if not onnx_path.exists():
                print(f"exporting {onnx_path} ...", file=sys.stderr)
                export_onnx(generator, onnx_path, structure_mode=mode)
            onnx_gen = OnnxGenerator(onnx_path, device=args.device)
            inpainters[backend] = Inpainter(onnx_gen, onnx_gen.model_config, onnx_gen.structure_mode,
                                            device=args.device, blend=args.blend)
        else:
            raise SystemExit(f"unknown backend {backend}")

    print(f"# ctsdg inference benchmark: base width {config.base_width}, blend {args.blend}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    mem = "CUDA allocated" if args.device.startswith("cuda") else "RSS"
    print(f"| size | strategy | backend | s / image | {mem} added at peak, MiB | {mem} peak, MiB |")
    print("|---|---|---|---|---|---|")
    rows = []
    for size_text in args.sizes:
        h, w = parse_size(size_text)
        image, mask = make_pair(h, w)
        hp, wp = padded_shape(h, w)
        for strategy in args.strategies:
            for backend, inpainter in inpainters.items():
                row = {"size": f"{w}x{h}", "strategy": strategy, "backend": backend, "seconds": None,
                       "added_mib": None, "peak_mib": None, "note": ""}
                if strategy == "original" and hp * wp > ORIGINAL_MAX_PIXELS:
                    row["note"] = f"refused: over {ORIGINAL_MAX_PIXELS} padded pixels"
                elif strategy == "original" and backend == "onnxruntime" and hp * wp > args.onnx_original_max:
                    row["note"] = "skipped: the ONNX graph holds the full attention matrix"
                else:
                    try:
                        row["seconds"], row["added_mib"], row["peak_mib"] = measure(inpainter, image, mask, strategy, args.repeats)
                    except (RuntimeError, MemoryError) as exc:
                        row["note"] = f"failed: {str(exc).splitlines()[0][:80]}"
                rows.append(row)
                secs = f"{row['seconds']:.3f}" if row["seconds"] is not None else row["note"]
                added = f"{row['added_mib']:.0f}" if row["added_mib"] is not None else "-"
                peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
                print(f"| {row['size']} | {strategy} | {backend} | {secs} | {added} | {peak} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"base_width": config.base_width, "blend": args.blend, "device": args.device,
                                               "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
