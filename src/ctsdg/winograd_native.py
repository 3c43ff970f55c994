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
_T, _M = 6, 4  # F(4×4, 3×3): 6×6 input tiles, 4×4 output tiles


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
    lib.ctsdg_winograd_input.argtypes = [ptr] + [i64] * 11 + [ptr, i64, i64, ctypes.c_int]
    lib.ctsdg_winograd_input.restype = None
    lib.ctsdg_winograd_output.argtypes = [ptr, i64, i64, ptr, ptr] + [i64] * 5 + [ctypes.c_int]
    lib.ctsdg_winograd_output.restype = None
    return lib


def fill(parts: tuple[torch.Tensor, ...], u: torch.Tensor, padding: int, out: torch.Tensor, band: int,
         bias: torch.Tensor | None) -> None:
    """``winograd._conv``'s work for F(4×4, 3×3) with the C transforms: the stride-1 3×3 convolution of
    ``parts`` ((N, C_i, H, W) float32 CPU tensors, read as their concatenation along channels) with the
    transformed weight ``u`` (36, C, K), written into ``out`` (N, 4·th, 4·tw, K), contiguous, ``band``
    tile rows at a time."""
    lib = kernels()
    threads = torch.get_num_threads()
    parts = tuple(p if p.stride(1) == 1 else p.contiguous(memory_format=torch.channels_last) for p in parts)
    n, c, k = parts[0].shape[0], u.shape[1], u.shape[2]
    h, w = parts[0].shape[-2:]
    th, tw = out.shape[1] // _M, out.shape[2] // _M
    u = u.contiguous()
    bias = None if bias is None else bias.detach().float().contiguous()
    osn, osh, osw = out.stride()[:3]
    most = n * min(band, th) * tw  # tiles in the largest band
    v_all = torch.empty(_T * _T * most * c)  # one scratch for every band
    prod_all = torch.empty(_T * _T * most * k)
    for t0 in range(0, th, band):
        rows = min(th, t0 + band) - t0
        tiles = n * rows * tw
        v = v_all[:_T * _T * tiles * c].view(_T * _T, tiles, c)
        first = 0
        for part in parts:
            sn, _, sh, sw = part.stride()
            lib.ctsdg_winograd_input(part.data_ptr(), sn, sh, sw, h, w, _M * t0 - padding, padding, rows, tw, first,
                                     part.shape[1], v.data_ptr(), tiles, c, threads)
            first += part.shape[1]
        prod = torch.bmm(v, u, out=prod_all[:_T * _T * tiles * k].view(_T * _T, tiles, k))
        lib.ctsdg_winograd_output(prod.data_ptr(), tiles, k, None if bias is None else bias.data_ptr(),
                                  out[:, _M * t0:].data_ptr(), osn, osh, osw, rows, tw, threads)


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
/* Winograd F(4x4, 3x3)'s transforms for ctsdg (src/ctsdg/winograd_native.py says what and why).
   Generated by ctsdg.winograd_native.c_source() from ctsdg.winograd.toom_cook(4, 3): do not edit.
   Loaded with ctypes; the Python module below exists so that the file builds as an extension. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define L {lanes}
typedef float vec __attribute__((vector_size(4 * L)));
typedef float vec_u __attribute__((vector_size(4 * L), aligned(4)));

/* one build per instruction set, picked when the library is loaded */
#if defined(__x86_64__) && defined(__ELF__) && (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 12)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline vec load(const float *p, int64_t n) {{
    if (n >= L) return *(const vec_u *)p;
    vec r = {{0}};
    memcpy(&r, p, (size_t)n * sizeof(float));
    return r;
}}

