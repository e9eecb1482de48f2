"""The writer that fills one staged archive up to its size limit.

An archive is a POSIX (pax) tar stream, zstd-compressed unless compression
is `none`. With compression `auto` the stream is a sequence of zstd frames:
already-compressed media (by file name suffix) are stored in frames of raw
blocks, everything else compressed at level 3; `zstd -d` and every zstd library read
concatenated frames as one stream, so `zstd -dc A | tar x` restores it.
"""

from __future__ import annotations

import os
from pathlib import Path

import zstandard

from eventbak.archive.policy import is_media
from eventbak.archive.sink import _Sink
from eventbak.archive.tar import BLOCK, END_OF_ARCHIVE
from eventbak.config import Compression

#: zstd worker threads (compression runs beside the Python work; 0 = inline)
ZSTD_THREADS = 2
_TEXT, _MEDIA = 0, 1

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
