"""Process-wide settings the runtime makes once: memory reuse and other BLAS pools' threads."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MALLOC_KEEP = (64 << 20, 512 << 20)
"""(mmap threshold, trim threshold) in bytes that :func:`keep_freed_memory` sets."""
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    A forward allocates and frees many arrays of megabytes. By default glibc maps each large
    one afresh (``mmap``) or trims the heap after frees, so every new array costs a page fault
    per 4 KiB page: 40 % of a ViT's forward at batch 64. Arrays up to 64 MiB then come from
    the heap, and up to 512 MiB of free heap top is kept (the process's resident size stays
    near its peak). Called once by the first :class:`Engine`; a no-op without glibc, when the
    user set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``, or when
    ``XBARC_MALLOC=system``. Returns whether the settings were applied.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    env = os.environ
    if env.get("XBARC_MALLOC") == "system" or any(
        k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    mmap_at, trim_at = MALLOC_KEEP
    _malloc_tuned = bool(mallopt(m_mmap_threshold, mmap_at)) and bool(
        mallopt(m_trim_threshold, trim_at)
    )
    return _malloc_tuned


def limit_other_blas() -> bool:
    """Keep every BLAS but the kernels' own (SciPy's OpenBLAS) on one thread.

    NumPy and SciPy each bundle an OpenBLAS whose threads spin after a call; next to the
    kernels' OpenMP threads, three pools fight over the cores (measured on a 2-core machine: a
    training step of the 784-256-128-10 MLP took 21 ms with both BLAS pools on 2 threads and
    6.6 ms with them on 1). The kernels' sgemm (SciPy's OpenBLAS) keeps its threads. Called once
    by every :class:`Engine`; skipped when ``XBARC_BLAS_THREADS=keep``.
    """
    if os.environ.get("XBARC_BLAS_THREADS") == "keep":
        return False
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return False
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api == "blas" and "scipy" not in Path(lib.filepath).parent.name:
            lib.set_num_threads(1)
    return True
