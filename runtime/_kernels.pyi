"""Typed stubs for the compiled kernels (``_kernels.pyx``); ``reference.py`` is the NumPy twin.

Every array argument is a C-contiguous float32 array of the rank given in the docstrings; the
kernels raise ``ValueError`` naming the argument otherwise. Outputs are passed in and
overwritten; nothing is returned.
"""

from typing import Final

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]

COMPILED: Final[bool]
OPENMP: Final[bool]

def n_threads_default() -> int: ...
def im2col(
    x: F32,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph0: int,
    pw0: int,
    ph1: int,
    pw1: int,
    dh: int,
    dw: int,
    out: F32,
    n_threads: int = 1,
) -> None: ...
def col2im(
    cols: F32,
    N: int,
    C: int,
    H: int,
    W: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph0: int,
    pw0: int,
    ph1: int,
    pw1: int,
    dh: int,
    dw: int,
    out: F32,
    n_threads: int = 1,
) -> None: ...
def conv_ideal(
    x: F32,
    g: F32,
    slice_w: F32,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph0: int,
    pw0: int,
    ph1: int,
    pw1: int,
    dh: int,
    dw: int,
    bias: F32,
    cols: F32,
    work: F32,
    out: F32,
    n_threads: int = 1,
    relu: bool = False,
    residual: F32 | None = None,
) -> None: ...
def quantize(x: F32, bits: int, x_range: float, signed: bool, n_threads: int = 1) -> None: ...
def mvm_forward(
    x: F32,
    g: F32,
    slice_w: F32,
    row_block: int,
    adc_bits: int,
    adc_range: F32,
    read_sigma: float,
    g_rms: F32,
    noise: F32,
    work: F32,
    out: F32,
    n_threads: int = 1,
) -> None: ...
def mvm_backward(
    dy: F32,
    g: F32,
    slice_w: F32,
    col_block: int,
    adc_bits: int,
    adc_range: F32,
    read_sigma: float,
    g_rms_t: F32,
    noise: F32,
    work: F32,
    out: F32,
    n_threads: int = 1,
) -> None: ...
def rms_columns(gp: F32, gn: F32, row_block: int, out: F32, n_threads: int = 1) -> None: ...
def rms_rows(gp: F32, gn: F32, col_block: int, out: F32, n_threads: int = 1) -> None: ...
def _set_sgemm_max_mnk(mnk: int) -> int: ...
