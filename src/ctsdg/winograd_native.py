"""F(4×4, 3×3) Winograd convolution with its transforms in C (issue 7; docs/speed.md, "A fifteenth look").

:func:`ctsdg.winograd.conv3x3` works band by band: gather the band's 6×6 input tiles, transform them
(Bᵀ d B), run 36 channel products, transform back (Aᵀ m A) and add the bias. In eager PyTorch the
gather is one copy, each transform one dense product with a Kronecker matrix (kron(Bᵀ, Bᵀ) is 36 × 36,
of which 484 of 1296 entries are not zero) and the bias one more pass, and these passes move memory
rather than compute: on a Zen 4 they took as long as the channel products themselves in Bi-GFF's gates.

``_winograd_native.c``, compiled when the package is installed (``setup.py``; a C compiler is needed,
and without one the package installs and runs the eager transforms), does the gather and input transform
in one pass and the output transform with the bias in another, 16 channels at a time, with only the
non-zero terms of ``winograd.toom_cook``'s matrices, applied as two 1-D passes. The channel products stay
``torch.bmm``. The kernels split their tiles among torch's number of threads with OpenMP. They are linked
against ``libgomp.so.1``, and since torch has already loaded its own copy under that name, the loader
binds them to it: they run on torch's own thread team. With Python threads instead, each call competed
with torch's workers, which keep spinning for a while after each product (Bi-GFF's output transform:
1.12 against 0.68 ms per band; docs/speed_history.md, "A fifteenth look").

The outputs are those of the eager transforms up to float rounding (both within Winograd's own error,
``tests/test_winograd_native.py``). ``winograd.NATIVE = False`` or ``CTSDG_NATIVE=0`` in the
environment turns the C kernels off.

The C file is generated from ``toom_cook``'s matrices by :func:`c_source`; after changing either, regenerate it
with ``python -c "from ctsdg.winograd_native import c_source; print(c_source(), end='')" >
src/ctsdg/_winograd_native.c`` and reinstall (a test checks that the two agree).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

import torch

LANES = 16  # channels per vector in the kernels
_STORAGE = {torch.float32: "float", torch.bfloat16: "bf16"}


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None where the extension was not built (no C compiler at install time)."""
    spec = importlib.util.find_spec("ctsdg._winograd_native")
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
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
    if hasattr(lib, "ctsdg_f2_bf16_fused_built"):  # a library built from an older C file has neither
        lib.ctsdg_f2_bf16_fused_built.restype = ctypes.c_int
        lib.ctsdg_f2_bf16_fused.argtypes = [ptr, ptr] + [i64] * 7 + [ptr, i64, i64, ptr, ptr, i64, i64, i64, ptr,
                                                                     ctypes.c_int]
        lib.ctsdg_f2_bf16_fused_scratch.argtypes = [i64, i64]
        lib.ctsdg_f2_bf16_fused_scratch.restype = i64
        lib.ctsdg_f2_bf16_fused.restype = None
    return lib


@functools.cache
def fused_available() -> bool:
    """Whether the fused bf16 F(2×2, 3×3) kernel runs here: built (a compiler that knows AVX512-BF16) and a
    CPU that has it."""
    lib = kernels()
    has = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return (lib is not None and hasattr(lib, "ctsdg_f2_bf16_fused_built") and bool(lib.ctsdg_f2_bf16_fused_built())
            and has is not None and bool(has()))


