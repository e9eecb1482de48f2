"""Archive streams: PAX tar headers, the compression policy, and the writer
that fills one staged archive up to its size limit.

An archive is a POSIX (pax) tar stream, zstd-compressed unless compression
is `none`. With compression `auto` the stream is a sequence of zstd frames:
already-compressed media (by file name suffix) go into frames at a fast
level, everything else at level 3; `zstd -d` and every zstd library read
concatenated frames as one stream, so `zstd -dc A | tar x` restores it.

Header choices (see docs/formats.md):
* member names are the absolute path without its leading "/";
* ustar fields where they fit (raw name bytes, UTF-8 or not), pax records
  where they do not (names over 256 bytes or that cannot be split at a "/",
  link targets over 100 bytes, sizes >= 8 GiB, ids >= 2^21, mtimes before
  1970 or after 2514); a pax record holding bytes that are not UTF-8 comes
  with `hdrcharset=BINARY`; whole-second mtimes in the tar (the catalog
  keeps nanoseconds);
* no user/group names (restore uses the numeric ids, like `tar --numeric-owner`);
* a segment of a split file is named `NAME.eventbak-seg-<15-digit offset>`,
  so `cat NAME.eventbak-seg-* > NAME` joins the parts by hand.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import zstandard

from eventbak.config import Compression

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
SEGMENT_MARK = b".eventbak-seg-"

REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
DIRTYPE = b"5"
PAXTYPE = b"x"

#: Name suffixes of formats that are already compressed.
MEDIA_SUFFIXES = frozenset(
    s.encode()
    for s in [
        ".jpg",
        ".jpeg",
        ".png",
        ".gif",
        ".webp",
        ".heic",
        ".heif",
        ".avif",
        ".mp4",
        ".m4v",
        ".mkv",
        ".mov",
        ".avi",
        ".webm",
        ".mp3",
        ".m4a",
        ".aac",
        ".ogg",
        ".opus",
        ".flac",
        ".zip",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".7z",
        ".rar",
        ".lz4",
        ".jar",
        ".apk",
        ".docx",
        ".xlsx",
        ".pptx",
        ".odt",
        ".pdf",
        ".deb",
        ".rpm",
        ".dmg",
        ".iso",
        ".woff2",
    ]
)
MEDIA_LEVEL = -1
#: zstd worker threads (compression runs beside the Python work; 0 = inline)
ZSTD_THREADS = 2
_TEXT, _MEDIA = 0, 1
_MAX_MTIME = 8**11 - 1
_MAX_NUM = 8**11 - 1  # 11 octal digits: sizes and mtimes
_MAX_ID = 8**7 - 1  # 7 octal digits: uid, gid
#: magic, version, uname, gname, devmajor, devminor, an empty prefix, padding
_USTAR_TAIL = b"ustar\x0000" + b"\0" * 80 + b"\0" * 155 + b"\0" * 12


def is_media(path: bytes) -> bool:
    dot = path.rfind(b".")
    return dot > path.rfind(b"/") and path[dot:].lower() in MEDIA_SUFFIXES


def member_name(path: bytes, kind: str, offset: int | None = None) -> bytes:
    """The tar member name of `path` (absolute) as eventbak writes it."""
    name = path.lstrip(b"/") or b"."
    if offset is not None:
        name += SEGMENT_MARK + b"%015d" % offset
    if kind == "dir":
        name += b"/"
    return name


def padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _octal(n: int, width: int) -> bytes | None:
    if n < 0:
        return None
    s = b"%0*o" % (width - 1, n)
    return s + b"\0" if len(s) == width - 1 else None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    # the prefix ends at a "/" which is not stored; the rest must fit in 100
    i = name.find(b"/", len(name) - 101)
    while i != -1:
        if i <= 155 and len(name) - i - 1 <= 100 and i > 0:
            return name[:i], name[i + 1 :]
        i = name.find(b"/", i + 1)
    return None


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def tar_header(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes = b"",
) -> bytes:
    """The header block(s) for one member: ustar, preceded by a pax header
    when a field does not fit. `mtime` is whole seconds."""
    if (
        len(name) <= 100
        and len(linkname) <= 100
        and 0 <= uid <= _MAX_ID
        and 0 <= gid <= _MAX_ID
        and 0 <= size <= _MAX_NUM
        and 0 <= mtime <= _MAX_NUM
    ):  # the common case, in one formatting step (it is per file: keep it lean)
        h = b"%s%07o\0%07o\0%07o\0%011o\0%011o\0        %s%s%s" % (
            name.ljust(100, b"\0"),
            mode & 0o7777,
            uid,
            gid,
            size,
            mtime,
            typeflag,
            linkname.ljust(100, b"\0"),
            _USTAR_TAIL,
        )
        return h[:148] + b"%06o\0 " % sum(h) + h[156:]
    pax: list[bytes] = []
    split = _split_ustar_name(name)
    if split is None:
        pax.append(_pax_record(b"path", name))
        prefix, short = b"", name[-100:]
    else:
        prefix, short = split
    binary = not (_utf8(name) and _utf8(linkname))
    if len(linkname) > 100:
        pax.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    fields: list[bytes] = []
    for key, value, width in (
        (b"uid", uid, 8),
        (b"gid", gid, 8),
        (b"size", size, 12),
        (b"mtime", mtime, 12),
    ):
        enc = _octal(value, width)
        if enc is None:
            pax.append(_pax_record(key, str(value).encode()))
            enc = b"0" * (width - 1) + b"\0"
        fields.append(enc)
    if pax and binary:
        pax.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    mode_enc = _octal(mode & 0o7777, 8)
    assert mode_enc is not None
    header = b"".join(
        (
            short.ljust(100, b"\0"),
            mode_enc,
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            b"        ",
            typeflag,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            b"\0" * 80,  # uname, gname, devmajor, devminor
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        )
    )
    header = header[:148] + b"%06o\0 " % sum(header) + header[156:]
    if not pax:
        return header
    records = b"".join(pax)
    pax_name = (b"PaxHeaders/" + short.rsplit(b"/", 1)[-1])[:100]
    head = tar_header(pax_name, PAXTYPE, 0o644, 0, 0, len(records), min(max(mtime, 0), _MAX_MTIME))
    return head + records + b"\0" * (padded(len(records)) - len(records)) + header


def _sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), if libc has it: start
    writing a range to disk now, without waiting for it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a failure only costs speed

    return start_writeback


_start_writeback = _sync_file_range()
#: Hand written data to the disk every this many bytes, so that the fsync at
#: the seal waits for the last stretch only instead of the whole archive.
WRITEBACK_EVERY = 8 * 1024 * 1024


class _Sink:
    """Where compressed bytes land: the staged file, hashed and counted."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0
        self._synced = 0

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        if _start_writeback is not None and self.size - self._synced >= WRITEBACK_EVERY:
            self.fh.flush()
            _start_writeback(self.fh.fileno(), self._synced, self.size - self._synced)
            self._synced = self.size
        return len(data)

    def flush(self) -> None:
        pass


