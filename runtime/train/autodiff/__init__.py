"""Backward rules: the vector-Jacobian product (VJP) of every IR op.

``vjp(op, inputs, outputs, grad_outputs)`` takes the forward inputs and outputs of one node (as
the reference interpreter :data:`xbarc.ir.interp.EVAL` computes them) and the gradient of the
loss with respect to each output, and returns the gradient with respect to each input. It is
the building block of on-chip training: the engine runs the forward, keeps what the backward
needs, and walks the graph in reverse calling :func:`vjp` per node.

Contract of every rule (enforced centrally, so it holds for :data:`BACKWARD` entries too):

* One result per input, with the input's shape and dtype (float32 in, float32 out; float16 is
  computed in float32 and cast back). ``None`` where no gradient exists: integer and bool
  tensors (``Gather`` indices, ``Where``'s condition, an integer ``Pow`` exponent, ``Cast``
  from or to an integer type), every input of an op with a non-float output (``Equal``,
  ``Less``, ``Greater``, ``Not``), and every input when all ``grad_outputs`` are ``None``.
  ``Fill`` has no inputs and returns ``[]``.
* Results are fresh, writable arrays: they never share memory with the arguments or with each
  other, so a caller may accumulate into them in place.
* Masked-out positions (``Relu``'s dead units, ``Clip``'s saturated side, the operand
  ``Where``/``Max``/``Min`` did not select, cells a pool did not pick) get exactly 0, even
  where the output gradient is inf or nan.
* Broadcasting ops reduce the gradient to each operand's shape with :func:`unbroadcast`.
* ``outputs`` must be the forward outputs of ``inputs``; several rules read them (``Sigmoid``,
  ``Tanh``, ``Exp``, ``Sqrt``, ``Reciprocal``, ``Div``, ``Pow``, ``Softmax``, ``LogSoftmax``).
* ``XbarMVM`` is differentiated with the exact float semantics of the interpreter (the
  logical weight ``w[G, R, C]``, no device effects): the weight gradient is what an on-chip
  update rule consumes.

Conventions at non-differentiable points (each value is a valid one-sided derivative or a
convex combination of them):

* ``Relu``: 0 at ``x == 0``. ``LeakyRelu``: 1 at ``x == 0`` (the forward's ``x >= 0`` branch).
  ``Abs``: 0 at 0 (``sign``).
* ``Clip``: the gradient passes strictly inside ``(min, max)`` and is 0 at ``x == min``,
  ``x == max`` and outside (the saturated side's derivative, as ``Relu`` at 0).
  ``HardSigmoid``: likewise, 0 where ``alpha * x + beta`` is exactly 0 or 1. ``HardSwish``:
  0 at ``x == -3`` and 1 at ``x == 3`` (again the saturated side).
* ``Max``/``Min`` (elementwise): ties split the gradient evenly, half to each operand.
  ``ReduceMax``: ties split evenly among all maximal elements of the reduced slice.
* ``MaxPool``/``GlobalMaxPool``: the whole gradient of a window goes to its first maximum in
  row-major window order (the first tap of the kernel that attains the maximum); padding
  cells never receive gradient.
* ``Pow``: ``d/da = b * a**(b-1)``, defined as 0 where ``b == 0``; ``d/db = y * log(a)`` where
  ``a > 0``, 0 elsewhere.
* ``Sqrt``, ``Log``, ``Reciprocal``, ``Div`` at singular points follow IEEE arithmetic (inf or
  nan), as the forward does; floating-point warnings are suppressed as in the interpreter.
"""

from __future__ import annotations

from xbarc.runtime.train.autodiff import elementwise, linalg, nn, resample, shape
from xbarc.runtime.train.autodiff.core import (
    BACKWARD,
    VJP,
    NoBackwardError,
    unbroadcast,
    vjp,
)

__all__ = [
    "BACKWARD",
    "VJP",
    "NoBackwardError",
    "elementwise",
    "linalg",
    "nn",
    "resample",
    "shape",
    "unbroadcast",
    "vjp",
]
