"""Manifests: every entry of one session's point in time, in walk order, as
a streamable file, and the reader that checks one read back from a vault.

A manifest is a stream of records through the archive layers (zstd, then
age when encryption is on: `archive/layers.py`), so it is compressed and
encrypted exactly as archives are and `age -d | zstd -d` opens it. Each
record is a 4-byte little-endian length and that many bytes of MessagePack:

    header            a map: format, session, dataset, paths, created
    entry ...         arrays (`ManifestEntry`), strictly increasing in walk order
    (length 0)        the end mark
    trailer           a map: count (entries written)

The writer holds one record at a time plus a batch of about 256 KiB, and
the reader one record, so memory stays flat in the number of entries. A
manifest read back from a vault is untrusted input: the reader refuses a
path that is not absolute, holds a NUL, an empty, `.` or `..` component, or
does not follow the one before it in walk order, a truncated stream (no end
mark or trailer), and a count that does not match (`ManifestError`, naming
the record).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec
import zstandard

from eventbak.archive.age import AgeError, Decrypting, Identities
from eventbak.archive.layers import ArchiveFormat, Output
from eventbak.archive.sink import _Sink
from eventbak.config import Compression
from eventbak.errors import EventbakError

FORMAT_VERSION = 1
#: Records are handed to the layers in batches of about this size.
BATCH = 256 * 1024
#: No record of ours comes near this; a bigger length is damage.
MAX_RECORD = 64 * 1024 * 1024
_LEN = struct.Struct("<I")

EntryKind = Literal["file", "dir", "symlink", "hardlink"]


class ManifestError(EventbakError):
    """A manifest that is damaged, truncated or not what it claims (one line)."""


class Location(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Where (part of) a file's bytes live: a member of an archive."""

    archive: str
    offset: int  # of this part in the file
    length: int
    #: the path its member is stored under in that archive, if not the
    #: entry's own (a file stored under another name, found by dedup)
    path: bytes = b""


class ManifestEntry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One entry of a point in time. `where` lists the archive members that
    hold a file's bytes, in offset order (one for a whole file; a split
    file's segments); `hash` is the content hash (empty where none)."""

    path: bytes
    kind: EntryKind
    mode: int
    mtime_ns: int
    ctime_ns: int = 0
    ino: int = 0
    size: int = 0
    uid: int = 0
    gid: int = 0
    target: bytes = b""
    hash: bytes = b""
    zstd: bool = False
    where: list[Location] = []


class ArchiveRecord(msgspec.Struct, frozen=True):
    """An archive of the session as the vault holds it: enough to fetch and
    verify it without the event log (`eventbak recover`)."""

    id: str
    key: str  # where in the vault (Glacier: the archive id)
    size: int
    sha256: str  # of the object as stored (hex)
    layers: list[str]
    raw_size: int = 0
    checksum: str = ""  # what the vault confirmed, in its form
    storage_class: str = ""
    index: int = 0
    count: int = 0  # its members (entries and segments)
    files: int = 0  # files stored from their first byte, and hard links
    bytes: int = 0  # bytes of file data


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What the session was: with `archives`, everything `eventbak recover`
    needs besides the entries. Fields after `created` came with format 1's
    second revision; a reader of the first ignores them."""

    format: int
    session: str
    dataset: str
    paths: list[bytes]
    created: float = 0.0
    base: str = ""  # the session it stored the changes since
    opened: float = 0.0
    vault: str = ""  # the vault's identity
    archive_size: int = 0
    compression: str = ""
    exclude: list[str] = []
    recipients: list[str] = []
    always_compress: list[str] = []
    never_compress: list[str] = []
    ignore_inode: bool = False
    ignore_ctime: bool = False
    #: the session's archives in the vault (the entries may also name older
    #: sessions' archives: those are listed in their own manifests)
    archives: list[ArchiveRecord] = []


class Trailer(msgspec.Struct, frozen=True):
    count: int


def walk_key(path: bytes) -> tuple[bytes, ...]:
    return tuple(path.split(b"/"))


def check_path(path: bytes) -> str:
    """Why `path` cannot be an entry's path ("" if it can)."""
    if (  # the common case in a few scans: no empty component, no name with a leading dot
        path.startswith(b"/")
        and b"//" not in path
        and b"/." not in path
        and b"\0" not in path
        and (len(path) == 1 or not path.endswith(b"/"))
    ):
        return ""
    if not path.startswith(b"/"):
        return "is not absolute"
    if b"\0" in path:
        return "holds a NUL byte"
    if path != b"/" and any(p in (b"", b".", b"..") for p in path[1:].split(b"/")):
        return "has an empty, '.' or '..' component"
    return ""


