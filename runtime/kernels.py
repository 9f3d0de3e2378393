"""Kernel selection: the compiled Cython module, or its NumPy twin for debugging.

``get_kernels("cython")`` (the default everywhere) imports ``xbarc.runtime._kernels`` and fails
loudly if it is missing; there is no silent fallback. ``get_kernels("numpy")`` returns
``xbarc.runtime.reference``, the readable twin the property tests compare against.
"""

from __future__ import annotations

from types import ModuleType

from xbarc.errors import XbarcError

Kernels = ModuleType

KERNEL_SETS = ("cython", "numpy")


def get_kernels(name: str = "cython") -> Kernels:
    """The kernel module called ``name``."""
    if name == "cython":
        try:
            from xbarc.runtime import _kernels
        except ImportError as e:  # a broken build must not go unnoticed
            raise XbarcError(
                f"the compiled kernels (xbarc.runtime._kernels) cannot be imported: {e}; "
                "reinstall xbarc so the Cython extension is built"
            ) from e
        return _kernels
    if name == "numpy":
        from xbarc.runtime import reference

        return reference
    raise XbarcError(f"unknown kernel set {name!r}; choose one of {', '.join(KERNEL_SETS)}")
