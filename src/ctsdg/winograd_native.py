"""Winograd convolution with its transforms in C (issue 7; docs/speed.md, "A fifteenth look" and "A sixteenth
look" in docs/speed_history.md).

:func:`ctsdg.winograd.conv3x3` works band by band: gather the band's input tiles, transform them (Bᵀ d B), run
the channel products, transform back (Aᵀ m A) and add the bias. In eager PyTorch the gather is one copy, each
transform one dense product with a Kronecker matrix (kron(Bᵀ, Bᵀ) is 36 × 36 for F(4×4, 3×3), of which 484
of 1296 entries are not zero) and the bias one more pass, and these passes move memory rather than compute:
on a Zen 4 they took as long as the channel products themselves in Bi-GFF's gates.

``_winograd_native.c``, compiled when the package is installed (``setup.py``; a C compiler is needed, and
without one the package installs and runs the eager transforms; its vector types, loads and stores are in
``_native_vectors.h``, shared with RAL's kernels, ``cfa_native``), has three kinds of kernels, each for
F(4×4, 3×3) on float32 and for F(2×2, 3×3) on bf16 (``VARIANTS``; bf16 inference, ``winograd.bf16_inference``):

- the gather and input transform in one pass (``ctsdg_f4_float_input``, ``ctsdg_f2_bf16_input``), 16
  channels at a time, with only the non-zero terms of ``winograd.toom_cook``'s matrices, applied as two 1-D
  passes;
- the output transform with the bias (``..._output``). Between the two, the channel products are
  ``torch.bmm`` on the band (:func:`fill`);
- one fused kernel (:func:`fused`) that does all three for a block of tiles in a per-thread buffer: the
  products are its own (float32 fused multiply-adds, or bf16 pair dot products summed in float32, 6 tiles by
  64 output channels at a time), so the transformed tiles and their products stay in the cache. It reads the
  whole transformed weight once per block, so the layers with large weights keep the bands. For float32 with
  AVX-512 (``ctsdg_f4_float_fused``) or with AVX2 and FMA (``ctsdg_f4_float_fused_avx2``: 6 tiles by 16
  channels at a time, which fit AVX2's 16 vector registers), for bf16 with AVX512-BF16 (``ctsdg_f2_bf16_fused``);
  :func:`fused_isa` picks the one this CPU and torch's code run.

On x86-64 the file is built twice. ``_winograd_native`` has 16 float32 lanes per vector and one clone per instruction
set (AVX-512, AVX2, plain x86-64), picked when it is loaded. ``_winograd_native_avx2`` (``_winograd_native_avx2.c``)
has 8 lanes, AVX2 and FMA only, and of the fused kernels only AVX2's: with 16 lanes on AVX2, GCC moves each vector
through the stack between operations. :func:`kernels` loads the second where torch runs its AVX2 code (a CPU without
AVX-512, or ``ATEN_CPU_CAPABILITY=avx2``; ``AVX2_BUILD = False`` takes the first's AVX2 clone instead).

The kernels split their tiles among torch's number of threads with OpenMP. They are linked against
``libgomp.so.1``, and since torch has already loaded its own copy under that name, the loader binds them to
it: they run on torch's own thread team. With Python threads instead, each call competed with torch's
workers, which keep spinning for a while after each product (Bi-GFF's output transform: 1.12 against 0.68
ms per band; docs/speed_history.md, "A fifteenth look").

The float32 outputs are those of the eager transforms up to float rounding (both within Winograd's own error,
``tests/test_winograd_native.py``); the bf16 ones round as torch rounds. ``winograd.NATIVE = False`` or
``CTSDG_NATIVE=0`` in the environment turns the C kernels off; ``winograd.FUSED_FLOAT`` and
``winograd.FUSED_BF16`` the fused ones.

The C file is generated from ``toom_cook``'s matrices by :func:`c_source`; after changing either, regenerate it
with ``python -c "from ctsdg.winograd_native import c_source; print(c_source(), end='')" >
src/ctsdg/_winograd_native.c`` and reinstall (a test checks that the two agree).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .cpu import compiled, torch_runs_avx2

LANES = 16  # channels per vector in the kernels (8 in the AVX2 build, _winograd_native_avx2.c)
_STORAGE = {torch.float32: "float", torch.bfloat16: "bf16"}


# Where torch runs its AVX2 code, the kernels' 8-lane AVX2 build (False: the AVX2 clone of the 16-lane one)
AVX2_BUILD = True


def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None where the extension was not built (no C compiler at install time): where
    torch runs its AVX2 code (a CPU without AVX-512, or ``ATEN_CPU_CAPABILITY=avx2``), their 8-lane AVX2 build
    (``_winograd_native_avx2.c``) if there is one and ``AVX2_BUILD``."""
    return (AVX2_BUILD and torch_runs_avx2() and load("ctsdg._winograd_native_avx2")) or load("ctsdg._winograd_native")


