"""Process settings that make CPU inference faster (docs/speed.md, "Process settings").

The generator allocates tens of MB per layer at 256² and hundreds at 512². glibc serves blocks that
large with a fresh ``mmap`` and gives them back on ``free``, so every forward pass page-faults all of
its activations in again: measured at 256² (2 threads), RAL alone took 222 ms with glibc's defaults
and 134 ms with :func:`keep_freed_memory`, the whole fp32 forward about 10 % less.

:func:`keep_freed_memory` is process-wide (like ``torch.set_num_threads``), so the library never calls
it on import. ``ctsdg`` commands, :class:`ctsdg.Inpainter` and the benchmarks call
:func:`apply_defaults`; set ``CTSDG_KEEP_FREED_MEMORY=0`` to leave the allocator alone. The cost:
memory freed after a large forward stays in the process for the next one instead of going back to
the system (the peak is unchanged).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
ENV_FLAG = "CTSDG_KEEP_FREED_MEMORY"

_applied: bool | None = None


def _libc() -> ctypes.CDLL | None:
    """The C library, or None where it cannot be found or loaded."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from its heap and keep freed memory for reuse.

    Returns True when the settings took effect, False where there is no glibc (macOS, Windows,
    musl) or ``mallopt`` refused them. Safe to call more than once.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    mallopt = getattr(_libc(), "mallopt", None)  # glibc only
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Threshold 1 GiB: blocks up to that size come from the heap; trim threshold 2 GiB - 1: freed
    # heap memory is kept for the next allocation instead of being returned with madvise/brk.
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    _applied = bool(ok)
    return _applied


def release_freed_memory() -> bool:
    """glibc ``malloc_trim(0)``: give the freed memory that :func:`keep_freed_memory` keeps back to the
    system now (e.g. before measuring what is resident). Returns False where there is no glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; containers often limit it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def apply_defaults() -> dict:
    """What ``ctsdg`` commands and :class:`ctsdg.Inpainter` do for the CPU, once per process:
    :func:`keep_freed_memory` (unless ``CTSDG_KEEP_FREED_MEMORY=0``) and no more torch threads than
    :func:`available_cores`. Returns what was set, for logs and benchmark tables."""
    kept = False
    if os.environ.get(ENV_FLAG, "1") not in ("0", "false", "no"):
        kept = keep_freed_memory()
    cores = available_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return {"keep_freed_memory": kept, "threads": torch.get_num_threads()}
