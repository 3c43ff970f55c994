"""Everything about the package is in pyproject.toml; this file only adds the optional C kernels of
Winograd's transforms (src/ctsdg/winograd_native.py). Where no C compiler is found the build of the
extension fails with a warning, the package installs without it and runs the eager transforms."""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-fno-math-errno", "-fopenmp"]
setup(ext_modules=[Extension("ctsdg._winograd_native", ["src/ctsdg/_winograd_native.c"],
                             extra_compile_args=flags, extra_link_args=flags[-1:], optional=True)])