def fused(parts: tuple[torch.Tensor, ...], u: torch.Tensor, padding: int, out: torch.Tensor,
          bias: torch.Tensor | None) -> None:
    """F(2×2, 3×3) in bf16 in one pass (:func:`fused_available`): the stride-1 3×3 convolution of ``parts``
    (cast to bf16, read as their concatenation along channels) with ``u`` (16, C, K) bf16, K a multiple of
    64, written into ``out`` (N, 2·th, 2·tw, K) bf16, contiguous."""
    lib = kernels()
    parts = tuple(p.to(torch.bfloat16) if p.stride(1) == 1
                  else p.to(torch.bfloat16, memory_format=torch.channels_last) for p in parts)
    n, c, k = parts[0].shape[0], u.shape[1], u.shape[2]
    h, w = parts[0].shape[-2:]
    pairs = (c + 1) // 2
    packed = u.new_zeros(16, 2 * pairs, k)
    packed[:, :c] = u
    packed = packed.view(16, pairs, 2, k).transpose(2, 3).contiguous()  # (16, pairs, K, 2)
    pointers = (ctypes.c_void_p * len(parts))(*(p.data_ptr() for p in parts))
    info = (ctypes.c_int64 * (4 * len(parts)))(*(v for p in parts for v in (p.shape[1], p.stride(0), p.stride(2),
                                                                            p.stride(3))))
    bias = None if bias is None else bias.detach().float().contiguous()
    threads = torch.get_num_threads()
    each = lib.ctsdg_f2_bf16_fused_scratch(pairs, k)  # a multiple of 64 bytes
    scratch = torch.empty(threads * each + 64, dtype=torch.uint8)
    start = -scratch.data_ptr() % 64  # aligned to 64 bytes
    lib.ctsdg_f2_bf16_fused(pointers, info, len(parts), n, h, w, padding, out.shape[1] // 2, out.shape[2] // 2,
                            packed.data_ptr(), pairs, k, None if bias is None else bias.data_ptr(), out.data_ptr(),
                            *out.stride()[:3], scratch.data_ptr() + start, threads)


def fill(parts: tuple[torch.Tensor, ...], u: torch.Tensor, padding: int, out: torch.Tensor, band: int,
         bias: torch.Tensor | None) -> None:
    """``winograd._conv``'s work with the C transforms: the stride-1 3×3 convolution of ``parts`` ((N, C_i, H,
    W) CPU tensors, read as their concatenation along channels) with the transformed weight ``u`` (36, C, K)
    of F(4×4, 3×3) in float32 or (16, C, K) of F(2×2, 3×3) in bf16, written into ``out`` (N, m·th, m·tw, K),
    contiguous, in ``u``'s dtype, ``band`` tile rows at a time. The parts are cast to that dtype."""
    lib = kernels()
    m, storage = {36: 4, 16: 2}[u.shape[0]], _STORAGE[u.dtype]
    t = m + 2
    kernel_in, kernel_out = (getattr(lib, name) for name in kernel_names(m, storage))
    threads = torch.get_num_threads()
    parts = tuple(p.to(u.dtype) if p.stride(1) == 1 else p.to(u.dtype, memory_format=torch.channels_last)
                  for p in parts)
    n, c, k = parts[0].shape[0], u.shape[1], u.shape[2]
    h, w = parts[0].shape[-2:]
    th, tw = out.shape[1] // m, out.shape[2] // m
    u = u.contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
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
    lines = [f"            u[{a * t + j}] = {_combination(matrix[a], [f'{tile}[{k * t + j}]' for k in range(t)])};"
             for a in range(r) for j in range(t)]
    lines += ["            " + store(a, b, _combination(matrix[b], [f"u[{a * t + k}]" for k in range(t)]))
              for a in range(r) for b in range(r)]
    return lines


_HEADER = """\
/* Winograd's transforms for ctsdg: F(4x4, 3x3) on float32, F(2x2, 3x3) on bfloat16 (src/ctsdg/winograd_native.py
   says what and why). Generated by ctsdg.winograd_native.c_source() from ctsdg.winograd.toom_cook: do not edit.
   Loaded with ctypes; the Python module below exists so that the file builds as an extension. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define L {lanes}
typedef float vec __attribute__((vector_size(4 * L)));
typedef float vec_u __attribute__((vector_size(4 * L), aligned(4)));
typedef uint32_t bits __attribute__((vector_size(4 * L)));
typedef uint16_t half __attribute__((vector_size(2 * L)));
typedef uint16_t half_u __attribute__((vector_size(2 * L), aligned(2)));

/* one build per instruction set, picked when the library is loaded */
#if defined(__x86_64__) && defined(__ELF__) && (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 12)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline vec load_float(const float *p, int64_t n) {{
    if (n >= L) return *(const vec_u *)p;
    vec r = {{0}};
    memcpy(&r, p, (size_t)n * sizeof(float));
    return r;
}}

static inline void store_float(float *p, vec x, int64_t n) {{
    if (n >= L) *(vec_u *)p = x;
    else memcpy(p, &x, (size_t)n * sizeof(float));
}}

/* bfloat16 is the upper half of a float32: widening is a shift, narrowing rounds to nearest even (as torch
   does) and keeps NaN a NaN. */
static inline vec load_bf16(const uint16_t *p, int64_t n) {{
    half h = {{0}};
    if (n >= L) h = *(const half_u *)p;
    else memcpy(&h, p, (size_t)n * sizeof(uint16_t));
    return (vec)(__builtin_convertvector(h, bits) << 16);
}}

static inline void store_bf16(uint16_t *p, vec x, int64_t n) {{
    bits b = (bits)x;
    const bits nan = (bits)(x != x);
    b = ((b + 0x7fffu + ((b >> 16) & 1u)) & ~nan) | (0x7fc00000u & nan);
    const half h = __builtin_convertvector(b >> 16, half);
    if (n >= L) *(half_u *)p = h;
    else memcpy(p, &h, (size_t)n * sizeof(uint16_t));
}}
"""

