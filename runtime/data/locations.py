"""Where data files are looked for, and reading one (gunzipping ``*.gz``) with a clear error."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from xbarc.errors import DataError

#: Directories searched (after ``~/.cache/xbarc/<name>``) when no data directory is given and
#: ``XBARC_DATA`` is unset. The Debian package ``dataset-fashion-mnist`` installs the gzipped idx
#: files into ``/usr/share/datasets/fashion-mnist``.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "cifar10": (),
}


def read_bytes(path: Path, name: str) -> bytes:
    """Read a file, gunzipping ``*.gz``; errors become :class:`DataError` naming the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{name}: cannot read {path} ({exc}); replace the file") from exc


def env_dir(name: str) -> Path | None:
    root = os.environ.get("XBARC_DATA")
    return Path(root).expanduser() / name if root else None


def cache_dir(name: str) -> Path:
    return Path.home() / ".cache" / "xbarc" / name


def search_dirs(name: str, data_dir: Path | None) -> list[Path]:
    """The folders a data set is looked for in, in order.

    ``data_dir`` if given, else ``$XBARC_DATA/<name>`` if set, else ``~/.cache/xbarc/<name>``
    and then the system folders (:data:`SYSTEM_DIRS`).
    """
    if data_dir is not None:
        return [data_dir]
    env = env_dir(name)
    if env is not None:
        return [env]
    return [cache_dir(name), *SYSTEM_DIRS.get(name, ())]
