"""Bundled ONNX models (small, deterministic, made by ``models/make.py`` with PyTorch).

``resolve("vit")`` finds ``vit.onnx`` among the bundled files, so commands accept either a path
or a bundled model name.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any


def bundled_dir() -> Path:
    """The folder holding the bundled ``.onnx`` files and ``manifest.json``."""
    return Path(str(resources.files("xbarc.models")))


def manifest() -> dict[str, Any]:
    """The bundled manifest (input shapes, opsets, exporters, data set of each file)."""
    data: dict[str, Any] = json.loads((bundled_dir() / "manifest.json").read_text())
    return data


def names() -> list[str]:
    """Names of the bundled models (file stems, e.g. ``vit`` and ``vit.dynamo``)."""
    return sorted(p.name.removesuffix(".onnx") for p in bundled_dir().glob("*.onnx"))


def resolve(path_or_name: str) -> Path:
    """A path as given if it exists, else the bundled model of that name; else the path."""
    p = Path(path_or_name)
    if p.exists():
        return p
    candidate = bundled_dir() / f"{path_or_name.removesuffix('.onnx')}.onnx"
    return candidate if candidate.exists() else p
