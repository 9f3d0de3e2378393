"""Build the Cython runtime kernels (everything else is in pyproject.toml)."""

from __future__ import annotations

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

openmp = [] if sys.platform == "darwin" or os.environ.get("XBARC_NO_OPENMP") else ["-fopenmp"]

extensions = [
    Extension(
        "xbarc.runtime._kernels",
        ["runtime/_kernels.pyx"],
        extra_compile_args=["-O3", *openmp],
        extra_link_args=openmp,
    ),
    Extension(
        "xbarc.runtime.train._update",
        ["runtime/train/_update.pyx"],
        extra_compile_args=["-O3", *openmp],
        extra_link_args=openmp,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