static inline void store(float *p, vec x, int64_t n) {{
    if (n >= L) *(vec_u *)p = x;
    else memcpy(p, &x, (size_t)n * sizeof(float));
}}
"""


def c_source() -> str:
    """The C file: the two kernels with F(4×4, 3×3)'s Bᵀ and Aᵀ written into them as constants."""
    from .winograd import toom_cook

    b_t, _, a_t = toom_cook(_M, 3)
    t, m = _T, _M
    lines = [_HEADER.format(lanes=LANES)]
    lines += [
        "/* Bᵀ d B of the tiles of one band, on `threads` threads, for channels [c0, c0 + cn) of v's c_total, read from",
        "   one channels-last part x (element strides sn, sh, sw; channels contiguous). Tile p = (ni * tile_rows + tr)",
        "   * tw + tc reads rows top + 4 tr + i and columns 4 tc - pad + j, zero outside the h × w map, and its 36",
        "   values of channel c go to v[(i * 6 + j) * tiles * c_total + p * c_total + c]. */",
        "CLONES void ctsdg_winograd_input(const float *restrict x, int64_t sn, int64_t sh, int64_t sw, int64_t h,",
        "        int64_t w, int64_t top, int64_t pad, int64_t tile_rows, int64_t tw, int64_t c0, int64_t cn,",
        "        float *restrict v, int64_t tiles, int64_t c_total, int threads) {",
        "    const int64_t plane = tiles * c_total;",
        "    #pragma omp parallel for num_threads(threads) schedule(static)",
        "    for (int64_t p = 0; p < tiles; ++p) {",
        "        const int64_t ni = p / (tile_rows * tw), tr = (p / tw) % tile_rows, tc = p % tw;",
        "        const int64_t r0 = top + 4 * tr, q0 = 4 * tc - pad;",
        f"        const float *src[{t * t}];",
        f"        for (int i = 0; i < {t}; ++i)",
        f"            for (int j = 0; j < {t}; ++j) {{",
        "                const int64_t r = r0 + i, q = q0 + j;",
        f"                src[i * {t} + j] = (r >= 0 && r < h && q >= 0 && q < w) ? x + ni * sn + r * sh + q * sw : 0;",
        "            }",
        "        float *dst = v + p * c_total + c0;",
        "        for (int64_t cb = 0; cb < cn; cb += L) {",
        "            const int64_t nl = cn - cb;",
        f"            vec d[{t * t}], u[{t * t}];",
        f"            for (int k = 0; k < {t * t}; ++k) d[k] = src[k] ? load(src[k] + cb, nl) : (vec){{0}};",
    ]
    lines += _both_passes(b_t, "d", lambda a, b, expr: f"store(dst + {a * t + b} * plane + cb, {expr}, nl);")
    lines += [
        "        }",
        "    }",
        "}",
        "",
        "/* Aᵀ m A (+ bias) of the tiles of one band, on `threads` threads: prod is (36, tiles, k_total); tile p's 4×4",
        "   outputs go to rows 4 tr + a, columns 4 tc + b of image ni of out (element strides sn, sh, sw, channels",
        "   contiguous; out points at the band's first row). bias may be NULL. */",
        "CLONES void ctsdg_winograd_output(const float *restrict prod, int64_t tiles, int64_t k_total,",
        "        const float *restrict bias, float *restrict out, int64_t sn, int64_t sh, int64_t sw,",
        "        int64_t tile_rows, int64_t tw, int threads) {",
        "    const int64_t plane = tiles * k_total;",
        "    #pragma omp parallel for num_threads(threads) schedule(static)",
        "    for (int64_t p = 0; p < tiles; ++p) {",
        "        const int64_t ni = p / (tile_rows * tw), tr = (p / tw) % tile_rows, tc = p % tw;",
        "        float *base = out + ni * sn + 4 * tr * sh + 4 * tc * sw;",
        "        const float *src = prod + p * k_total;",
        "        for (int64_t kb = 0; kb < k_total; kb += L) {",
        "            const int64_t nl = k_total - kb;",
        f"            vec mm[{t * t}], u[{m * t}];",
        f"            for (int k = 0; k < {t * t}; ++k) mm[k] = load(src + k * plane + kb, nl);",
        "            const vec bb = bias ? load(bias + kb, nl) : (vec){0};",
    ]
    lines += _both_passes(a_t, "mm", lambda a, b, expr: f"store(base + {a} * sh + {b} * sw + kb, bb + {expr}, nl);")
    lines += [
        "        }",
        "    }",
        "}",
        "",
        'static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_winograd_native", NULL, -1, NULL};',
        "",
        "PyMODINIT_FUNC PyInit__winograd_native(void) { return PyModule_Create(&module); }",
    ]
    return "\n".join(lines) + "\n"
