"""Atomic file writes (pure Python): write next to the target, fsync, then ``os.replace``.

A reader sees either the old file or the complete new one, never a half-written one, and a
failure (or a kill) leaves at most a hidden ``.<name>.*.tmp`` file that the next write of a
checkpoint set cleans up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory entry (a rename inside it) to disk where the OS allows it."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, fsync it, rename it to ``path``.

    If ``write`` raises, the temporary file is removed and an existing ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 string."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