@functools.cache
def load(module: str) -> ctypes.CDLL | None:
    """One build of the kernels (``"ctsdg._winograd_native"`` or ``"ctsdg._winograd_native_avx2"``) with its
    functions' argument types set, or None where it was not built."""
    lib = compiled(module)
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for m, storage in VARIANTS:
        name_in, name_out = kernel_names(m, storage)
        try:
            kernel_in, kernel_out = getattr(lib, name_in), getattr(lib, name_out)
        except AttributeError:  # a library built from an older C file: reinstall the package
            return None
        kernel_in.argtypes = [ptr] + [i64] * 11 + [ptr, i64, i64, ctypes.c_int]
        kernel_in.restype = None
        kernel_out.argtypes = [ptr, i64, i64, ptr, ptr] + [i64] * 5 + [ctypes.c_int]
        kernel_out.restype = None
    if hasattr(lib, "ctsdg_fused_built"):  # a library built from an older C file has none of the fused kernels
        lib.ctsdg_fused_built.restype = ctypes.c_int
        for m, storage, isa in FUSED_VARIANTS:
            name = fused_name(m, storage, isa)
            if not hasattr(lib, name):  # the AVX2 build has no AVX-512 kernels (an older C file had no AVX2 one)
                continue
            kernel, scratch = getattr(lib, name), getattr(lib, name + "_scratch")
            kernel.argtypes = [ptr, ptr] + [i64] * 7 + [ptr, i64, i64, ptr, ptr, i64, i64, i64, ptr, ctypes.c_int]
            kernel.restype = None
            scratch.argtypes, scratch.restype = [i64, i64], i64
    return lib


@functools.cache
def fused_isa(dtype: torch.dtype) -> str | None:
    """The instruction set of the fused kernel for ``dtype`` (float32: F(4×4, 3×3), bf16: F(2×2, 3×3)) that runs
    here, or None: "avx512" where the CPU has AVX-512 (and AVX512-BF16 for bf16) and torch runs its AVX-512 code,
    "avx2" for float32 on a CPU with AVX2 (and torch's AVX2 code: ``ATEN_CPU_CAPABILITY=avx2`` picks it on an
    AVX-512 CPU too); built by a compiler that knows them."""
    lib = kernels()
    if lib is None or not hasattr(lib, "ctsdg_fused_built") or not lib.ctsdg_fused_built():
        return None

    def has(check: str) -> bool:
        return bool(getattr(torch.cpu, check, lambda: False)())

    capability = torch.backends.cpu.get_cpu_capability()
    m, storage = (2, "bf16") if dtype == torch.bfloat16 else (4, "float")
    if capability != "AVX2" and has("_is_avx512_bf16_supported" if storage == "bf16" else "_is_avx512_supported"):
        return "avx512" if hasattr(lib, fused_name(m, storage, "avx512")) else None
    if storage == "float" and has("_is_avx2_supported") and hasattr(lib, fused_name(m, storage, "avx2")):
        return "avx2"
    return None


def fused_available(dtype: torch.dtype) -> bool:
    """Whether a fused kernel for ``dtype`` runs here (:func:`fused_isa`)."""
    return fused_isa(dtype) is not None


