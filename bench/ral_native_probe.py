"""RAL's passes over the attention fused in C, against the eager ones (issue 7, docs/speed_history.md, "A sixth look").

A probe of an idea that is not in the package. In fp32 inference RAL's products run in oneDNN and
its element-wise passes over the attention (nine shifted sums of the Gram rows, the key scale, the
logit floor, the softmax, the clamp, then E's four shifted sums) in eager PyTorch, one pass each.
This script compiles two C kernels with the system's ``cc`` into a temporary folder, loads them with
ctypes and runs them on 2 threads (ctypes releases the GIL):

* the attention rows straight from the Gram rows: the nine-shift sum, the scale, the floor, the
  softmax (a bounded-range ``exp``) and the clamp in one pass per query, written into the padded
  attention buffer;
* E from the padded attention in one pass instead of two.

It swaps them into ``ctsdg.cfa`` for the A/B (``--no-e`` keeps the eager E), checks RAL's and a
full-width 256² forward's outputs against the eager path, then times RAL alone on the generator's
CFA input shape and the whole forward, alternating eager and fused in one process.

    .venv/bin/python bench/ral_native_probe.py
    .venv/bin/python bench/ral_native_probe.py --no-e --rounds 12
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from ctsdg import Generator, cfa, cpu

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* exp(x) for x in [-30, 0] (Cephes expf: Cody-Waite reduction, degree-6 polynomial). */
static inline float exp_bounded(float x) {
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

/* Ŝ rows straight from the Gram rows: S[i,j] = sum over the 3x3 offsets o of G[i+o, j+o]. */
void ral_attention_from_gram(const float *gram, int64_t gram_batch, const float *scale, int64_t scale_batch,
                             float *out, int64_t out_batch, int64_t out_row, int64_t out_col, int64_t out_key_row,
                             int64_t hs, int64_t ws, int64_t rows, int64_t q0, int64_t q1,
                             float floor_, float clamp, float *tmp) {
    const int64_t n = hs * ws, per_batch = rows * ws, wp = ws + 2, lp = (hs + 2) * (ws + 2);
    for (int64_t q = q0; q < q1; ++q) {
        const int64_t bi = q / per_batch, i = (q % per_batch) / ws, ix = q % ws;
        const float *g = gram + bi * gram_batch;
        const float *sc = scale + bi * scale_batch;
        const float *p[9];
        for (int oy = 0; oy < 3; ++oy)
            for (int ox = 0; ox < 3; ++ox)
                p[3 * oy + ox] = g + ((i + oy) * wp + ix + ox) * lp + oy * wp + ox;
        float mx = -3.4e38f;
        for (int64_t jy = 0; jy < hs; ++jy) {
            const int64_t o = jy * wp;
            float *t = tmp + jy * ws;
            const float *s_ = sc + jy * ws;
#pragma omp simd reduction(max:mx)
            for (int64_t jx = 0; jx < ws; ++jx) {
                float a0 = (p[0][o + jx] + p[1][o + jx]) + p[2][o + jx];
                float a1 = (p[3][o + jx] + p[4][o + jx]) + p[5][o + jx];
                float a2 = (p[6][o + jx] + p[7][o + jx]) + p[8][o + jx];
                float s = ((a0 + a1) + a2) * s_[jx];
                t[jx] = s;
                mx = s > mx ? s : mx;
            }
        }
        float sum = 0.0f;
#pragma omp simd reduction(+:sum)
        for (int64_t j = 0; j < n; ++j) {
            float d = tmp[j] - mx;
            d = d > -floor_ ? d : -floor_;
            float e = exp_bounded(d);
            tmp[j] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        float *o = out + bi * out_batch + i * out_row + ix * out_col;
        for (int64_t jy = 0; jy < hs; ++jy) {
            float *orow = o + jy * out_key_row;
            const float *t = tmp + jy * ws;
#pragma omp simd
            for (int64_t jx = 0; jx < ws; ++jx) {
                float v = t[jx] * inv;
                orow[jx] = v > clamp ? v : clamp;
            }
        }
    }
}

/* E[t,u,k,v] = (P[t,u,k,v] + P[t,u+1,k,v+1]) + (P[t+1,u,k+1,v] + P[t+1,u+1,k+1,v+1]) for rows (t,u) in [r0, r1). */
void ral_e_rows(const float *pa, int64_t p_batch, float *e, int64_t e_batch, int64_t tcount,
                int64_t hs, int64_t ws, int64_t r0, int64_t r1) {
    const int64_t wp = ws + 2, hp = hs + 2, we = ws + 1, he = hs + 1;
    const int64_t per_batch = tcount * we;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t bi = r / per_batch, t = (r % per_batch) / we, u = r % we;
        const float *b = pa + bi * p_batch;
        const float *p00 = b + (t * wp + u) * hp * wp;
        const float *p01 = b + (t * wp + u + 1) * hp * wp + 1;
        const float *p10 = b + ((t + 1) * wp + u) * hp * wp + wp;
        const float *p11 = b + ((t + 1) * wp + u + 1) * hp * wp + wp + 1;
        float *out = e + bi * e_batch + (t * we + u) * he * we;
        for (int64_t k = 0; k < he; ++k) {
            const int64_t o = k * wp;
            float *orow = out + k * we;
#pragma omp simd
            for (int64_t v = 0; v < we; ++v)
                orow[v] = (p00[o + v] + p01[o + v]) + (p10[o + v] + p11[o + v]);
        }
    }
}
"""

