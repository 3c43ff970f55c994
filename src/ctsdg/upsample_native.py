"""The decoders' bilinear ×2 and mask product in C (issue 7; docs/speed_history.md, "An eighteenth look").

Each decoder step of the fast path (``Generator._decode_fast``) starts with Concat(up(x) ⊙ M, skip): the bilinear
×2 of the previous step's output, times the one-channel mask upsampled by nearest, next to the skip. In torch that
is ``F.interpolate`` into a new map, then ``torch.mul`` into the concatenation: the largest map of the step written
twice and read once more. Under bf16 autocast torch's bilinear ×2 of a channels-last map is also slower than in
float32 (64 channels from 128² to 256²: 2.0 ms against 1.3 on a Zen 4).

``_upsample_native.c``, compiled when the package is installed (``setup.py``; without a C compiler the package
installs and runs the torch path), has one kernel, on float32 and on bf16, that reads x and the mask at their own
resolution and writes up(x) ⊙ M straight into the concatenation, threads taking whole output rows. It sums as torch
does, in float32, with torch's weights and edges, and on bf16 rounds once when it stores. It runs on torch's OpenMP
thread team, like ``winograd_native``'s kernels.

``generator.NATIVE_UPSAMPLE = False`` or ``CTSDG_NATIVE=0`` in the environment turns it off.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .cpu import compiled

_STORAGE = {torch.float32: "float", torch.bfloat16: "bf16"}


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """The compiled kernel, or None where the extension was not built (no C compiler at install time)."""
    lib = compiled("ctsdg._upsample_native")
    if lib is None:
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for storage in _STORAGE.values():
        kernel = getattr(lib, f"ctsdg_upsample2x_masked_{storage}")
        kernel.argtypes = [ptr] + [i64] * 7 + [ptr] + [i64] * 3 + [ptr] + [i64] * 3 + [ptr, ctypes.c_int]
        kernel.restype = None
    return lib


def available(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the kernel can take ``x`` into ``out``: CPU tensors (not on the meta device, say) of one dtype, float32
    or bf16, both with their channels contiguous (channels-last), the extension built."""
    return (x.device.type == "cpu" and out.device.type == "cpu" and x.dtype in _STORAGE and out.dtype == x.dtype
            and x.stride(1) == 1 and out.stride(1) == 1 and kernels() is not None)


def upsample2x_masked(x: torch.Tensor, known: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out = F.interpolate(x, scale_factor=2, mode="bilinear") * F.interpolate(known, scale_factor=2)``: ``x``
    (N, C, H, W) and ``out`` (N, C, 2H, 2W), both with their channels contiguous (:func:`available`), ``out`` may be
    a slice of a wider map (the decoder's concatenation); ``known`` (N, 1, H, W) float32 at x's resolution, or None
    for no mask."""
    n, c, h, w = x.shape
    if not available(x, out) or tuple(out.shape) != (n, c, 2 * h, 2 * w):
        raise ValueError(f"upsample2x_masked: x {tuple(x.shape)} {x.dtype} into out {tuple(out.shape)} {out.dtype} "
                         "needs out (N, C, 2H, 2W) of x's dtype, both channels-last, float32 or bf16 on the CPU")
    if known is not None:
        if known.dtype != torch.float32 or tuple(known.shape) != (n, 1, h, w) or known.device.type != "cpu":
            raise ValueError(f"upsample2x_masked: known must be float32 (N, 1, H, W) = {(n, 1, h, w)} on the CPU, "
                             f"got {tuple(known.shape)} {known.dtype}")
        mask, (kn, _, kh, kw) = known.data_ptr(), known.stride()
    else:
        mask, kn, kh, kw = None, 0, 0, 0
    sn, _, sh, sw = x.stride()
    on, _, oh, ow = out.stride()
    threads = torch.get_num_threads()
    scratch = torch.empty(threads * w * c, dtype=torch.float32)  # one input row blended along y, per thread
    kernel = getattr(kernels(), f"ctsdg_upsample2x_masked_{_STORAGE[x.dtype]}")
    kernel(x.data_ptr(), n, c, h, w, sn, sh, sw, mask, kn, kh, kw, out.data_ptr(), on, oh, ow, scratch.data_ptr(),
           threads)