def _operands(parts: tuple[torch.Tensor, ...], u: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """What both :func:`fill` and :func:`fused` start from: m of F(m×m, 3×3) and the storage ``u`` is for, the
    parts in ``u``'s dtype with their channels contiguous, and the bias as float32 (or None)."""
    m, storage = {36: 4, 16: 2}[u.shape[0]], _STORAGE[u.dtype]
    parts = tuple(p.to(u.dtype) if p.stride(1) == 1 else p.to(u.dtype, memory_format=torch.channels_last)
                  for p in parts)
    return m, storage, parts, None if bias is None else bias.detach().float().contiguous()


def fill(parts: tuple[torch.Tensor, ...], u: torch.Tensor, padding: int, out: torch.Tensor, band: int,
         bias: torch.Tensor | None) -> None:
    """``winograd._conv``'s work with the C transforms: the stride-1 3×3 convolution of ``parts`` ((N, C_i, H,
    W) CPU tensors, read as their concatenation along channels) with the transformed weight ``u`` (36, C, K)
    of F(4×4, 3×3) in float32 or (16, C, K) of F(2×2, 3×3) in bf16, written into ``out`` (N, m·th, m·tw, K),
    contiguous, in ``u``'s dtype, ``band`` tile rows at a time. The parts are cast to that dtype."""
    lib = kernels()
    m, storage, parts, bias = _operands(parts, u, bias)
    t = m + 2
    kernel_in, kernel_out = (getattr(lib, name) for name in kernel_names(m, storage))
    threads = torch.get_num_threads()
    n, c, k = parts[0].shape[0], u.shape[1], u.shape[2]
    h, w = parts[0].shape[-2:]
    th, tw = out.shape[1] // m, out.shape[2] // m
    u = u.contiguous()
    osn, osh, osw = out.stride()[:3]
    most = n * min(band, th) * tw  # tiles in the largest band
    v_all = torch.empty(t * t * most * c, dtype=u.dtype)  # one scratch for every band
    prod_all = torch.empty(t * t * most * k, dtype=u.dtype)
    for t0 in range(0, th, band):
        rows = min(th, t0 + band) - t0
        tiles = n * rows * tw
        v = v_all[:t * t * tiles * c].view(t * t, tiles, c)
        first = 0
        for part in parts:
            sn, _, sh, sw = part.stride()
            kernel_in(part.data_ptr(), sn, sh, sw, h, w, m * t0 - padding, padding, rows, tw, first, part.shape[1],
                      v.data_ptr(), tiles, c, threads)
            first += part.shape[1]
        prod = torch.bmm(v, u, out=prod_all[:t * t * tiles * k].view(t * t, tiles, k))
        kernel_out(prod.data_ptr(), tiles, k, None if bias is None else bias.data_ptr(), out[:, m * t0:].data_ptr(),
                   osn, osh, osw, rows, tw, threads)


def fused(parts: tuple[torch.Tensor, ...], u: torch.Tensor, padding: int, out: torch.Tensor,
          bias: torch.Tensor | None) -> None:
    """``winograd._conv``'s work in one pass (:func:`fused_available`): the stride-1 3×3 convolution of ``parts``
    (cast to ``u``'s dtype, read as their concatenation along channels) with ``u``, (36, C, K) float32 for
    F(4×4, 3×3) or (16, C, K) bf16 for F(2×2, 3×3), K a multiple of 64, written into ``out`` (N, m·th, m·tw, K),
    contiguous, in ``u``'s dtype."""
    lib = kernels()
    m, storage, parts, bias = _operands(parts, u, bias)
    n, c, k = parts[0].shape[0], u.shape[1], u.shape[2]
    h, w = parts[0].shape[-2:]
    if u.dtype == torch.bfloat16:  # (16, pairs, K, 2): input channels 2q and 2q + 1 side by side
        pairs = (c + 1) // 2
        packed = u.new_zeros(16, 2 * pairs, k)
        packed[:, :c] = u
        u = packed.view(16, pairs, 2, k).transpose(2, 3)
    u = u.contiguous()
    pointers = (ctypes.c_void_p * len(parts))(*(p.data_ptr() for p in parts))
    info = (ctypes.c_int64 * (4 * len(parts)))(*(v for p in parts for v in (p.shape[1], p.stride(0), p.stride(2),
                                                                            p.stride(3))))
    threads = torch.get_num_threads()
    name = fused_name(m, storage, fused_isa(u.dtype))
    each = getattr(lib, name + "_scratch")(c, k)  # a multiple of 64 bytes
    scratch = torch.empty(threads * each + 64, dtype=torch.uint8)
    start = -scratch.data_ptr() % 64  # aligned to 64 bytes
    getattr(lib, name)(pointers, info, len(parts), n, h, w, padding, out.shape[1] // m, out.shape[2] // m,
                       u.data_ptr(), c, k, None if bias is None else bias.data_ptr(), out.data_ptr(), *out.stride()[:3],
                       scratch.data_ptr() + start, threads)


# --- the C source --------------------------------------------------------------------------------


def _combination(coefficients, names: list[str]) -> str:
    """``Σ c_k · names[k]`` over the coefficients that are not zero, as a C expression."""
    terms = []
    for c, name in zip(coefficients, names, strict=True):
        c = float(c)
        if c == 0.0:
            continue
        if c == 1.0:
            terms.append(f"+ {name}")
        elif c == -1.0:
            terms.append(f"- {name}")
        else:
            terms.append(f"{'+' if c > 0 else '-'} {abs(c)!r}f * {name}")
    expr = " ".join(terms)
    return expr[2:] if expr.startswith("+ ") else expr


def _both_passes(matrix: torch.Tensor, tile: str, store) -> list[str]:
    """X d Xᵀ for the r × t matrix X and a t × t tile held as ``tile[i * t + j]``, as C statements on
    vectors: down the tile's columns into ``u`` (u = X d), then along its rows (u Xᵀ), each of the r × r
    results written by the statement ``store(a, b, expression)``."""
    r, t = matrix.shape
    lines = [f"u[{a * t + j}] = {_combination(matrix[a], [f'{tile}[{k * t + j}]' for k in range(t)])};"
             for a in range(r) for j in range(t)]
    lines += [store(a, b, _combination(matrix[b], [f"u[{a * t + k}]" for k in range(t)])) for a in range(r) for b in range(r)]
    return lines


def _indented(lines: list[str], spaces: int) -> list[str]:
    return [" " * spaces + line for line in lines]


def _input_tile(m: int, storage: str, b_t: torch.Tensor, load: str, store: str, at: str) -> list[str]:
    """C statements for one tile of part ``x`` (image ``ni``, element strides ``sn``, ``sh``, ``sw``, top-left
    pixel at row ``r0``, column ``q0``, zero outside the ``h`` × ``w`` map): its t² pixels' addresses, then, ``L``
    channels at a time from ``cb = 0`` to ``cn``, their values by ``load`` and Bᵀ d B, each of the t² results
    written by ``store`` at the address ``at`` gives for tile position ``{k}``. Shared by the banded and the fused
    kernels."""
    t, ty = m + 2, _C_TYPE[storage]
    lines = [
        f"const {ty} *src[{t * t}];",
        f"for (int i = 0; i < {t}; ++i)",
        f"    for (int j = 0; j < {t}; ++j) {{",
        "        const int64_t r = r0 + i, q = q0 + j;",
        f"        src[i * {t} + j] = (r >= 0 && r < h && q >= 0 && q < w) ? x + ni * sn + r * sh + q * sw : 0;",
        "    }",
        "for (int64_t cb = 0; cb < cn; cb += L) {",
        "    const int64_t nl = cn - cb;",
        f"    vec d[{t * t}], u[{t * t}];",
        f"    for (int k = 0; k < {t * t}; ++k) d[k] = src[k] ? {load}(src[k] + cb, nl) : (vec){{0}};",
    ]
    lines += _indented(_both_passes(b_t, "d", lambda a, b, expr: f"{store}({at.format(k=a * t + b)}, {expr}, nl);"), 4)
    return lines + ["}"]


def _output_tile(m: int, a_t: torch.Tensor, product: str, load: str, load_bias: str, store: str, sh: str,
                 sw: str) -> list[str]:
    """C statements for one tile: ``L`` output channels at a time from ``kb = 0`` to ``k_total``, its t²
    products read by ``load`` from the address ``product`` (in terms of the position ``k``), Aᵀ m A plus the
    bias (float32, read by ``load_bias``; may be NULL), written by ``store`` to the m×m pixels from ``base``,
    ``sh`` and ``sw`` elements apart. Shared by the banded and the fused kernels."""
    t = m + 2
    lines = [
        "for (int64_t kb = 0; kb < k_total; kb += L) {",
        "    const int64_t nl = k_total - kb;",
        f"    vec mm[{t * t}], u[{m * t}];",
        f"    for (int k = 0; k < {t * t}; ++k) mm[k] = {load}({product}, nl);",
        f"    const vec bb = bias ? {load_bias}(bias + kb, nl) : (vec){{0}};",
    ]
    lines += _indented(_both_passes(a_t, "mm", lambda a, b, expr: f"{store}(base + {a} * {sh} + {b} * {sw} + kb, "
                                                                   f"bb + {expr}, nl);"), 4)
    return lines + ["}"]


_HEADER = """\
/* Winograd's transforms for ctsdg: F(4x4, 3x3) on float32, F(2x2, 3x3) on bfloat16 (src/ctsdg/winograd_native.py
   says what and why). Generated by ctsdg.winograd_native.c_source() from ctsdg.winograd.toom_cook: do not edit.
   Loaded with ctypes; the Python module below exists so that the file builds as an extension. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef L
#define L {lanes}  /* the AVX2 build (_winograd_native_avx2.c) takes 8 */
#endif
#include "_native_vectors.h"  /* the vector types, CLONES, load_float, store_float, load_bf16, store_bf16 */
"""

# The kernels built: (output tile m, storage of the activations, the transformed tiles and the products).
# F(4×4, 3×3) for float32 inference and the forward of trained layers; F(2×2, 3×3) for bf16 inference, whose
# transforms (entries 0 and ±1) keep bf16's rounding close to a direct convolution's (winograd.py).
VARIANTS = ((4, "float"), (2, "bf16"))
_C_TYPE = {"float": "float", "bf16": "uint16_t"}
# The fused kernels' tiles per step of the products, and per block (FUSED_BLOCK[m, storage])
FUSED_ROWS = 6
FUSED_BLOCK = {(4, "float"): 6, (2, "bf16"): 36}
# The fused kernels built: (m, storage, instruction set). F(4×4, 3×3) on float32 for AVX-512 and for AVX2 (with
# FMA: 16 output channels at a time, 6 tiles by 16 channels in 12 of its 16 vector registers); bf16 needs
# AVX512-BF16.
FUSED_VARIANTS = ((4, "float", "avx512"), (4, "float", "avx2"), (2, "bf16", "avx512"))


def kernel_names(m: int, storage: str) -> tuple[str, str]:
    """The C names of F(m×m, 3×3)'s input and output kernels on ``storage`` ("float" or "bf16")."""
    return f"ctsdg_f{m}_{storage}_input", f"ctsdg_f{m}_{storage}_output"


def _input_kernel(m: int, storage: str, b_t: torch.Tensor) -> list[str]:
    t, ty = m + 2, _C_TYPE[storage]
    lines = [
        f"/* F({m}x{m}, 3x3), {storage}: Bᵀ d B of the tiles of one band, on `threads` threads, for channels [c0, c0 + cn)",
        "   of v's c_total, read from one channels-last part x (element strides sn, sh, sw; channels contiguous). Tile",
        f"   p = (ni * tile_rows + tr) * tw + tc reads rows top + {m} tr + i and columns {m} tc - pad + j, zero outside the",
        f"   h × w map, and its {t * t} values of channel c go to v[(i * {t} + j) * tiles * c_total + p * c_total + c]. */",
        f"CLONES void {kernel_names(m, storage)[0]}(const {ty} *restrict x, int64_t sn, int64_t sh, int64_t sw,",
        "        int64_t h, int64_t w, int64_t top, int64_t pad, int64_t tile_rows, int64_t tw, int64_t c0, int64_t cn,",
        f"        {ty} *restrict v, int64_t tiles, int64_t c_total, int threads) {{",
        "    const int64_t plane = tiles * c_total;",
        "    #pragma omp parallel for num_threads(threads) schedule(static)",
        "    for (int64_t p = 0; p < tiles; ++p) {",
        "        const int64_t ni = p / (tile_rows * tw), tr = (p / tw) % tile_rows, tc = p % tw;",
        f"        const int64_t r0 = top + {m} * tr, q0 = {m} * tc - pad;",
        f"        {ty} *dst = v + p * c_total + c0;",
    ]
    lines += _indented(_input_tile(m, storage, b_t, f"load_{storage}", f"store_{storage}", "dst + {k} * plane + cb"), 8)
    return lines + ["    }", "}", ""]


def _output_kernel(m: int, storage: str, a_t: torch.Tensor) -> list[str]:
    t, ty = m + 2, _C_TYPE[storage]
    lines = [
        f"/* F({m}x{m}, 3x3), {storage}: Aᵀ m A (+ bias) of the tiles of one band, on `threads` threads: prod is ({t * t},",
        f"   tiles, k_total); tile p's {m}×{m} outputs go to rows {m} tr + a, columns {m} tc + b of image ni of out (element",
        "   strides sn, sh, sw, channels contiguous; out points at the band's first row). bias (float32) may be NULL. */",
        f"CLONES void {kernel_names(m, storage)[1]}(const {ty} *restrict prod, int64_t tiles, int64_t k_total,",
        f"        const float *restrict bias, {ty} *restrict out, int64_t sn, int64_t sh, int64_t sw,",
        "        int64_t tile_rows, int64_t tw, int threads) {",
        "    const int64_t plane = tiles * k_total;",
        "    #pragma omp parallel for num_threads(threads) schedule(static)",
        "    for (int64_t p = 0; p < tiles; ++p) {",
        "        const int64_t ni = p / (tile_rows * tw), tr = (p / tw) % tile_rows, tc = p % tw;",
        f"        {ty} *base = out + ni * sn + {m} * tr * sh + {m} * tc * sw;",
        f"        const {ty} *src = prod + p * k_total;",
    ]
    lines += _indented(_output_tile(m, a_t, "src + k * plane + kb", f"load_{storage}", "load_float", f"store_{storage}",
                                    "sh", "sw"), 8)
    return lines + ["    }", "}", ""]


_FUSED_HEADER = """\
/* Fused kernels (the caller checks the CPU; ctsdg_fused_built() says whether this compiler could build them):
   F(4x4, 3x3) on float32 with AVX-512F and with AVX2 and FMA, F(2x2, 3x3) on bf16 with AVX512-BF16. Blocks
   of tiles are transformed into a per-thread buffer, multiplied there by the transformed weight (float32 fused
   multiply-adds, or bf16 pair dot products summed in float32) and transformed back, so the transformed tiles and
   their products never go through memory. */
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 9 : __GNUC__ >= 10)
#include <immintrin.h>
#define FUSED_BUILT 1
#define FUSED_ROWS {rows}
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define AVX2 __attribute__((target("avx2,fma")))

/* m (FUSED_ROWS tiles x 64 channels, float32, rows m_row apart) = v (FUSED_ROWS tiles x c channels, rows v_row
   apart) x w (c x 64 channels, rows w_row apart), in float32 with AVX2 and FMA, 16 output channels at a time: 6 tiles
   by 16 channels of sums take 12 of its 16 vector registers */
AVX2 static inline void fused_products_float_avx2(const float *restrict v, int64_t v_row, const float *restrict w,
        int64_t w_row, int64_t c, float *restrict m, int64_t m_row) {{
    for (int j = 0; j < 64; j += 16) {{
        __m256 acc[FUSED_ROWS][2];
        for (int r = 0; r < FUSED_ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int64_t q = 0; q < c; ++q) {{
            const __m256 b0 = _mm256_loadu_ps(w + q * w_row + j), b1 = _mm256_loadu_ps(w + q * w_row + j + 8);
            for (int r = 0; r < FUSED_ROWS; ++r) {{
                const __m256 a = _mm256_broadcast_ss(v + r * v_row + q);
                acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
            }}
        }}
        for (int r = 0; r < FUSED_ROWS; ++r) {{
            _mm256_storeu_ps(m + r * m_row + j, acc[r][0]);
            _mm256_storeu_ps(m + r * m_row + j + 8, acc[r][1]);
        }}
    }}
}}

#if L == 16  /* the AVX-512 kernels: one vector of L lanes is one AVX-512 register (the AVX2 build has none) */
/* load_float, store_float, load_bf16 and store_bf16 with AVX-512's masked moves, and its bf16 rounding instruction
   (to nearest, ties to even; it also flushes float32 subnormals to zero); the first n of L lanes */
static inline __mmask16 fused_mask(int64_t n) {{
    return n >= L ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}}

AVX512 static inline vec fused_load_float(const float *p, int64_t n) {{
    return (vec)_mm512_maskz_loadu_ps(fused_mask(n), p);
}}

AVX512 static inline void fused_store_float(float *p, vec x, int64_t n) {{
    _mm512_mask_storeu_ps(p, fused_mask(n), (__m512)x);
}}

AVX512 static inline vec fused_load_bf16(const uint16_t *p, int64_t n) {{
    return (vec)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(fused_mask(n), p)), 16);
}}

AVX512BF16 static inline void fused_store_bf16(uint16_t *p, vec x, int64_t n) {{
    _mm256_mask_storeu_epi16(p, fused_mask(n), (__m256i)_mm512_cvtneps_pbh((__m512)x));
}}

/* m (FUSED_ROWS tiles x 64 channels, float32, rows m_row apart) = v (FUSED_ROWS tiles x c channels, rows v_row
   apart) x w (c x 64 channels, rows w_row apart), in float32 */
AVX512 static inline void fused_products_float(const float *restrict v, int64_t v_row, const float *restrict w,
        int64_t w_row, int64_t c, float *restrict m, int64_t m_row) {{
    __m512 acc[FUSED_ROWS][4];
    for (int r = 0; r < FUSED_ROWS; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
    for (int64_t q = 0; q < c; ++q) {{
        __m512 b[4];
        for (int j = 0; j < 4; ++j) b[j] = _mm512_loadu_ps(w + q * w_row + 16 * j);
        for (int r = 0; r < FUSED_ROWS; ++r) {{
            const __m512 a = _mm512_set1_ps(v[r * v_row + q]);
            for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
        }}
    }}
    for (int r = 0; r < FUSED_ROWS; ++r)
        for (int j = 0; j < 4; ++j) _mm512_storeu_ps(m + r * m_row + 16 * j, acc[r][j]);
}}

/* the same in bf16: v holds 2 pairs channels, w the pair of input channels 2q, 2q + 1 for each output channel side
   by side (pairs x 64 x 2), and each pair dot product is summed in float32 */
AVX512BF16 static inline void fused_products_bf16(const uint16_t *restrict v, int64_t v_row, const uint16_t *restrict w,
        int64_t w_row, int64_t pairs, float *restrict m, int64_t m_row) {{
    __m512 acc[FUSED_ROWS][4];
    for (int r = 0; r < FUSED_ROWS; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
    for (int64_t q = 0; q < pairs; ++q) {{
        __m512bh b[4];
        for (int j = 0; j < 4; ++j) b[j] = (__m512bh)_mm512_loadu_si512(w + q * w_row + 32 * j);
        for (int r = 0; r < FUSED_ROWS; ++r) {{
            int32_t pair;
            memcpy(&pair, v + r * v_row + 2 * q, sizeof pair);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
            for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], a, b[j]);
        }}
    }}
    for (int r = 0; r < FUSED_ROWS; ++r)
        for (int j = 0; j < 4; ++j) _mm512_storeu_ps(m + r * m_row + 16 * j, acc[r][j]);
}}
#endif
"""


def fused_name(m: int, storage: str, isa: str = "avx512") -> str:
    """The C name of the fused F(m×m, 3×3) kernel on ``storage`` for the instruction set ``isa`` ("avx512" or
    "avx2"); its scratch size is ``<name>_scratch``."""
    return f"ctsdg_f{m}_{storage}_fused" + ("" if isa == "avx512" else f"_{isa}")


def _fused_kernel(m: int, storage: str, isa: str, b_t: torch.Tensor, a_t: torch.Tensor) -> list[str]:
    t, ty, block = m + 2, _C_TYPE[storage], FUSED_BLOCK[m, storage]
    target = {("float", "avx512"): "AVX512", ("bf16", "avx512"): "AVX512BF16", ("float", "avx2"): "AVX2"}[storage, isa]
    name = fused_name(m, storage, isa)
    # with AVX2 the generic loads and stores (a part vector through memcpy); AVX-512's masked moves are its own
    load, store = ("fused_load_", "fused_store_") if isa == "avx512" else ("load_", "store_")
    if storage == "bf16":
        width = "2 * ((c + 1) / 2)"  # channels in pairs, an odd last one paired with zero
        product = ("fused_products_bf16(v + k * plane + r * cp, cp, weight + (k * (cp / 2) * k_total + k0) * 2, "
                   "2 * k_total, cp / 2, m + k * m_plane + r * k_total + k0, k_total);")
        weight = ("(16, c / 2 rounded up, k_total, 2) bf16, the transformed weight with its input channels in pairs "
                  "(a last odd channel paired with zero)")
    else:
        width = "c"
        product = (f"fused_products_float{'' if isa == 'avx512' else '_' + isa}(v + k * plane + r * cp, cp, "
                   "weight + (k * cp * k_total + k0), k_total, cp, m + k * m_plane + r * k_total + k0, k_total);")
        weight = "(36, c, k_total) float32, the transformed weight"
    lines = [
        f"/* bytes of scratch each thread of {name} needs: a block's products (float32) and tiles */",
        f"int64_t {name}_scratch(int64_t c, int64_t k_total) {{",
        f"    return (int64_t)({t * t} * {block} * k_total * sizeof(float)",
        f"                     + ({t * t} * {block} * {width} * sizeof({ty}) + 63) / 64 * 64);",
        "}",
        "",
        f"/* F({m}x{m}, 3x3), {storage}, fused: the 3x3 convolution (stride 1, padding pad) of the concatenation along",
        f"   channels of n_parts channels-last {storage} parts (parts[i]: info[4 i] channels, element strides",
        "   info[4 i + 1..3] for image, row, column; c channels in all) of n images h x w, on th x tw tiles, into out",
        f"   ({storage}, element strides osn, osh, osw, channels contiguous) + bias (float32, may be NULL). weight: {weight};",
        f"   k_total a multiple of 64. scratch: {name}_scratch(c, k_total) bytes, 64-byte aligned, for each thread. */",
        f"{target} void {name}(const {ty} *const *parts, const int64_t *info, int64_t n_parts, int64_t n, int64_t h,",
        f"        int64_t w, int64_t pad, int64_t th, int64_t tw, const {ty} *restrict weight, int64_t c, int64_t k_total,",
        f"        const float *restrict bias, {ty} *restrict out, int64_t osn, int64_t osh, int64_t osw, uint8_t *scratch,",
        "        int threads) {",
        f"    const int64_t tiles = n * th * tw, blocks = (tiles + {block} - 1) / {block}, cp = {width};",
        f"    const int64_t plane = {block} * cp, m_plane = {block} * k_total;",
        "    #pragma omp parallel num_threads(threads)",
        "    {",
        f"        uint8_t *mine = scratch + (size_t)omp_get_thread_num() * {name}_scratch(c, k_total);",
        "        float *m = (float *)mine;",
        f"        {ty} *v = ({ty} *)(mine + (size_t){t * t} * m_plane * sizeof(float));",
        "        #pragma omp for schedule(static)",
        "        for (int64_t blk = 0; blk < blocks; ++blk) {",
        f"            const int64_t p0 = blk * {block}, count = tiles - p0 < {block} ? tiles - p0 : {block};",
        f"            for (int64_t tile = 0; tile < {block}; ++tile) {{",
        f"                {ty} *dst = v + tile * cp;",
        "                if (tile >= count) {",
        f"                    for (int k = 0; k < {t * t}; ++k) memset(dst + k * plane, 0, (size_t)cp * sizeof({ty}));",
        "                    continue;",
        "                }",
        "                const int64_t p = p0 + tile, ni = p / (th * tw), tr = (p / tw) % th, tc = p % tw;",
        f"                const int64_t r0 = {m} * tr - pad, q0 = {m} * tc - pad;",
        "                int64_t c0 = 0;",
        "                for (int64_t part = 0; part < n_parts; ++part) {",
        "                    const int64_t cn = info[4 * part], sn = info[4 * part + 1], sh = info[4 * part + 2],",
        "                        sw = info[4 * part + 3];",
        f"                    const {ty} *x = parts[part];",
    ]
    lines += _indented(_input_tile(m, storage, b_t, load + storage, store + storage, "dst + {k} * plane + c0 + cb"), 20)
    lines += [
        "                    c0 += cn;",
        "                }",
        f"                for (int k = 0; k < {t * t}; ++k)  /* the channel that pairs with an odd last one */",
        "                    for (int64_t ci = c0; ci < cp; ++ci) dst[k * plane + ci] = 0;",
        "            }",
        f"            for (int k = 0; k < {t * t}; ++k)",
        "                for (int64_t k0 = 0; k0 < k_total; k0 += 64)",
        f"                    for (int64_t r = 0; r < {block}; r += FUSED_ROWS)",
        f"                        {product}",
        "            for (int64_t tile = 0; tile < count; ++tile) {",
        "                const int64_t p = p0 + tile, ni = p / (th * tw), tr = (p / tw) % th, tc = p % tw;",
        f"                {ty} *base = out + ni * osn + {m} * tr * osh + {m} * tc * osw;",
    ]
    lines += _indented(_output_tile(m, a_t, "m + k * m_plane + tile * k_total + kb", load + "float", load + "float",
                                    store + storage, "osh", "osw"), 16)
    lines += ["            }", "        }", "    }", "}", ""]
    return ["#if L == 16"] + lines + ["#endif", ""] if isa == "avx512" else lines


def c_source() -> str:
    """The C file: each of ``VARIANTS``' two kernels, with F(m×m, 3×3)'s Bᵀ and Aᵀ written into them as
    constants."""
    from .winograd import toom_cook

    lines = [_HEADER.format(lanes=LANES)]
    for m, storage in VARIANTS:
        b_t, _, a_t = toom_cook(m, 3)
        lines += _input_kernel(m, storage, b_t) + _output_kernel(m, storage, a_t)
    lines.append(_FUSED_HEADER.format(rows=FUSED_ROWS))
    for m, storage, isa in FUSED_VARIANTS:
        b_t, _, a_t = toom_cook(m, 3)
        lines += _fused_kernel(m, storage, isa, b_t, a_t)
    lines += ["#else", "#define FUSED_BUILT 0", "#endif", "", "int ctsdg_fused_built(void) { return FUSED_BUILT; }", ""]
    lines += ["#ifndef CTSDG_MODULE", "#define CTSDG_MODULE _winograd_native /* _winograd_native_avx2.c names its own */",
              "#endif", "CTSDG_PYTHON_MODULE(CTSDG_MODULE)"]
    return "\n".join(lines) + "\n"
