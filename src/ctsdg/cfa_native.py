"""Region affinity learning's elementwise work in C (issue 7; docs/speed_history.md, "A seventeenth look").

In inference, :func:`ctsdg.cfa.region_affinity` spends as long on passes over the (queries × keys) attention
as on its two matrix products: the nine shifted Gram slices summed into scores (two passes through a buffer
of sums along x, two more along y), the key scale, the logit floor, the softmax, the authors' clamp, and E,
the attention plus three shifted copies (two more passes). Each pass reads and writes a block of several
megabytes, more than a core's L2 cache. ``_cfa_native.c``, compiled when the package is installed
(``setup.py``; without a C compiler the package installs and runs the torch path), has two kernels, each on
float32 and on bf16:

- :func:`attention`: for each query of a block of query rows, its scores from the nine slices of the Gram
  rows, times the key scale, the floored softmax and the clamp, in one pass through a buffer of one query's
  logits (16 KiB at a 256² input);
- :func:`e_rows`: E in one pass.

Threads take whole query columns, so that the Gram rows one query row reads are still in the cache for the
next two. On a Zen 4, per round, a 512² forward ran 1.150× as fast in fp32 and 1.102× in bf16, a 256² one
1.022× and 1.034× (docs/speed_history.md, "A seventeenth look").

On x86-64 the file is also built with 8 lanes per vector for AVX2 (``_cfa_native_avx2.c``), which :func:`kernels`
loads where torch runs its AVX2 code: with 16 lanes on AVX2, GCC moves each vector through the stack between
operations, and the kernels ran slower than the torch path (a 256² forward 0.949× as fast with them; with 8 lanes
1.057×, per round; docs/speed_history.md, "A nineteenth look").

Both sum in float32 in the order of the torch path, so float32 scores are the same to the bit; the softmax's
exponential is the kernel's own (within a few ulp of torch's). On bf16 they read bf16 and round once when
they store, where torch's bf16 ops round after each op. The kernels run on torch's OpenMP thread team, like
``winograd_native``'s (linked against ``libgomp.so.1``, which torch has already loaded). ``cfa.NATIVE = False``
or ``CTSDG_NATIVE=0`` in the environment turns them off. RAL's backward in training keeps the torch path, which
gives it the raw scores; so does a forward whose scores and attention differ in dtype (training under bf16
autocast).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .cpu import compiled, torch_runs_avx2

_STORAGE = {torch.float32: "float", torch.bfloat16: "bf16"}


# Where torch runs its AVX2 code, the kernels' 8-lane AVX2 build (False: the AVX2 clone of the 16-lane one)
AVX2_BUILD = True


def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None where the extension was not built (no C compiler at install time): where
    torch runs its AVX2 code (a CPU without AVX-512, or ``ATEN_CPU_CAPABILITY=avx2``), their 8-lane AVX2 build
    (``_cfa_native_avx2.c``) if there is one and ``AVX2_BUILD``."""
    return (AVX2_BUILD and torch_runs_avx2() and load("ctsdg._cfa_native_avx2")) or load("ctsdg._cfa_native")


@functools.cache
def load(module: str) -> ctypes.CDLL | None:
    """One build of the kernels (``"ctsdg._cfa_native"`` or ``"ctsdg._cfa_native_avx2"``) with its functions'
    argument types set, or None where it was not built."""
    lib = compiled(module)
    if lib is None:
        return None
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    for storage in _STORAGE.values():
        attention_kernel = getattr(lib, f"ctsdg_ral_attention_{storage}")
        attention_kernel.argtypes = [ptr] + [i64] * 3 + [ptr, ptr] + [i64] * 3 + [f32, f32, ptr, ctypes.c_int]
        attention_kernel.restype = None
        e_kernel = getattr(lib, f"ctsdg_ral_e_rows_{storage}")
        e_kernel.argtypes = [ptr] + [i64] * 6 + [ptr, ctypes.c_int]
        e_kernel.restype = None
    return lib


def available(t: torch.Tensor) -> bool:
    """Whether the kernels can take ``t``: a CPU tensor (not on the meta device, say) of float32 or bf16, the
    extension built."""
    return t.device.type == "cpu" and t.dtype in _STORAGE and kernels() is not None


def attention(grams: list[torch.Tensor], scale: torch.Tensor, hs: int, ws: int, out: torch.Tensor,
              floor: float, clamp: float, scratch: torch.Tensor) -> None:
    """Ŝ of the m = len(grams) - 2 query rows of a block, for one image: ``grams[r]`` the Gram rows of padded query
    row r, (ws + 2, (hs + 2)(ws + 2)) contiguous; ``scale`` (hs·ws) the key scale; ``out`` (m, ws, hs, ws) with its
    keys along x contiguous, any other strides, all in one dtype; ``floor`` the logit floor, ``clamp`` the
    attention's least value, ``scratch`` float32 with at least hs·ws elements per torch thread."""
    threads = torch.get_num_threads()
    if scratch.dtype != torch.float32 or scratch.numel() < threads * hs * ws or out.stride(-1) != 1:
        raise ValueError("attention: scratch too small or keys not contiguous in out")
    pointers = (ctypes.c_void_p * len(grams))(*(g.data_ptr() for g in grams))
    kernel = getattr(kernels(), f"ctsdg_ral_attention_{_STORAGE[out.dtype]}")
    kernel(pointers, len(grams) - 2, hs, ws, scale.contiguous().data_ptr(), out.data_ptr(), *out.stride()[:3],
           floor, clamp, scratch.data_ptr(), threads)


def e_rows(p: torch.Tensor, out: torch.Tensor) -> None:
    """E of the zero-padded attention rows ``p`` (t, ws + 2, hs + 2, ws + 2), keys along x contiguous, into ``out``
    (t - 1, ws + 1, hs + 1, ws + 1), contiguous, same dtype (see :func:`ctsdg.cfa._e_rows`)."""
    t, wp, hp, _ = p.shape
    if p.stride(-1) != 1 or not out.is_contiguous():
        raise ValueError("e_rows: keys not contiguous in p, or out not contiguous")
    kernel = getattr(kernels(), f"ctsdg_ral_e_rows_{_STORAGE[p.dtype]}")
    kernel(p.data_ptr(), *p.stride()[:3], t - 1, hp - 2, wp - 2, out.data_ptr(), torch.get_num_threads())
