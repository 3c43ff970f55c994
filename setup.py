"""Everything about the package is in pyproject.toml; this file only adds the optional C kernels of
Winograd's transforms (src/ctsdg/winograd_native.py), of RAL's attention (src/ctsdg/cfa_native.py) and of the
decoders' upsampling (src/ctsdg/upsample_native.py).
Where no C compiler is found the build of the extensions fails with a warning, the package installs
without them and runs the torch paths."""

import platform
import sys

from setuptools import Extension, setup

# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS (the kernels' index arithmetic never overflows, and
# wrapping forbids the compiler some of its rewrites): RAL's attention kernel alone 0.79 → 0.69 ms per block of
# a 256² input (docs/speed_history.md, "A seventeenth look")
flags = [] if sys.platform == "win32" else ["-O3", "-fno-math-errno", "-fno-wrapv", "-fopenmp"]
sources = {"ctsdg._winograd_native": "_winograd_native.c", "ctsdg._cfa_native": "_cfa_native.c",
           "ctsdg._upsample_native": "_upsample_native.c"}
if platform.machine().lower() in ("x86_64", "amd64"):
    # Winograd's and RAL's kernels also with 8 lanes per vector, for CPUs without AVX-512
    # (src/ctsdg/_winograd_native_avx2.c says why; the upsampling, bound by memory, gained nothing so)
    sources |= {"ctsdg._winograd_native_avx2": "_winograd_native_avx2.c", "ctsdg._cfa_native_avx2": "_cfa_native_avx2.c"}
setup(ext_modules=[Extension(module, [f"src/ctsdg/{source}"],
                             depends=["src/ctsdg/_native_vectors.h", "src/ctsdg/_winograd_native.c",
                                      "src/ctsdg/_cfa_native.c"],
                             extra_compile_args=flags, extra_link_args=flags[-1:], optional=True)
                   for module, source in sources.items()])
