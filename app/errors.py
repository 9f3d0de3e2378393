"""The error hierarchy: every failure a user can cause derives from :class:`XbarcError`.

The CLI catches ``XbarcError``, prints its one-line message and exits with code 2 (``--debug``
re-raises it with the traceback).
"""

from __future__ import annotations


class XbarcError(Exception):
    """Base class of the errors that the CLI reports as one line with exit code 2."""


class FrontendError(XbarcError):
    """An ONNX file cannot be read or holds something xbarc does not support."""


class VerifyError(XbarcError):
    """The IR breaks an invariant (ownership, order, use lists, an op's type rule)."""


class PassError(XbarcError):
    """A compiler pass failed; chained to the cause and naming the passes that ran before."""


class FormatError(XbarcError):
    """A mapped.bin file is malformed, truncated or of an unknown version."""


class ConfigError(XbarcError):
    """A chip configuration (TOML file or CLI flag) is invalid."""


class DataError(XbarcError):
    """A data set is missing, malformed or does not fit the model's input."""


class InterpError(XbarcError):
    """Executing a graph failed; the message names the node."""
