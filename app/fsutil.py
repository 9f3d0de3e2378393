"""File helpers: atomic writes and TOML config reads.

A write goes to a temp file beside its target, ``.NAME.XXXXXXXX.tmp`` (8 random characters),
held under an exclusive ``flock`` while it is written, fsynced, renamed over ``NAME`` (the lock
still held) and only then closed. A process killed mid-write leaves its temp file but not its
lock (the kernel drops the locks of a dead process), so every later write of ``NAME`` first
removes the temp files of ``NAME`` that no live writer holds (:func:`remove_stale_temps`); the
target itself is always either the old file or the new one. Reads raise one-line
``ConfigError`` messages that name the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, so no stale-file cleanup either
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".tmp"
_TEMP_ID = re.compile(r"[a-z0-9_]{8}")  # tempfile's names: 8 of [a-z0-9_]


def _temp_prefix(p: Path) -> str:
    return f".{p.name}."


def _is_temp_of(p: Path, name: str) -> bool:
    prefix = _temp_prefix(p)
    if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
        return False
    return _TEMP_ID.fullmatch(name[len(prefix) : -len(TEMP_SUFFIX)]) is not None


def temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """The temp files of ``path`` in its folder (live writers' and stale ones), sorted."""
    p = Path(path)
    parent = p.parent
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return sorted(parent / n for n in names if _is_temp_of(p, n))


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False if another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files of ``path`` left by killed writers; returns those removed.

    A temp file is stale when no process holds its lock. One that a live writer is still
    writing is left alone, so two runs writing the same output do not break each other.
    """
    if fcntl is None:
        return []
    removed = []
    for q in temp_files(path):
        try:
            fd = os.open(q, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _try_lock(fd):
                continue
            now = os.lstat(q)  # the name may have been renamed or replaced since the open
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(q)
                removed.append(q)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _new_mode(p: Path) -> int:
    try:
        return p.stat().st_mode & 0o777  # replacing a file keeps its permissions
    except OSError:
        umask = os.umask(0o022)  # reading the umask means setting it
        os.umask(umask)
        return 0o666 & ~umask


def _locked_temp(p: Path) -> tuple[IO[bytes], str]:
    """A new temp file of ``p``, open ``w+b`` and locked (retried if a cleaner took it first)."""
    while True:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=_temp_prefix(p), suffix=TEMP_SUFFIX)
        # between mkstemp and the lock, another run's cleanup may see it unlocked and remove it
        if _try_lock(fd) and os.fstat(fd).st_nlink > 0:
            return os.fdopen(fd, "w+b"), tmp
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file (``w+b``) that replaces ``path`` when the block ends without an error.

    The file is a locked temp file beside ``path``; on success it is fsynced, renamed over
    ``path`` and the folder fsynced. An exception removes it and leaves ``path`` as it was; a
    kill leaves it to the next write of ``path``, which removes it (:func:`remove_stale_temps`).
    """
    p = Path(path)
    remove_stale_temps(p)
    f, tmp = _locked_temp(p)
    try:
        with f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _new_mode(p))
            os.fsync(f.fileno())
            os.replace(tmp, p)  # still locked: no cleanup can take the file before the rename
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(p.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every system can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data``; a crash leaves either the old or the new file."""
    with atomic_output(path) as f:
        f.write(data)


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