I64, PTR, F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


def build(folder: Path) -> ctypes.CDLL:
    """The kernels compiled for this CPU (``-O3 -march=native``); no -ffast-math, so that loading the
    library does not switch the process to flush-to-zero."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler (cc or gcc) on PATH: install one (Debian: apt-get install gcc)")
    (folder / "ral.c").write_text(C_SOURCE)
    subprocess.run([compiler, "-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-c",
                    "ral.c", "-o", "ral.o"], cwd=folder, check=True)
    subprocess.run([compiler, "-shared", "ral.o", "-o", "libral.so"], cwd=folder, check=True)
    lib = ctypes.CDLL(str(folder / "libral.so"))
    lib.ral_attention_from_gram.argtypes = [PTR, I64, PTR, I64, PTR, I64, I64, I64, I64, I64, I64, I64, I64, I64,
                                            F32, F32, PTR]
    lib.ral_e_rows.argtypes = [PTR, I64, PTR, I64, I64, I64, I64, I64, I64]
    return lib


class Fused:
    """Replacements for ``cfa._AttentionRows.compute`` and ``cfa._e_rows`` (fp32 inference only)."""

    def __init__(self, lib: ctypes.CDLL, threads: int):
        self.lib, self.threads = lib, threads
        self.pool = ThreadPoolExecutor(threads)
        self.eager_compute, self.eager_e_rows = cfa._AttentionRows.compute, cfa._e_rows
        self.scratch = [torch.empty(0) for _ in range(threads)]

    def run(self, fn, total: int, *args, scratch: int = 0) -> None:
        """fn(*args, lo, hi[, scratch]) over [0, total) split evenly across the threads."""
        bounds = [total * k // self.threads for k in range(self.threads + 1)]
        if scratch and self.scratch[0].numel() < scratch:
            self.scratch = [torch.empty(scratch) for _ in range(self.threads)]
        jobs = [self.pool.submit(fn, *args, bounds[k], bounds[k + 1],
                                 *((F32(cfa.LOGIT_FLOOR), F32(1e-8), self.scratch[k].data_ptr()) if scratch else ()))
                for k in range(self.threads)]
        for job in jobs:
            job.result()

    def compute(self, rows_obj, n1, out, scores=None):
        if scores is not None or out.dtype != torch.float32 or rows_obj.padded.dtype != torch.float32:
            return self.eager_compute(rows_obj, n1, out, scores)
        padded, hs, ws = rows_obj.padded, rows_obj.hs, rows_obj.ws
        b, lp = padded.shape[0], padded.shape[2]
        n0 = rows_obj.next
        m = n1 - n0
        c = 2 if n0 else 0  # the last two Gram rows of the previous block are carried over
        gram = cfa._buffer(rows_obj.work, "gram_rows", (b, rows_obj.along_x.shape[1], ws + 2, lp), padded)
        if c:
            cfa._move_rows(gram, rows_obj.last, 0, c)
        q = rows_obj.by_position[:, (n0 + c) * (ws + 2):(n1 + 2) * (ws + 2)]
        torch.bmm(q, rows_obj.by_position.transpose(1, 2), out=gram[:, c:m + 2].view(b, -1, lp))
        scale = rows_obj.scale.contiguous()
        s = out.stride()
        self.run(self.lib.ral_attention_from_gram, b * m * ws, gram.data_ptr(), gram.stride(0), scale.data_ptr(),
                 scale.stride(0), out.data_ptr(), s[0], s[1], s[2], s[3], hs, ws, m, scratch=hs * ws)
        rows_obj.next, rows_obj.last = n1, m

    def e_rows(self, p, work):
        if p.dtype != torch.float32 or not p[0].is_contiguous():
            return self.eager_e_rows(p, work)
        b, t, wp, hp, _ = p.shape
        ws, hs = wp - 2, hp - 2
        e = cfa._buffer(work, "e", (b, t - 1, ws + 1, hs + 1, ws + 1), p)
        self.run(self.lib.ral_e_rows, b * (t - 1) * (ws + 1), p.data_ptr(), p.stride(0), e.data_ptr(), e.stride(0),
                 t - 1, hs, ws)
        return e.view(b, (t - 1) * (ws + 1), (hs + 1) * (ws + 1))

    def use(self, on: bool, with_e: bool = True) -> None:
        fused = self

        def compute(rows_obj, n1, out, scores=None):
            return fused.compute(rows_obj, n1, out, scores)

        cfa._AttentionRows.compute = compute if on else self.eager_compute
        cfa._e_rows = self.e_rows if on and with_e else self.eager_e_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="generator input side (RAL runs at half of it)")
    parser.add_argument("--rounds", type=int, default=8, help="alternating eager/fused forwards")
    parser.add_argument("--no-e", action="store_true", help="keep the eager E (fuse the attention rows only)")
    args = parser.parse_args()
    cpu.apply_defaults()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        fused = Fused(build(Path(folder)), threads)
        with_e = not args.no_e
        torch.manual_seed(0)
        g = Generator().eval()
        image, edge = torch.rand(1, 3, args.size, args.size), torch.rand(1, 2, args.size, args.size)
        mask = (torch.rand(1, 1, args.size, args.size) > 0.3).float()
        seen = []
        hook = g.cfa.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
        eager_out = g(image, edge, mask).output
        hook.remove()
        x = seen[0]
        fused.use(True, with_e)
        fused_out = g(image, edge, mask).output
        ral_fused = cfa.region_affinity(x)
        smooth = F.avg_pool2d(torch.randn(2, *x.shape[1:-2], x.shape[-2] + 8, x.shape[-1] + 8), 9, 1)
        smooth_fused = cfa.region_affinity(smooth)
        fused.use(False)
        print(f"# {threads} threads; RAL input {tuple(x.shape)}")
        print(f"max abs diff, RAL on the forward's map: {(cfa.region_affinity(x) - ral_fused).abs().max().item():.2e}; "
              f"on a smooth batch of 2: {(cfa.region_affinity(smooth) - smooth_fused).abs().max().item():.2e}; "
              f"the generator's output: {(eager_out - fused_out).abs().max().item():.2e}")
        for name, fn in (("RAL", lambda: cfa.region_affinity(x)), ("forward", lambda: g(image, edge, mask))):
            times = {False: [], True: []}
            for on in (False, True):
                fused.use(on, with_e)
                fn()
            for _ in range(args.rounds):
                for on in (False, True):
                    fused.use(on, with_e)
                    start = time.perf_counter()
                    fn()
                    times[on].append(time.perf_counter() - start)
            fused.use(False)
            ratios = sorted(a / b for a, b in zip(times[False], times[True], strict=True))
            row = [f"{label} best {min(times[on]) * 1e3:.1f} ms, median {statistics.median(times[on]) * 1e3:.1f}"
                   for label, on in (("eager", False), ("fused", True))]
            print(f"{name}: " + "; ".join(row) + f"; per-round ratio median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