# The kernels built: (output tile m, storage of the activations, the transformed tiles and the products).
# F(4×4, 3×3) for float32 inference and the forward of trained layers; F(2×2, 3×3) for bf16 inference, whose
# transforms (entries 0 and ±1) keep bf16's rounding close to a direct convolution's (winograd.py).
VARIANTS = ((4, "float"), (2, "bf16"))
_C_TYPE = {"float": "float", "bf16": "uint16_t"}
FUSED_ROWS, FUSED_BLOCK = 6, 36  # the fused bf16 kernel's tiles per product step and per block


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
        f"        const {ty} *src[{t * t}];",
        f"        for (int i = 0; i < {t}; ++i)",
        f"            for (int j = 0; j < {t}; ++j) {{",
        "                const int64_t r = r0 + i, q = q0 + j;",
        f"                src[i * {t} + j] = (r >= 0 && r < h && q >= 0 && q < w) ? x + ni * sn + r * sh + q * sw : 0;",
        "            }",
        f"        {ty} *dst = v + p * c_total + c0;",
        "        for (int64_t cb = 0; cb < cn; cb += L) {",
        "            const int64_t nl = cn - cb;",
        f"            vec d[{t * t}], u[{t * t}];",
        f"            for (int k = 0; k < {t * t}; ++k) d[k] = src[k] ? load_{storage}(src[k] + cb, nl) : (vec){{0}};",
    ]
    lines += _both_passes(b_t, "d", lambda a, b, expr: f"store_{storage}(dst + {a * t + b} * plane + cb, {expr}, nl);")
    return lines + ["        }", "    }", "}", ""]


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
        "        for (int64_t kb = 0; kb < k_total; kb += L) {",
        "            const int64_t nl = k_total - kb;",
        f"            vec mm[{t * t}], u[{m * t}];",
        f"            for (int k = 0; k < {t * t}; ++k) mm[k] = load_{storage}(src + k * plane + kb, nl);",
        "            const vec bb = bias ? load_float(bias + kb, nl) : (vec){0};",
    ]
    lines += _both_passes(a_t, "mm",
                          lambda a, b, expr: f"store_{storage}(base + {a} * sh + {b} * sw + kb, bb + {expr}, nl);")
    return lines + ["        }", "    }", "}", ""]