class ArchiveWriter:
    """One archive being written into staging.

    `room()` is how many more tar bytes (headers and padded data) surely fit
    under the size limit, counting bytes the compressor still holds as if
    they were incompressible; `tighten()` makes the compressor emit them so
    the count becomes exact. The archive never exceeds `limit`.
    """

    #: Worst case for the end of archive (two zero blocks) and zstd frame ends.
    END_RESERVE = 2 * BLOCK + 256

    def __init__(self, path: Path, limit: int, compression: Compression) -> None:
        self.path = path
        self.limit = limit
        self.compression = compression
        self._fh = open(path, "xb", buffering=1024 * 1024)  # noqa: SIM115 - closed by seal/abort
        self._sink = _Sink(self._fh)
        self.raw_size = 0
        self._pending = 0
        self._writers: list[zstandard.ZstdCompressionWriter] = []
        self._class = _TEXT
        self._frame_open = False
        if compression.mode != "none":
            levels = [compression.level]
            if compression.mode == "auto":
                levels.append(MEDIA_LEVEL)
            for level in levels:
                # worker threads for the main level only: media frames are stored
                # almost as they are, and each worker pool costs its own buffers
                threads = ZSTD_THREADS if level == compression.level else 0
                cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=threads)
                self._writers.append(
                    cctx.stream_writer(
                        self._sink,  # type: ignore[arg-type]
                        closefd=False,
                        write_return_read=True,
                    )
                )

    @staticmethod
    def worst_case(n: int) -> int:
        """Upper bound of the compressed size of n tar bytes (raw zstd blocks)."""
        return n + (n >> 14) + 64

    def room(self) -> int:
        used = self._sink.size + self.worst_case(self._pending) + self.END_RESERVE
        return max(0, self.limit - used)

    def tighten(self) -> None:
        if self._writers and self._pending:
            self._writers[self._class].flush(zstandard.FLUSH_BLOCK)
            self._pending = 0

    def select(self, path: bytes) -> None:
        """Use the compression class of `path` for the data that follows."""
        if self.compression.mode != "auto":
            return
        cls = _MEDIA if is_media(path) else _TEXT
        if cls != self._class:
            if self._frame_open:
                self._writers[self._class].flush(zstandard.FLUSH_FRAME)
                self._frame_open = False
            self._pending = 0
            self._class = cls

    def write(self, data: bytes | memoryview) -> None:
        self.raw_size += len(data)
        if self._writers:
            self._writers[self._class].write(data)
            self._pending += len(data)
            self._frame_open = True
        else:
            self._sink.write(bytes(data) if isinstance(data, memoryview) else data)

    def seal(self) -> tuple[int, int, str]:
        """Finish the stream, fsync; returns (size, raw size, sha256 hex)."""
        self.write(END_OF_ARCHIVE)
        if self._writers:
            self._writers[self._class].flush(zstandard.FLUSH_FRAME)
        self._pending = 0
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return self._sink.size, self.raw_size, self._sink.sha.hexdigest()

    def abort(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)
