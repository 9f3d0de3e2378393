"""Input transforms: adapting samples to a model's input shape, bilinear resizing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from xbarc.errors import DataError

FloatArray = npt.NDArray[np.float32]


def _shape_error(name: str, have: tuple[int, ...], want: tuple[int, ...], why: str) -> DataError:
    return DataError(
        f"{name}: cannot adapt samples of shape {have} to the model input shape {want} ({why})"
    )


def adapt(x: FloatArray, target: tuple[int, ...], name: str) -> FloatArray:
    have = tuple(int(d) for d in x.shape[1:])
    n = x.shape[0]
    if any(d <= 0 for d in target) or len(target) not in (1, 3):
        raise _shape_error(name, have, target, "a model input is (F,) or (C, H, W)")
    if len(have) == 3:
        c, h, w = have
        if len(target) == 1:
            (f,) = target
            if c * h * w == f:
                return x.reshape(n, f)
            side = math.isqrt(f // c) if f % c == 0 else 0
            if side == 0 or side * side * c != f:
                raise _shape_error(
                    name, have, target, f"{f} is neither {c}*{h}*{w} nor {c} times a square"
                )
            return resize_bilinear(x, (side, side)).reshape(n, f)
        c2, h2, w2 = target
        if c2 != c and (c, c2) not in ((1, 3), (3, 1)):
            raise _shape_error(name, have, target, "channels convert only 1 -> 3 and 3 -> 1")
        if (c, c2) == (3, 1):  # the mean commutes with the resize; do it first, it is cheaper
            x = x.mean(axis=1, keepdims=True, dtype=np.float32)
        y = resize_bilinear(x, (h2, w2))
        if (c, c2) == (1, 3):
            y = np.repeat(y, 3, axis=1)
        return y
    if len(have) == 1:
        (f,) = have
        if len(target) == 3 and math.prod(target) == f:
            return x.reshape(n, *target)
        raise _shape_error(name, have, target, f"{f} features cannot be reshaped to it")
    raise _shape_error(name, have, target, "only (F,) and (C, H, W) samples are adapted")


def _linear_indices(
    size_in: int, size_out: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], FloatArray, FloatArray]:
    """Source indices and weights of 1-D linear interpolation with half-pixel centres.

    Mirrors torch's CPU kernel (``align_corners=False``): ``scale = in/out`` and
    ``src = scale * (i + 0.5) - 0.5`` in float32, where torch's build fuses the multiply-add
    (one rounding, reproduced here by computing it exactly in float64 and rounding once);
    ``src`` is clamped at 0; ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
    ``w1 = src - i0``, ``w0 = 1 - w1`` (float32). The weights then equal torch's bit for bit.
    """
    scale = np.float64(np.float32(size_in) / np.float32(size_out))
    src = (scale * (np.arange(size_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.intp)  # src >= 0, so truncation is floor
    i1 = np.minimum(i0 + 1, size_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def resize_bilinear(x: npt.NDArray[Any], size: tuple[int, int]) -> FloatArray:
    """Resize the last two axes of ``x`` to ``size`` by bilinear interpolation.

    Matches ``torch.nn.functional.interpolate(x, size, mode="bilinear", align_corners=False,
    antialias=False)`` (half-pixel centres, source coordinates clamped at 0 and at the last row /
    column; no anti-aliasing when downsampling), computed as two separable 1-D interpolations
    (first along the width, then along the height). The source indices and weights are torch's
    bit for bit; the results agree with torch's to float32 rounding (a few units in the last
    place: torch's kernel sums in a different order).

    Args:
        x: An array with at least two axes, e.g. ``[N, C, H, W]``; cast to float32.
        size: The output ``(height, width)``.

    Returns:
        A float32 array shaped ``x.shape[:-2] + size``.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"resize_bilinear needs at least 2 axes, got shape {x.shape}")
    h_out, w_out = (int(s) for s in size)
    if h_out <= 0 or w_out <= 0:
        raise ValueError(f"resize_bilinear: output size must be positive, got {size}")
    h_in, w_in = x.shape[-2], x.shape[-1]
    out = x
    if w_out != w_in:
        i0, i1, w0, w1 = _linear_indices(w_in, w_out)
        out = out[..., i0] * w0 + out[..., i1] * w1
    if h_out != h_in:
        i0, i1, w0, w1 = _linear_indices(h_in, h_out)
        out = out[..., i0, :] * w0[:, None] + out[..., i1, :] * w1[:, None]
    return np.ascontiguousarray(out, dtype=np.float32)