_FUSED_HEADER = """\
/* F(2x2, 3x3) in bf16 in one pass, for CPUs with AVX512-BF16 (ctsdg_f2_bf16_fused_built() says whether this
   compiler could build it; the caller checks the CPU): blocks of FUSED_BLOCK tiles are transformed into a
   per-thread buffer, multiplied there by the transformed weight with bf16 pair dot products summed in float32,
   and transformed back, so the transformed tiles and their products never go through memory. */
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 9 : __GNUC__ >= 10)
#include <immintrin.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#define FUSED_BUILT 1
#define FUSED_ROWS {rows}
#define FUSED_BLOCK {block}
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* load_bf16 and store_bf16 with AVX-512's masked moves and its bf16 rounding instruction (to nearest, ties to
   even; it also flushes float32 subnormals to zero) */
AVX512BF16 static inline vec fused_load(const uint16_t *p, int64_t n) {{
    const __mmask16 mask = n >= L ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
    return (vec)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p)), 16);
}}

AVX512BF16 static inline void fused_store(uint16_t *p, vec x, int64_t n) {{
    const __mmask16 mask = n >= L ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
    _mm256_mask_storeu_epi16(p, mask, (__m256i)_mm512_cvtneps_pbh((__m512)x));
}}

/* bytes of scratch each thread of ctsdg_f2_bf16_fused needs: a block's products (float32) and tiles (bf16) */
int64_t ctsdg_f2_bf16_fused_scratch(int64_t pairs, int64_t k_total) {{
    return (int64_t)(16 * FUSED_BLOCK * k_total * sizeof(float) + (16 * FUSED_BLOCK * 2 * pairs * sizeof(uint16_t) + 63) / 64 * 64);
}}

/* m (FUSED_ROWS tiles x 64 channels, float32, rows m_row apart) = v (FUSED_ROWS tiles x 2 pairs channels, bf16,
   rows v_row apart) x w (pairs x 64 channels x 2, bf16: the pair of input channels 2q, 2q + 1 for each output
   channel side by side, rows w_row apart). */
AVX512BF16 static inline void fused_products(const uint16_t *restrict v, int64_t v_row, const uint16_t *restrict w,
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
"""


