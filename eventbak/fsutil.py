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


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes; FileNotFoundError if it is absent."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