class ManifestWriter:
    """Writes one manifest into `path` (a new file, 0600), entry by entry in walk order."""

    def __init__(self, path: Path, header: Header, recipients: tuple[str, ...] = ()) -> None:
        self.path = path
        self.format = ArchiveFormat(Compression("zstd"), recipients)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._sink = _Sink(self._fd)
        self._first: Output = self.format.build(self._sink)[0]
        self._enc = msgspec.msgpack.Encoder()
        self._buf = bytearray()
        self._last: tuple[bytes, ...] | None = None
        self.count = 0
        self._record(self._enc.encode(header))

    def _record(self, payload: bytes) -> None:
        self._buf += _LEN.pack(len(payload))
        self._buf += payload
        if len(self._buf) >= BATCH:
            self._first.take(bytes(self._buf))
            self._buf.clear()

    def add(self, entry: ManifestEntry) -> None:
        why = check_path(entry.path)
        k = walk_key(entry.path)
        if not why and self._last is not None and k <= self._last:
            why = "does not follow the entry before it in walk order"
        if why:
            raise ValueError(f"manifest entry {entry.path!r} {why}")
        self._last = k
        self._record(self._enc.encode(entry))
        self.count += 1

    def close(self) -> tuple[int, str]:
        """End mark, trailer, fsync; returns (size, sha256 hex) of the file."""
        self._buf += _LEN.pack(0)
        self._record(self._enc.encode(Trailer(self.count)))
        self._first.take(bytes(self._buf))
        self._buf.clear()
        try:
            self._first.close()
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1
        return self._sink.size, self._sink.sha.hexdigest()

    def abort(self) -> None:
        self._first.abort()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class ManifestReader:
    """The entries of a manifest read from `source` (a vault object or a
    file), undoing `layers` ("zstd", "age") in reverse; `header` is read
    at once. Iterating yields the entries and then checks the end."""

    def __init__(
        self,
        source: BinaryIO,
        layers: list[str],
        identities: Identities | None = None,
        name: str = "manifest",
    ) -> None:
        self.name = name
        self._closers: list[Decrypting] = []
        stream: BinaryIO = source
        for layer in reversed(layers):
            if layer == "age":
                if identities is None:
                    raise ManifestError(f"{name} is encrypted: an identity is needed")
                d = Decrypting(stream, identities)
                self._closers.append(d)
                stream = d  # type: ignore[assignment]
            elif layer == "zstd":
                stream = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
            else:
                raise ManifestError(f"{name} has a layer this version cannot read: {layer}")
        self._stream = stream
        self._n = 0
        payload = self._next()
        if payload is None:
            raise ManifestError(f"{name} is empty or truncated before its header")
        try:
            self.header = msgspec.msgpack.decode(payload, type=Header)
        except msgspec.DecodeError as exc:
            raise ManifestError(f"{name}: bad header: {exc}") from None
        if self.header.format != FORMAT_VERSION:
            raise ManifestError(
                f"{name} has format {self.header.format}; this version reads {FORMAT_VERSION}"
            )

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self._stream.read(n - len(out))
            except (zstandard.ZstdError, AgeError, OSError) as exc:
                raise ManifestError(f"{self.name} cannot be read: {exc}") from None
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def _next(self) -> bytes | None:
        """The next record's payload; b"" for the end mark; None at the end of the stream."""
        head = self._read(4)
        if not head:
            return None
        if len(head) < 4:
            raise ManifestError(f"{self.name} is truncated inside record {self._n}")
        (n,) = _LEN.unpack(head)
        if n > MAX_RECORD:
            raise ManifestError(f"{self.name}: record {self._n} claims {n} bytes")
        payload = self._read(n)
        if len(payload) < n:
            raise ManifestError(f"{self.name} is truncated inside record {self._n}")
        self._n += 1
        return payload

    def __iter__(self) -> Iterator[ManifestEntry]:
        decode = msgspec.msgpack.Decoder(ManifestEntry).decode
        last: tuple[bytes, ...] | None = None
        count = 0
        try:
            while True:
                payload = self._next()
                if payload is None:
                    raise ManifestError(f"{self.name} is truncated: no end mark")
                if payload == b"":
                    break
                try:
                    entry = decode(payload)
                except msgspec.DecodeError as exc:
                    raise ManifestError(f"{self.name}: bad entry {count}: {exc}") from None
                why = check_path(entry.path)
                k = walk_key(entry.path)
                if not why and last is not None and k <= last:
                    why = "does not follow the entry before it in walk order"
                if why:
                    raise ManifestError(f"{self.name}: entry {entry.path!r} {why}")
                last = k
                count += 1
                yield entry
            payload = self._next()
            try:
                trailer = msgspec.msgpack.decode(payload or b"", type=Trailer)
            except msgspec.DecodeError:
                raise ManifestError(f"{self.name} is truncated: no trailer") from None
            if trailer.count != count:
                raise ManifestError(
                    f"{self.name} lists {count} entries, its trailer says {trailer.count}"
                )
        finally:
            self.close()

    def close(self) -> None:
        for d in self._closers:
            d.close()
        self._closers = []


def header_for(session: str, dataset: str, paths: list[bytes]) -> Header:
    return Header(FORMAT_VERSION, session, dataset, paths, time.time())
