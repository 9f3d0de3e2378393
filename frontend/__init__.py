"""Model importers: ONNX → xbarc IR."""

from __future__ import annotations

from xbarc.frontend.onnx_import import LOWER, load_onnx, supported_ops

__all__ = ["LOWER", "load_onnx", "supported_ops"]
