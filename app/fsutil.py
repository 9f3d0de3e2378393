"""File helpers: atomic writes and TOML config reads.

Writes go to a temp file in the same folder, are fsynced, then renamed. Reads raise one-line
``ConfigError`` messages that name the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data``; a crash leaves either the old or the new file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent or ".", prefix=f".{p.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        mode = p.stat().st_mode & 0o777 if p.exists() else 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file's tables; ``ConfigError`` naming the file if it is missing or malformed."""
    from xbarc.errors import ConfigError

    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: cannot read TOML ({e})") from None


def toml_table(path: str | os.PathLike[str], table: str) -> dict[str, Any]:
    """Table ``[table]`` of a TOML file (empty if absent); ``ConfigError`` if not a table."""
    from xbarc.errors import ConfigError

    t = read_toml(path).get(table, {})
    if not isinstance(t, dict):
        raise ConfigError(f"{path}: [{table}] must be a table, got {t!r}")
    return dict(t)
