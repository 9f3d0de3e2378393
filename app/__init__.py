"""xbarc: compile neural networks onto analog crossbar tiles and train them on-chip with EaPU."""

from __future__ import annotations

__version__ = "0.1.0"

from xbarc.errors import (
    ConfigError,
    DataError,
    FormatError,
    FrontendError,
    InterpError,
    PassError,
    VerifyError,
    XbarcError,
)

__all__ = [
    "ConfigError",
    "DataError",
    "FormatError",
    "FrontendError",
    "InterpError",
    "PassError",
    "VerifyError",
    "XbarcError",
    "__version__",
]
