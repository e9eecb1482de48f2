"""The local vault: a directory (another disk, a NAS mount), `file:///path`.

A one-part vault (`part_size` is None): every archive is one `put`.
Layout: `archives/<session>/<archive id>.tar.zst` (see docs/formats.md).

A put is atomic and verified before it is visible: the bytes go to a
temporary name in the same directory, are fsynced and checked, then renamed
to the key and the directory fsynced. So a name under `archives/` exists
only for verified bytes, and `head` after a crash can trust what it finds
(it hashes the file all the same: reading a local file is cheap, and head
is asked only when reconciling after an interruption).

Checking: when staging and vault share a filesystem the staged file is
hard-linked instead of copied, and checked by identity: the temporary name
must be the very inode that was staged (device, inode number) with its size
unchanged. That inode's bytes were hashed as they were written and fsynced
at the seal (and re-hashed after a crash before any upload); reading them
back would only hash the same page-cache pages again, at 1.2 s of CPU per
2 GB. A copy is read back and hashed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from eventbak.errors import VaultError
from eventbak.fsutil import fsync_dir, private_dir, sha256_file
from eventbak.vaults.base import Held, Part, Receipt, Tier, Unfinished

_TMP_MARK = ".tmp-"


class LocalVault:
    part_size: int | None = None
    concurrency = 1

    def __init__(self, path: str, url: str | None = None) -> None:
        self.root = Path(path)
        self.local_root: Path | None = self.root
        self.ref = "file://" + path
        self.url = url or self.ref

    def __repr__(self) -> str:
        return f"LocalVault({self.root})"

    def _fail(self, what: str, exc: OSError) -> VaultError:
        return VaultError(f"vault {self.root}: {what}: {exc.strerror or exc}")

    def prepare(self) -> None:
        try:
            # private whatever the umask; a root the user made (a mount point)
            # keeps its mode, what is below it is ours
            private_dir(self.root, tighten=False)
            private_dir(self.root / "archives")
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

    def expected_checksum(self, sha256: str, parts: list[Part]) -> str:
        return sha256

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise VaultError(f"bad vault key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, source: Path, size: int, sha256: str) -> Receipt:
        dest = self._path(key)
        try:
            if not dest.parent.is_dir():
                private_dir(dest.parent)
                fsync_dir(dest.parent.parent)  # the new directory entry is durable too
            tmp = dest.with_name(f".{dest.name}{_TMP_MARK}{os.getpid()}")
            tmp.unlink(missing_ok=True)
            staged = source.stat()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o600)  # as private as the staged file, whatever the umask
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            held = tmp.stat()
            if (held.st_dev, held.st_ino, held.st_size) == (
                staged.st_dev, staged.st_ino, staged.st_size,
            ):  # fmt: skip
                confirmed = sha256  # the staged inode itself (see the module's docstring)
            else:
                confirmed = sha256_file(tmp)
            if confirmed != sha256 or held.st_size != size:
                tmp.unlink(missing_ok=True)
                raise VaultError(
                    f"vault {self.root}: {key} reads back with sha256 {confirmed} "
                    f"({held.st_size} bytes), expected {sha256} ({size} bytes)"
                )
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise self._fail(f"cannot store {key}", exc) from None
        return Receipt(key, held.st_size, confirmed)

    # A one-part vault: the multipart steps are never planned for it.

    def begin(self, key: str) -> str:
        raise VaultError(f"vault {self.root} takes whole archives only")

    def send_part(
        self, key: str, upload_id: str, number: int, source: Path, offset: int, length: int
    ) -> Part:
        raise VaultError(f"vault {self.root} takes whole archives only")

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        return None

    def complete(
        self, key: str, upload_id: str, parts: list[Part], size: int, sha256: str
    ) -> Receipt:
        raise VaultError(f"vault {self.root} takes whole archives only")

    def abort(self, key: str, upload_id: str) -> None:
        """Removes a leftover temp file (as listed by `unfinished`); for any
        other key there is nothing to abort: a put is visible whole or not at all."""
        path = self._path(key)
        if not path.name.startswith(".") or _TMP_MARK not in path.name:
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._fail(f"cannot remove {key}", exc) from None

    def unfinished(self, sessions: set[str]) -> list[Unfinished]:
        """Temp files of puts that never reached their rename (upload id "")."""
        found = []
        for tmp in sorted((self.root / "archives").glob(f"*/.*{_TMP_MARK}*")):
            if tmp.parent.name not in sessions:
                continue  # another state dir writing to this vault
            try:
                size = tmp.stat().st_size
            except FileNotFoundError:
                continue
            found.append(Unfinished(str(tmp.relative_to(self.root)), "", size))
        return found

    def head(self, key: str) -> Held | None:
        path = self._path(key)
        try:
            size = path.stat().st_size
            return Held(size, sha256_file(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"cannot read {key}", exc) from None

    def put_small(self, key: str, data: bytes) -> Receipt:
        dest = self._path(key)
        tmp = dest.with_name(f".{dest.name}{_TMP_MARK}{os.getpid()}")
        try:
            # the root keeps its mode (a mount point the user made), as in prepare
            private_dir(dest.parent, tighten=dest.parent != self.root)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise self._fail(f"cannot store {key}", exc) from None
        return Receipt(key, len(data), hashlib.sha256(data).hexdigest())

    def get_small(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"cannot read {key}", exc) from None

    def list_small(self, prefix: str) -> list[str]:
        where = self._path(prefix.rstrip("/"))
        try:
            names = sorted(p.name for p in where.iterdir() if p.is_file())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._fail(f"cannot list {prefix}", exc) from None
        # a put still under its temporary name is not an object yet
        return [prefix + n for n in names if not (n.startswith(".") and _TMP_MARK in n)]

    def request_thaw(self, key: str, tier: Tier, days: int) -> None:
        return None  # nothing freezes on a disk

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise VaultError(f"vault {self.root}: archive {key} is missing") from None
        except OSError as exc:
            raise self._fail(f"cannot read {key}", exc) from None

    def close(self) -> None:
        return None
