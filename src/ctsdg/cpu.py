"""Process settings that make CPU inference faster (docs/speed.md, "Knobs").

The generator allocates tens of MB per layer at 256² and hundreds at 512². glibc serves blocks that
large with a fresh ``mmap`` and gives them back on ``free``, so every forward pass page-faults all of
its activations in again: measured at 256² (2 threads), RAL alone took 222 ms with glibc's defaults
and 134 ms with :func:`keep_freed_memory`, the whole fp32 forward about 10 % less.

:func:`keep_freed_memory` is process-wide (like ``torch.set_num_threads``), so the library never calls
it on import. ``ctsdg`` commands, :class:`ctsdg.Inpainter` and the benchmarks call
:func:`apply_defaults`; set ``CTSDG_KEEP_FREED_MEMORY=0`` to leave the allocator alone. The cost:
memory freed after a large forward stays in the process for the next one instead of going back to
the system (the peak is unchanged).

:func:`check_bf16` stops bf16 on CPUs without native bf16 kernels (AVX2-only x86), where oneDNN falls
back to scalar code: one 256² forward measured 41 s in bf16 against 0.9 s in fp32 on a 2-core AVX2
EPYC (docs/speed_history.md, "A second machine: a CPU without AVX-512").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os

import torch

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
ENV_FLAG = "CTSDG_KEEP_FREED_MEMORY"
ALLOW_SLOW_BF16 = "CTSDG_ALLOW_SLOW_BF16"

_applied: bool | None = None


def _libc() -> ctypes.CDLL | None:
    """The C library, or None where it cannot be found or loaded."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def native_wanted() -> bool:
    """Whether ctsdg's C kernels are wanted: ``CTSDG_NATIVE=0`` in the environment turns them all off. Each module
    that uses them keeps its own ``NATIVE`` knob set from this (``winograd.NATIVE``, ``cfa.NATIVE``,
    ``generator.NATIVE_UPSAMPLE``), so that each can be A/B-tested alone."""
    return os.environ.get("CTSDG_NATIVE", "1") != "0"


@functools.cache
def torch_runs_avx2() -> bool:
    """Whether torch runs its AVX2 code here: an x86 CPU without AVX-512 (or one limited by
    ``ATEN_CPU_CAPABILITY=avx2``), where ctsdg takes its AVX2 rules and its C kernels' AVX2 builds."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def compiled(module: str) -> ctypes.CDLL | None:
    """One of ctsdg's optional C extensions (``setup.py``: ``"ctsdg._winograd_native"``, ``"ctsdg._cfa_native"``,
    ``"ctsdg._upsample_native"``, and on x86-64 the AVX2 builds ``"ctsdg._winograd_native_avx2"`` and
    ``"ctsdg._cfa_native_avx2"``) as a ctypes library, or None where it was not built (no C compiler when the
    package was installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    try:
        return ctypes.CDLL(spec.origin)
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


def has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions and products natively on this CPU (x86 with AVX-512 or
    AMX, or AVX2 with AVX-NE-CONVERT; an Arm CPU it supports); False on AVX2-only x86, where a 256²
    forward ran 45× slower in bf16 than in fp32.
    True where torch cannot tell, so that nothing is blocked on a guess."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if check is None:
        return True
    try:
        return bool(check())
    except RuntimeError:
        return True


def bf16_allowed() -> bool:
    """CPU bf16 is fast here (:func:`has_fast_bf16`), or the user set ``CTSDG_ALLOW_SLOW_BF16=1``."""
    return has_fast_bf16() or os.environ.get(ALLOW_SLOW_BF16, "0").lower() in ("1", "true", "yes")


def check_bf16(option: str, instead: str = "fp32 (the default)") -> None:
    """Raise ``ValueError`` when ``option`` (e.g. ``"precision bf16"``) asks for CPU bf16 on a CPU
    without native bf16 kernels (:func:`has_fast_bf16`), unless ``CTSDG_ALLOW_SLOW_BF16=1``. The
    message names ``instead``, the setting to use."""
    if bf16_allowed():
        return
    raise ValueError(
        f"{option}: this CPU has no native bf16 kernels (torch sees {torch.backends.cpu.get_cpu_capability()}; "
        f"bf16 needs AVX-512 or AMX), so bf16 would run about 40× slower than fp32 here. Use {instead}, "
        f"which is faster here, or set {ALLOW_SLOW_BF16}=1 to run bf16 anyway.")
