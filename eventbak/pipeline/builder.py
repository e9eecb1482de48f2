"""The builder: packs scanned entries into archives in staging.

`Packer` is blocking code, run in a worker thread by the coordinator's
builder task one batch of entries at a time. It returns, in order, the
events to record and the archives it sealed. It owns the staging files it is
writing; a sealed archive is handed over (renamed from `.partial` to its
final name and fsynced) before the coordinator records `ArchiveSealed`.

Files are opened with O_NOFOLLOW | O_NONBLOCK and checked with fstat, so a
file swapped for a FIFO or symlink after the scan is never read through. The
size committed to the tar header is the one fstat gave at open; a file that
shrinks while read is padded with zeros, one that grows is cut at that size,
and both are recorded as `EntryChanged` (the archive stays a valid tar).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from eventbak import archive as ar
from eventbak.archive.layers import ArchiveFormat
from eventbak.archive.policy import HEAD, Policy
from eventbak.catalog.dedup import ContentIndex
from eventbak.core import events as ev
from eventbak.fsutil import fsync_dir
from eventbak.pipeline.scanner import Entry

CHUNK = 1024 * 1024
#: Files up to this size are read with one call and written with one call.
SMALL_FILE = 256 * 1024
#: A file that does not fit is split only if at least this much room is left;
#: otherwise the archive is sealed and the file starts in the next one.
MIN_SEGMENT = 256 * 1024
#: Files the policy stores get a stored frame of their own from this size on.
STORE_MIN = 128 * 1024
Hasher = blake3.blake3
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Stopped(Exception):
    """The packer was asked to stop; the archive being built is incomplete."""


@dataclass
class Sealed:
    """An archive the packer finished: durable in staging, not yet recorded."""

    event: ev.ArchiveSealed
    path: Path


Output = ev.Event | Sealed


@dataclass
class Progress:
    files: int = 0
    bytes: int = 0
    archives: int = 0


@dataclass
class _Open:
    writer: ar.ArchiveWriter
    archive: str
    index: int
    members: list[ev.Member] = field(default_factory=list)  # not yet listed
    listed: ev.Summary = field(default_factory=ev.Summary)  # out in MembersListed

    @property
    def empty(self) -> bool:
        return not self.members and not self.listed.count


class Packer:
    def __init__(
        self,
        session: str,
        staging: Path,
        limit: int,
        fmt: ArchiveFormat,
        policy: Policy,
        next_index: int = 1,
        stop: threading.Event | None = None,
        on_seal: Callable[[list[Output]], None] | None = None,
        dedup: ContentIndex | None = None,
    ) -> None:
        self.session = session
        self.staging = staging
        self.limit = limit
        self.format = fmt
        self.policy = policy
        self.next_index = next_index
        self.stop = stop or threading.Event()
        self.on_seal = on_seal
        self.dedup = dedup
        self.progress = Progress()
        self._open: _Open | None = None
        self._out: list[Output] = []
        # (dev, ino) -> the first name of a multi-link file: stored by this run,
        # or left unchanged by the scanner (scanner.changes), which adds to it
        self.links: dict[tuple[int, int], bytes] = {}
        self.min_segment = min(MIN_SEGMENT, limit // 8)
        # the most tar bytes of one member an empty archive holds (its global
        # header and the end of archive aside)
        overhead = len(self._global_header("x")) + len(ar.END_OF_ARCHIVE)
        lo, hi = 0, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fmt.fresh_size(overhead + mid) <= limit else (lo, mid - 1)
        self._fresh_max = lo

    # -- archive lifecycle ----------------------------------------------

    def archive_id(self, index: int) -> str:
        return f"{self.session}-{index:06d}"

    def _current(self) -> _Open:
        if self._open is None:
            index = self.next_index
            self.next_index += 1
            aid = self.archive_id(index)
            path = self.staging / f"{aid}.partial"
            path.unlink(missing_ok=True)
            writer = ar.ArchiveWriter(path, self.limit, self.format)
            self._open = _Open(writer, aid, index)
            writer.write(self._global_header(aid))
            self._out.append(
                ev.ArchiveStarted(at=time.time(), session=self.session, archive=aid, index=index)
            )
        return self._open

    def _global_header(self, archive: str) -> bytes:
        """The first member of every archive: what the archive is, on its own."""
        return ar.global_header(
            {
                "EVENTBAK.format": str(ar.FORMAT_VERSION),
                "EVENTBAK.archive": archive,
                "EVENTBAK.session": self.session,
                "EVENTBAK.layers": ",".join(self.format.layers) or "none",
            }
        )

    def _seal(self) -> None:
        cur = self._open
        if cur is None:
            return
        try:
            size, raw, sha = cur.writer.seal()
            final = self.staging / f"{cur.archive}{self.format.suffix}"
            os.replace(cur.writer.path, final)
            fsync_dir(self.staging)
        except BaseException:
            self.abort()  # the partial file goes; the log still says building
            raise
        self._open = None
        event = ev.ArchiveSealed.of(
            at=time.time(),
            archive=cur.archive,
            staged=final.name,
            size=size,
            raw_size=raw,
            sha256=sha,
            compression=str(self.format.compression),
            members=cur.members,
            layers=self.format.layers,
            listed=cur.listed,
        )
        self.progress.archives += 1
        self._out.append(Sealed(event, final))
        if self.on_seal is not None:
            self.on_seal(self.take())

    def abort(self) -> str | None:
        """Drop the archive being built (its staged file too); returns its id."""
        cur = self._open
        self._open = None
        if cur is None:
            return None
        cur.writer.abort()
        return cur.archive

    # -- packing ----------------------------------------------------------

    def pack(self, entries: Iterable[Entry]) -> list[Output]:
        """Pack a batch; returns the outputs not yet handed to `on_seal`.

        With `on_seal` set, each time an archive is sealed the outputs so far
        (ending with the `Sealed`) are handed to it before anything else is
        packed: the caller makes `ArchiveSealed` durable first, so staging
        never holds more than one sealed archive the log does not know, even
        in the middle of a file split across many archives.

        Raises Stopped (outputs so far kept for `take()`) when asked to stop.
        """
        for entry in entries:
            if self.stop.is_set():
                raise Stopped
            kind = entry.kind
            if entry.reason and kind in ("file", "dir", "symlink"):
                self._out.append(
                    ev.EntryChanged(
                        at=time.time(), session=self.session, path=entry.path, detail=entry.reason
                    )
                )
            if kind == "file":
                self._file(entry)
            elif kind == "dir":
                self._simple(entry, "dir", ar.DIRTYPE, b"")
            elif kind == "symlink":
                self._simple(entry, "symlink", ar.SYMTYPE, entry.target)
            elif kind == "deleted":
                self._out.append(
                    ev.EntryDeleted(at=time.time(), session=self.session, path=entry.path)
                )
            else:
                self._skip(entry.path, entry.reason, special=kind == "special")
        return self.take()

    pack_all = pack

    def finish(self) -> list[Output]:
        """Seal the last archive; returns the remaining outputs."""
        self._seal()
        return self.take()

    def take(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _skip(self, path: bytes, reason: str, special: bool = False) -> None:
        self._out.append(
            ev.EntrySkipped(
                at=time.time(), session=self.session, path=path, reason=reason, special=special
            )
        )

    def _fit(self, need: int) -> _Open:
        """The open archive, sealed and replaced first if `need` tar bytes do not fit."""
        cur = self._current()
        if cur.writer.fits(need):
            return cur
        cur.writer.tighten()
        if cur.writer.fits(need) or cur.empty:
            return cur
        self._seal()
        return self._current()

    def _simple(self, entry: Entry, kind: ev.MemberKind, typeflag: bytes, target: bytes) -> None:
        st = entry.st
        assert st is not None
        header = ar.tar_header(
            ar.member_name(entry.path, kind),
            typeflag,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            0,
            st.st_mtime_ns // 1_000_000_000,
            target,
        )
        cur = self._fit(len(header))
        cur.writer.write(header)
        self._member(
            cur,
            ev.Member(
                entry.path,
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
                0,
                st.st_uid,
                st.st_gid,
                target,
                ctime_ns=st.st_ctime_ns,
                ino=st.st_ino,
            )
        )

    def _file(self, entry: Entry) -> None:
        path = entry.path
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            self._skip(path, "vanished")
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._skip(path, "vanished (replaced by a symlink)")
            else:
                self._skip(path, f"unreadable: {exc.strerror}")
            return
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            self._skip(path, f"unreadable: {exc.strerror}")
            return
        # From here on an OSError is ours (staging full, ...), not the file's:
        # read errors are handled in _copy; everything else stops the session.
        try:
            if not stat.S_ISREG(st.st_mode):
                self._skip(path, "vanished (no longer a regular file)")
                return
            if st.st_nlink > 1:
                first = self.links.get((st.st_dev, st.st_ino))
                if first is not None:
                    self._hardlink(path, st, first)
                    return
            self._file_data(path, fd, st, entry.start)
            if st.st_nlink > 1:
                self.links[(st.st_dev, st.st_ino)] = path
        finally:
            os.close(fd)

    def _hardlink(self, path: bytes, st: os.stat_result, first: bytes) -> None:
        header = ar.tar_header(
            ar.member_name(path, "file"),
            ar.LNKTYPE,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            0,
            st.st_mtime_ns // 1_000_000_000,
            ar.member_name(first, "file"),
        )
        cur = self._fit(len(header))
        cur.writer.write(header)
        self._member(
            cur,
            ev.Member(
                path,
                "hardlink",
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
                st.st_size,
                st.st_uid,
                st.st_gid,
                first,
                ctime_ns=st.st_ctime_ns,
                ino=st.st_ino,
            )
        )
        self.progress.files += 1

    def _member(self, cur: _Open, m: ev.Member) -> None:
        """Add `m` to the open archive's list; a full piece of the list goes
        out as `MembersListed` (memory and records stay bounded)."""
        cur.members.append(m)
        if len(cur.members) >= ev.MEMBERS_PER_RECORD:
            for listed in cur.members:
                cur.listed.add(listed)
            self._out.append(
                ev.MembersListed(at=time.time(), archive=cur.archive, members=cur.members)
            )
            cur.members = []

    def _file_data(self, path: bytes, fd: int, st: os.stat_result, start: int = 0) -> None:
        size = st.st_size
        dedup = self.dedup
        if start == 0 and dedup is not None and dedup.may_hold(size):  # noqa: SIM102
            if self._reuse(path, fd, st, dedup):
                return
        # the content hash (BLAKE3: a quarter of SHA-256's cost here), of a
        # file read from its first byte on
        hasher = blake3.blake3() if start == 0 else None
        mtime = st.st_mtime_ns // 1_000_000_000
        whole = ar.tar_header(
            ar.member_name(path, "file"), ar.REGTYPE, st.st_mode, st.st_uid, st.st_gid, size, mtime
        )
        need = len(whole) + ar.padded(size)
        whole_fits = start == 0 and need <= self._fresh_max
        changed: list[str] = []
        if whole_fits and size <= SMALL_FILE:
            # one read (a byte more than expected tells that it grew), one write
            try:
                data = os.read(fd, size + 1)
            except OSError as exc:
                changed.append(f"read error: {exc.strerror}")
                data = b""
            if len(data) != size:
                if not changed:
                    changed.append("grew while read" if len(data) > size else "shrank while read")
                data = data[:size].ljust(size, b"\0")
            if hasher is not None:
                hasher.update(data)
            cur = self._fit(need)
            cur.writer.select(self._class(cur, self.policy.decide(path, data[:HEAD], size), size))
            cur.writer.write(whole + data + bytes(need - len(whole) - size))
            self.progress.bytes += size
            _check_unchanged(fd, st, changed)
            self._add_member(cur, path, st, 0, size, changed, _digest(hasher, changed))
        elif whole_fits:
            try:  # the first chunk: what the policy looks at, then the start of the copy
                first = os.read(fd, CHUNK)
            except OSError as exc:
                changed.append(f"read error: {exc.strerror}")
                first = b""
            compress = self.policy.decide(path, first[:HEAD], size)
            cur = self._fit(need)
            cur.writer.select(self._class(cur, compress, size))
            cur.writer.write(whole)
            self._copy(fd, cur, size, changed, first, hasher)
            _check_unchanged(fd, st, changed)
            self._add_member(cur, path, st, 0, size, changed, _digest(hasher, changed))
        else:
            offset = start
            compress = self._decide(fd, path, size)
            if start:
                os.lseek(fd, start, os.SEEK_SET)
            while True:
                cur = self._current()
                cur.writer.tighten()
                header = ar.tar_header(
                    ar.member_name(path, "file", offset),
                    ar.REGTYPE,
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    size,
                    mtime,
                )  # size field is a placeholder: the real one is below
                # the payload in whole blocks
                most = cur.writer.capacity()
                length = min(size - offset, (most - len(header)) // ar.BLOCK * ar.BLOCK)
                if length < min(self.min_segment, size - offset) or length <= 0:
                    if cur.empty:
                        raise RuntimeError(f"archive size {self.limit} too small for a segment")
                    self._seal()
                    continue
                header = ar.tar_header(
                    ar.member_name(path, "file", offset),
                    ar.REGTYPE,
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    length,
                    mtime,
                )
                cur.writer.select(compress)
                cur.writer.write(header)
                self._copy(fd, cur, length, changed, hasher=hasher)
                offset += length
                digest = b""
                if offset >= size:
                    _check_unchanged(fd, st, changed)
                    digest = _digest(hasher, changed)
                self._add_member(cur, path, st, offset - length, length, changed, digest)
                if offset >= size:
                    break
        if changed:
            self._out.append(
                ev.EntryChanged(
                    at=time.time(), session=self.session, path=path, detail="; ".join(changed)
                )
            )

    def _reuse(self, path: bytes, fd: int, st: os.stat_result, index: ContentIndex) -> bool:
        """Hash the file; if the base's point in time holds the same content,
        list it as reused (members that name where its bytes are, no data
        here) and return True. False: pack it as usual."""
        size, hasher, pos = st.st_size, blake3.blake3(), 0
        try:
            while pos < size:
                if self.stop.is_set():
                    raise Stopped
                chunk = os.pread(fd, min(CHUNK, size - pos), pos)
                if not chunk:
                    return False  # shrank: packing it records that
                hasher.update(chunk)
                pos += len(chunk)
            after = os.fstat(fd)
        except OSError:
            return False  # packing it meets the error again and records it
        if after.st_size != size or after.st_mtime_ns != st.st_mtime_ns:
            return False
        digest = hasher.digest()
        found = index.find(size, digest)
        if found is None:
            return False
        cur = self._current()
        last = len(found.where) - 1
        for i, loc in enumerate(found.where):
            self._member(
                cur,
                ev.Member(
                    path, "file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, size, st.st_uid,
                    st.st_gid, b"", loc.offset, loc.length, False, found.zstd, st.st_ctime_ns,
                    st.st_ino, digest if i == last else b"", ref=loc.archive, source=loc.path,
                ),
            )  # fmt: skip
        self.progress.files += 1
        return True

    @staticmethod
    def _class(cur: _Open, compress: bool, size: int) -> bool:
        """The frame a file's data goes into: a file the policy would store
        but smaller than STORE_MIN stays in an open compressed frame (zstd
        keeps what does not shrink in raw blocks itself, at a cost of
        microseconds), so that the data around it keeps its compression
        window and no frame ends for it (a frame end waits for zstd's workers)."""
        if not compress and size < STORE_MIN:
            return cur.writer.compressing
        return compress

    def _decide(self, fd: int, path: bytes, size: int) -> bool:
        """The policy's choice for a file split across archives, from its
        first bytes (every segment follows the choice made for the whole
        file, also when a resume continues it from an offset)."""
        try:
            head = os.pread(fd, HEAD, 0)
        except OSError:
            head = b""  # _copy meets the error again and records it
        return self.policy.decide(path, head, size)

    def _add_member(
        self,
        cur: _Open,
        path: bytes,
        st: os.stat_result,
        offset: int,
        length: int,
        changed: list[str],
        digest: bytes = b"",
    ) -> None:
        self._member(
            cur,
            ev.Member(
                path,
                "file",
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
                st.st_size,
                st.st_uid,
                st.st_gid,
                b"",
                offset,
                length,
                bool(changed),
                cur.writer.compressing,
                st.st_ctime_ns,
                st.st_ino,
                digest,
            )
        )
        if offset == 0:
            self.progress.files += 1

    def _copy(
        self,
        fd: int,
        cur: _Open,
        length: int,
        changed: list[str],
        first: bytes = b"",
        hasher: Hasher | None = None,
    ) -> None:
        """Copy `length` bytes from fd into the archive (starting with `first`,
        already read from it), then the padding; `hasher` sees the file's bytes."""
        write = cur.writer.write
        left = length
        if first:
            first = first[:length]
            if hasher is not None:
                hasher.update(first)
            write(first)
            left -= len(first)
            self.progress.bytes += len(first)
        while left > 0:
            if self.stop.is_set():
                raise Stopped
            try:
                chunk = os.read(fd, min(left, CHUNK))
            except OSError as exc:
                changed.append(f"read error: {exc.strerror}")
                chunk = b""
            if not chunk:
                if not changed:
                    changed.append("shrank while read")
                write(bytes(min(left, CHUNK)))
                left -= min(left, CHUNK)
                continue
            if hasher is not None:
                hasher.update(chunk)
            write(chunk)
            left -= len(chunk)
            self.progress.bytes += len(chunk)
        pad = ar.padded(length) - length
        if pad:
            write(b"\0" * pad)


def _digest(hasher: Hasher | None, changed: list[str]) -> bytes:
    """The content hash, if the file was read whole and did not change meanwhile."""
    return hasher.digest() if hasher is not None and not changed else b""


def _check_unchanged(fd: int, st: os.stat_result, changed: list[str]) -> None:
    after = os.fstat(fd)
    if after.st_size != st.st_size:
        changed.append(f"size {st.st_size} -> {after.st_size}")
    elif after.st_mtime_ns != st.st_mtime_ns and not changed:
        changed.append("modified while read")
