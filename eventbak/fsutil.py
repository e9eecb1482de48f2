"""Small file-system helpers shared by the log, the builder and the vaults."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HASH_CHUNK = 4 * 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a create, rename or unlink) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path, tighten: bool = True) -> None:
    """Make `path` (and missing parents, with default modes) a directory only
    its owner can enter: created 0700; an existing one set to 0700 too unless
    `tighten` is False (a directory the user made, such as a mount point)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
        return
    except FileExistsError:
        pass
    if tighten and path.is_dir() and not path.is_symlink() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes; FileNotFoundError if it is absent."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
