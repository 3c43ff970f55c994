"""Everything about the package is in pyproject.toml; this file only adds the optional C kernels of
Winograd's transforms (src/ctsdg/winograd_native.py), of RAL's attention (src/ctsdg/cfa_native.py) and of the
decoders' upsampling (src/ctsdg/upsample_native.py).
Where no C compiler is found the build of the extensions fails with a warning, the package installs
without them and runs the torch paths."""

import sys

from setuptools import Extension, setup

# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS (the kernels' index arithmetic never overflows, and
# wrapping forbids the compiler some of its rewrites): RAL's attention kernel alone 0.79 → 0.69 ms per block of
# a 256² input (docs/speed_history.md, "A seventeenth look")
flags = [] if sys.platform == "win32" else ["-O3", "-fno-math-errno", "-fno-wrapv", "-fopenmp"]
setup(ext_modules=[Extension(f"ctsdg._{name}_native", [f"src/ctsdg/_{name}_native.c"],
                             depends=["src/ctsdg/_native_vectors.h"], extra_compile_args=flags,
                             extra_link_args=flags[-1:], optional=True) for name in ("winograd", "cfa", "upsample")])
