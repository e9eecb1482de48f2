"""The local vault: a directory (another disk, a NAS mount), `file:///path`.

Layout: `archives/<session>/<archive id>.tar.zst` (see docs/formats.md).
Writes are atomic: a temporary name in the same directory, fsync, rename,
fsync of the directory. When staging and vault share a filesystem the
staged file is hard-linked instead of copied (same bytes, no copy).

Confirmation: a copy is read back and hashed before the upload is confirmed.
A hard link is confirmed by identity instead: the stored name must be the
very inode that was staged (device, inode number) with its size unchanged.
That inode's bytes were hashed as they were written and fsynced at the seal
(and re-hashed after a crash before any upload); reading it back would only
hash the same page-cache pages again, at 1.2 s of CPU per 2 GB.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from eventbak.errors import VaultError
from eventbak.fsutil import fsync_dir, sha256_file
from eventbak.vaults.base import Stored


class LocalVault:
    def __init__(self, url: str) -> None:
        self.url = url
        self.root = Path(url[len("file://") :])

    def __repr__(self) -> str:
        return f"LocalVault({self.root})"

    def prepare(self) -> None:
        try:
            (self.root / "archives").mkdir(parents=True, exist_ok=True)
            probe = self.root / f".eventbak-probe-{os.getpid()}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError as exc:
            raise VaultError(f"vault {self.root} is not writable: {exc.strerror or exc}") from None

    def key_for(self, session: str, archive: str, suffix: str) -> str:
        return f"archives/{session}/{archive}{suffix}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise VaultError(f"bad vault key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, source: Path, sha256: str) -> Stored:
        dest = self._path(key)
        try:
            if dest.exists() and sha256_file(dest) == sha256:
                return Stored(key, dest.stat().st_size, sha256)
            if not dest.parent.is_dir():
                dest.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(dest.parent.parent)  # the new directory entry is durable too
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            staged = source.stat()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            held = dest.stat()
            size = held.st_size
            if (held.st_dev, held.st_ino, size) == (staged.st_dev, staged.st_ino, staged.st_size):
                confirmed = sha256  # the staged inode itself (see the module's docstring)
            else:
                confirmed = sha256_file(dest)
        except OSError as exc:
            raise VaultError(
                f"vault {self.root}: cannot store {key}: {exc.strerror or exc}"
            ) from None
        if confirmed != sha256:
            raise VaultError(
                f"vault {self.root}: {key} reads back with sha256 {confirmed}, expected {sha256}"
            )
        return Stored(key, size, confirmed)

    def confirm(self, key: str, sha256: str) -> Stored | None:
        dest = self._path(key)
        try:
            if sha256_file(dest) == sha256:
                return Stored(key, dest.stat().st_size, sha256)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VaultError(f"vault {self.root}: cannot read {key}: {exc.strerror}") from None
        return None

    def remove_orphans(self, sessions: set[str]) -> list[tuple[str, int]]:
        """Temp files of puts that never reached their rename."""
        removed = []
        for tmp in (self.root / "archives").glob("*/.*.tmp-*"):
            if tmp.parent.name not in sessions:
                continue  # another state dir writing to this vault
            try:
                size = tmp.stat().st_size
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed.append((str(tmp.relative_to(self.root)), size))
        return removed

    def stat(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise VaultError(f"vault {self.root}: archive {key} is missing") from None
        except OSError as exc:
            raise VaultError(f"vault {self.root}: cannot read {key}: {exc.strerror}") from None