def _fused_kernel(b_t: torch.Tensor, a_t: torch.Tensor) -> list[str]:
    t = 4
    lines = [_FUSED_HEADER.format(rows=FUSED_ROWS, block=FUSED_BLOCK)]
    lines += [
        "/* The 3x3 convolution (stride 1, padding pad) of the concatenation along channels of n_parts channels-last",
        "   bf16 parts (parts[i]: info[4 i] channels, element strides info[4 i + 1..3] for image, row, column) of",
        "   n images h x w, by F(2x2, 3x3) on th x tw tiles, into out (bf16, element strides osn, osh, osw, channels",
        "   contiguous) + bias (float32, may be NULL). weight: (16, pairs, k_total, 2) bf16, the transformed weight",
        "   with its input channels in pairs (a last odd channel paired with zero); k_total a multiple of 64. scratch:",
        "   ctsdg_f2_bf16_fused_scratch(pairs, k_total) bytes, 64-byte aligned, for each of the threads. */",
        "AVX512BF16 void ctsdg_f2_bf16_fused(const uint16_t *const *parts, const int64_t *info, int64_t n_parts,",
        "        int64_t n, int64_t h, int64_t w, int64_t pad, int64_t th, int64_t tw, const uint16_t *restrict weight,",
        "        int64_t pairs, int64_t k_total, const float *restrict bias, uint16_t *restrict out, int64_t osn,",
        "        int64_t osh, int64_t osw, uint8_t *scratch, int threads) {",
        "    const int64_t tiles = n * th * tw, blocks = (tiles + FUSED_BLOCK - 1) / FUSED_BLOCK, cp = 2 * pairs;",
        "    const int64_t plane = FUSED_BLOCK * cp, m_plane = FUSED_BLOCK * k_total;",
        "    #pragma omp parallel num_threads(threads)",
        "    {",
        "#ifdef _OPENMP",
        "        uint8_t *mine = scratch + (size_t)omp_get_thread_num() * ctsdg_f2_bf16_fused_scratch(pairs, k_total);",
        "#else",
        "        uint8_t *mine = scratch;",
        "#endif",
        "        float *m = (float *)mine;",
        "        uint16_t *v = (uint16_t *)(mine + (size_t)16 * m_plane * sizeof(float));",
        "        #pragma omp for schedule(static)",
        "        for (int64_t blk = 0; blk < blocks; ++blk) {",
        "            const int64_t p0 = blk * FUSED_BLOCK, count = tiles - p0 < FUSED_BLOCK ? tiles - p0 : FUSED_BLOCK;",
        "            for (int64_t tile = 0; tile < FUSED_BLOCK; ++tile) {",
        "                uint16_t *dst = v + tile * cp;",
        "                if (tile >= count) {",
        "                    for (int k = 0; k < 16; ++k) memset(dst + k * plane, 0, (size_t)cp * sizeof(uint16_t));",
        "                    continue;",
        "                }",
        "                const int64_t p = p0 + tile, ni = p / (th * tw), tr = (p / tw) % th, tc = p % tw;",
        "                const int64_t r0 = 2 * tr - pad, q0 = 2 * tc - pad;",
        "                int64_t c0 = 0;",
        "                for (int64_t part = 0; part < n_parts; ++part) {",
        "                    const int64_t cn = info[4 * part], sn = info[4 * part + 1], sh = info[4 * part + 2],",
        "                        sw = info[4 * part + 3];",
        "                    const uint16_t *x = parts[part], *src[16];",
        f"                    for (int i = 0; i < {t}; ++i)",
        f"                        for (int j = 0; j < {t}; ++j) {{",
        "                            const int64_t r = r0 + i, q = q0 + j;",
        f"                            src[i * {t} + j] = (r >= 0 && r < h && q >= 0 && q < w) ? x + ni * sn + r * sh + q * sw : 0;",
        "                        }",
        "                    for (int64_t cb = 0; cb < cn; cb += L) {",
        "                        const int64_t nl = cn - cb;",
        "                        vec d[16], u[16];",
        "                        for (int k = 0; k < 16; ++k) d[k] = src[k] ? fused_load(src[k] + cb, nl) : (vec){0};",
    ]
    lines += ["        " + line for line in
              _both_passes(b_t, "d", lambda a, b, expr: f"fused_store(dst + {a * t + b} * plane + c0 + cb, {expr}, nl);")]
    lines += [
        "                    }",
        "                    c0 += cn;",
        "                }",
        "                if (c0 < cp)",
        "                    for (int k = 0; k < 16; ++k) dst[k * plane + c0] = 0;",
        "            }",
        "            for (int k = 0; k < 16; ++k)",
        "                for (int64_t k0 = 0; k0 < k_total; k0 += 64)",
        "                    for (int64_t r = 0; r < FUSED_BLOCK; r += FUSED_ROWS)",
        "                        fused_products(v + k * plane + r * cp, cp, weight + (k * pairs * k_total + k0) * 2,",
        "                                       2 * k_total, pairs, m + k * m_plane + r * k_total + k0, k_total);",
        "            for (int64_t tile = 0; tile < count; ++tile) {",
        "                const int64_t p = p0 + tile, ni = p / (th * tw), tr = (p / tw) % th, tc = p % tw;",
        "                uint16_t *base = out + ni * osn + 2 * tr * osh + 2 * tc * osw;",
        "                for (int64_t kb = 0; kb < k_total; kb += L) {",
        "                    const int64_t nl = k_total - kb;",
        "                    vec mm[16], u[8];",
        "                    for (int k = 0; k < 16; ++k) mm[k] = load_float(m + k * m_plane + tile * k_total + kb, nl);",
        "                    const vec bb = bias ? load_float(bias + kb, nl) : (vec){0};",
    ]
    lines += ["        " + line for line in
              _both_passes(a_t, "mm", lambda a, b, expr: f"fused_store(base + {a} * osh + {b} * osw + kb, bb + {expr}, nl);")]
    lines += [
        "                }",
        "            }",
        "        }",
        "    }",
        "}",
        "#else",
        "#define FUSED_BUILT 0",
        "#endif",
        "",
        "int ctsdg_f2_bf16_fused_built(void) { return FUSED_BUILT; }",
        "",
    ]
    return lines


def c_source() -> str:
    """The C file: each of ``VARIANTS``' two kernels, with F(m×m, 3×3)'s Bᵀ and Aᵀ written into them as
    constants."""
    from .winograd import toom_cook

    lines = [_HEADER.format(lanes=LANES)]
    for m, storage in VARIANTS:
        b_t, _, a_t = toom_cook(m, 3)
        lines += _input_kernel(m, storage, b_t) + _output_kernel(m, storage, a_t)
    b_t, _, a_t = toom_cook(2, 3)
    lines += _fused_kernel(b_t, a_t)
    lines += [
        'static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_winograd_native", NULL, -1, NULL};',
        "",
        "PyMODINIT_FUNC PyInit__winograd_native(void) { return PyModule_Create(&module); }",
    ]
    return "\n".join(lines) + "\n"
