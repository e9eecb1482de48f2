"""Archive streams: PAX tar headers, the compression policy, and the writer
that fills one staged archive up to its size limit.

An archive is a POSIX (pax) tar stream, zstd-compressed unless compression
is `none`. With compression `auto` the stream is a sequence of zstd frames:
already-compressed media (by file name suffix) are stored in frames of raw
blocks, everything else compressed at level 3; `zstd -d` and every zstd library read
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
import queue
import threading
from collections.abc import Callable
from pathlib import Path

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
#: zstd worker threads (compression runs beside the Python work; 0 = inline)
ZSTD_THREADS = 2
_TEXT, _MEDIA = 0, 1
_MAX_MTIME = 8**11 - 1
_MAX_NUM = 8**11 - 1  # 11 octal digits: sizes and mtimes
_MAX_ID = 8**7 - 1  # 7 octal digits: uid, gid
#: magic, version, uname, gname, devmajor, devminor, an empty prefix, padding
_USTAR_TAIL = b"ustar\x0000" + b"\0" * 80 + b"\0" * 155 + b"\0" * 12
#: the checksum's share of the constant parts: its own field read as 8
#: spaces, and the tail
_USTAR_SUM = 8 * ord(" ") + sum(_USTAR_TAIL)


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
    ):  # the common case, per file: keep it lean (the checksum sums the
        # bytes that vary; NUL padding adds nothing, the rest is _USTAR_SUM)
        numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime)
        return b"%s%s%06o\0 %s%s%s" % (
            name.ljust(100, b"\0"),
            numbers,
            _USTAR_SUM + sum(name) + sum(numbers) + typeflag[0] + sum(linkname),
            typeflag,
            linkname.ljust(100, b"\0"),
            _USTAR_TAIL,
        )
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


#: The sink hands bytes to its thread in batches of about this size; at
#: most SINK_BACKLOG batches wait (bounded memory: ~4 MiB in flight).
SINK_BATCH = 1024 * 1024
SINK_BACKLOG = 4
_IOV_MAX = 512


def _write_all(fd: int, pieces: list[bytes | memoryview]) -> None:
    """writev until every piece is written (regular files may write short)."""
    while pieces:
        n = os.writev(fd, pieces[:_IOV_MAX])
        i = 0
        while i < len(pieces) and n >= len(pieces[i]):
            n -= len(pieces[i])
            i += 1
        pieces = pieces[i:]
        if n:
            pieces[0] = memoryview(pieces[0])[n:]


class _Sink:
    """Where compressed bytes land: the staged file, hashed and counted.

    Bytes are hashed as they come (in the caller's thread) and written by a
    thread of the sink's own, so reading and hashing one batch overlaps the
    write of the one before: on this VM a write into fresh page cache costs
    about as much CPU as the hash (sha256 and writev both release the GIL).
    `write` takes ownership of what it is given (bytes, or views of bytes:
    never of a buffer reused later). A write error surfaces at the next
    `write` or at `close`; `size` counts the bytes handed over, which are
    the staged file's size once `close` returns.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha = hashlib.sha256()
        self.size = 0
        self._batch: list[bytes | memoryview] = []
        self._batched = 0
        self._queue: queue.Queue[list[bytes | memoryview] | None] = queue.Queue(SINK_BACKLOG)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="eventbak-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        written = synced = 0
        while (pieces := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the packer learns of the error at its next call
            try:
                _write_all(self.fd, pieces)
            except Exception as exc:  # handed to the packer; the thread drains on
                self._error = exc
                continue
            written += sum(len(p) for p in pieces)
            if _start_writeback is not None and written - synced >= WRITEBACK_EVERY:
                _start_writeback(self.fd, synced, written - synced)
                synced = written

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if n:
            self._raise()
            self.sha.update(data)
            self._batch.append(data)
            self._batched += n
            self.size += n
            if self._batched >= SINK_BATCH:
                self._hand_over()
        return n

    def _hand_over(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._batched = [], 0

    def flush(self) -> None:
        pass  # batches go at SINK_BATCH and at close

    def close(self) -> None:
        """Write everything handed over (raising a write error), stop the thread."""
        if self._thread.is_alive():
            self._hand_over()
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def discard(self) -> None:
        """Stop the thread; what was not yet written is dropped, errors ignored."""
        if self._thread.is_alive():
            self._batch, self._batched = [], 0
            self._error = self._error or OSError("archive discarded")
            self._queue.put(None)
            self._thread.join()


#: zstd frame magic, then a frame header descriptor with no content size, no
#: checksum, no dictionary, and a window descriptor of 2^17 (one raw block).
_STORED_FRAME_HEADER = b"\x28\xb5\x2f\xfd\x00\x38"
_RAW_BLOCK_MAX = 128 * 1024


def _raw_block_header(size: int, last: bool = False) -> bytes:
    """Block_Header: Last_Block bit, Block_Type 0 (Raw_Block), Block_Size."""
    return ((size << 3) | last).to_bytes(3, "little")


_RAW_BLOCK_HEADER = _raw_block_header(_RAW_BLOCK_MAX)
#: a Last_Block raw block of size 0: the end of a stored frame
_STORED_FRAME_END = _raw_block_header(0, last=True)


class _StoredFrames:
    """zstd frames of raw blocks: already-compressed data kept as it is
    (RFC 8878 Raw_Block: a 3-byte header per 128 KiB, no copy but of the
    partial blocks).

    zstd reaches the same bytes only after trying to compress them (1.4 GB/s
    at level -1 on this machine, in the packer thread); raw blocks written
    here keep the archive one valid zstd stream that every decoder reads.
    The frames carry no content checksum: the archive's sha256 covers them.
    Data is cut into full 128 KiB blocks; a partial block is held back until
    more data or a flush (`held` bytes, for the writer's size accounting).
    Same `write`/`flush` surface as the zstandard stream writer beside it.
    """

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._open = False
        self._buf = bytearray()

    @property
    def held(self) -> int:
        return len(self._buf)

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if not n:
            return 0
        sink = self._sink.write
        if not self._open:
            sink(_STORED_FRAME_HEADER)
            self._open = True
        # the sink keeps views of `data` until written: they must be of bytes
        view = memoryview(data if isinstance(data, bytes) else bytes(data))
        i = 0
        if self._buf:
            i = min(n, _RAW_BLOCK_MAX - len(self._buf))
            self._buf += view[:i]
            if len(self._buf) == _RAW_BLOCK_MAX:
                sink(_RAW_BLOCK_HEADER)
                sink(bytes(self._buf))
                self._buf.clear()
        while n - i >= _RAW_BLOCK_MAX:
            sink(_RAW_BLOCK_HEADER)
            sink(view[i : i + _RAW_BLOCK_MAX])
            i += _RAW_BLOCK_MAX
        if i < n:
            self._buf += view[i:]
        return n

    def flush(self, mode: int = zstandard.FLUSH_BLOCK) -> None:
        if self._buf:
            self._sink.write(_raw_block_header(len(self._buf)) + self._buf)
            self._buf.clear()
        if mode == zstandard.FLUSH_FRAME and self._open:
            self._sink.write(_STORED_FRAME_END)
            self._open = False


class ArchiveWriter:
    """One archive being written into staging.

    `room()` is how many more tar bytes (headers and padded data) surely fit
    under the size limit: the bytes in the staged file, plus what the open
    frame will still emit for what it was given: its compressed bytes not yet
    emitted, exactly, and its input not yet compressed as if it were
    incompressible (zstd's frame progression tells both, without waiting
    for the worker threads); `tighten()` makes the compressor emit
    everything, so that the count becomes exact. `fits(n)` answers from a
    running lower bound of the room (each write takes its worst case off)
    and recomputes `room()` only when that bound runs out. The archive never
    exceeds `limit`.

    Small writes (a small file with its header) are gathered and handed to
    the compressor together: one call per GATHER bytes instead of per file.
    """

    #: Worst case for the end of archive (two zero blocks) and zstd frame ends.
    END_RESERVE = 2 * BLOCK + 256
    #: One change of frame (select) after the last `fits`: an end, a header.
    SWITCH_RESERVE = 64
    #: Writes under this size are gathered up to this size.
    GATHER = 256 * 1024

    def __init__(self, path: Path, limit: int, compression: Compression) -> None:
        self.path = path
        self.limit = limit
        self.compression = compression
        # 0600: a staged archive holds copies of the files it backs up
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._sink = _Sink(self._fd)  # closed (and its thread ended) by seal or abort
        self.raw_size = 0
        self._writers: list[zstandard.ZstdCompressionWriter | _StoredFrames] = []
        self._class = _TEXT
        self._frame_open = False  # the current writer was given data since its last frame end
        self._frame_start = 0  # the staged size where the open frame began
        self._gathered: list[bytes] = []
        self._gathered_size = 0
        self._spare = -1  # a lower bound of room(); < 0: unknown
        self._cctx: zstandard.ZstdCompressor | None = None
        if compression.mode != "none":
            self._cctx = zstandard.ZstdCompressor(
                level=compression.level, write_checksum=True, threads=ZSTD_THREADS
            )
            self._writers.append(
                self._cctx.stream_writer(
                    self._sink,  # type: ignore[arg-type]
                    closefd=False,
                    write_return_read=True,
                )
            )
            if compression.mode == "auto":
                self._writers.append(_StoredFrames(self._sink))

    @staticmethod
    def worst_case(n: int) -> int:
        """Upper bound of the compressed size of n tar bytes (raw zstd blocks)."""
        return n + (n >> 14) + 64

    def room(self) -> int:
        used = self._sink.size + self._held() + self.END_RESERVE + self.SWITCH_RESERVE
        return max(0, self.limit - used)

    def fits(self, n: int) -> bool:
        """Whether n more tar bytes (one write or several) surely fit."""
        need = self.worst_case(n)
        if need <= self._spare:
            return True
        self._spare = self.room()
        return need <= self._spare

    def _held(self) -> int:
        """Upper bound of the bytes still to be emitted for what was written
        (0 when all of it is in the staged file's size)."""
        held = self.worst_case(self._gathered_size) if self._gathered_size else 0
        if not self._frame_open:
            return held
        writer = self._writers[self._class]
        if isinstance(writer, _StoredFrames):
            return held + (self.worst_case(writer.held) if writer.held else 0)
        assert self._cctx is not None
        ingested, consumed, produced = self._cctx.frame_progression()
        emitted = self._sink.size - self._frame_start
        if ingested == consumed and produced == emitted:
            return held
        # `produced` counts the frame's header and blocks as they are made
        return held + max(0, produced - emitted) + self.worst_case(ingested - consumed)

    def tighten(self) -> None:
        self._hand_over()
        if self._held():
            self._writers[self._class].flush(zstandard.FLUSH_BLOCK)
        self._spare = -1

    def select(self, path: bytes) -> None:
        """Use the compression class of `path` for the data that follows."""
        if self.compression.mode != "auto":
            return
        cls = _MEDIA if is_media(path) else _TEXT
        if cls != self._class:
            self._hand_over()
            if self._frame_open:
                self._writers[self._class].flush(zstandard.FLUSH_FRAME)
                self._frame_open = False
            self._class = cls
            self._spare = -1

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.raw_size += n
        self._spare -= self.worst_case(n)
        if not self._writers:
            self._sink.write(bytes(data) if isinstance(data, memoryview) else data)
        elif n < self.GATHER and isinstance(data, bytes):
            self._gathered.append(data)
            self._gathered_size += n
            if self._gathered_size >= self.GATHER:
                self._hand_over()
        else:
            self._hand_over()
            self._feed(data)

    def _hand_over(self) -> None:
        if self._gathered:
            data = b"".join(self._gathered) if len(self._gathered) > 1 else self._gathered[0]
            self._gathered, self._gathered_size = [], 0
            self._feed(data)

    def _feed(self, data: bytes | memoryview) -> None:
        if not self._frame_open:
            self._frame_start = self._sink.size
            self._frame_open = True
        self._writers[self._class].write(data)

    def seal(self) -> tuple[int, int, str]:
        """Finish the stream, fsync; returns (size, raw size, sha256 hex)."""
        self.write(END_OF_ARCHIVE)
        self._hand_over()
        if self._writers:
            self._writers[self._class].flush(zstandard.FLUSH_FRAME)
            self._frame_open = False
        try:
            self._sink.close()
            os.fsync(self._fd)
        finally:
            self._close_fd()
        return self._sink.size, self.raw_size, self._sink.sha.hexdigest()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def abort(self) -> None:
        """Drop the archive (also after a failed seal): thread ended, file deleted."""
        self._sink.discard()
        self._close_fd()
        self.path.unlink(missing_ok=True)
