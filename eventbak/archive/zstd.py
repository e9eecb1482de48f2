"""The zstd layer: the tar stream as zstd frames, compressed or stored per file.

The layer writes a sequence of zstd frames: data the policy compresses goes
through zstandard's compressor (level from the config, content checksum on),
data it stores goes into frames of raw blocks (`_StoredFrames`); `select`
switches between the two at a file's start, ending the open frame. `zstd -d`
and every zstd library read concatenated frames as one stream, so
`zstd -dc A | tar x` restores it.

Size accounting (the Layer protocol, layers.py): `final(extra)` bounds the
layer's whole output once `extra` more input bytes came: what it emitted,
exactly; what the open frame will still emit for what it was given (its
compressed bytes not yet emitted, exactly, and its input not yet compressed
as if it were incompressible: zstd's frame progression tells both without
waiting for the worker threads); a frame end; one frame switch.
"""

from __future__ import annotations

import zstandard

from eventbak.archive.layers import Output

#: zstd worker threads (compression runs beside the Python work; 0 = inline)
ZSTD_THREADS = 2


def worst_case(n: int) -> int:
    """Upper bound of the zstd bytes for n input bytes (raw blocks and their headers)."""
    return n + (n >> 14) + 64


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

    def __init__(self, sink: ZstdLayer) -> None:
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


class ZstdLayer:
    """zstd frames into `out`; compressed unless `select(False)` chose raw frames."""

    name = "zstd"
    suffix = ".zst"
    #: Worst case for a frame end (epilogue, checksum) and one frame switch.
    END_RESERVE = 256
    SWITCH_RESERVE = 64

    def __init__(self, out: Output, level: int) -> None:
        self._out = out
        self.given = 0  # input bytes taken
        self.out_size = 0  # bytes handed to `out`
        self._cctx = zstandard.ZstdCompressor(
            level=level, write_checksum=True, threads=ZSTD_THREADS
        )
        self._writers: tuple[zstandard.ZstdCompressionWriter, _StoredFrames] = (
            self._cctx.stream_writer(self, closefd=False, write_return_read=True),  # type: ignore[arg-type]
            _StoredFrames(self),
        )
        self._compress = True
        self._frame_open = False  # the current writer was given data since its last frame end
        self._frame_start = 0  # out_size where the open frame began

    # the zstandard writer and the stored frames write here: counted, passed on
    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        self.out_size += n
        self._out.take(data)
        return n

    def flush(self) -> None:
        pass

    def take(self, data: bytes | memoryview) -> None:
        """The layer's input."""
        if not self._frame_open:
            self._frame_start = self.out_size
            self._frame_open = True
        self.given += len(data)
        self._writers[not self._compress].write(data)

    def select(self, compress: bool) -> None:
        """Compress (or store) the data that follows; ends the open frame on a change."""
        if compress != self._compress:
            if self._frame_open:
                self._writers[not self._compress].flush(zstandard.FLUSH_FRAME)
                self._frame_open = False
            self._compress = compress

    @property
    def compressing(self) -> bool:
        return self._compress

    def pending(self) -> int:
        """Upper bound of the bytes still to be emitted for what was taken."""
        if not self._frame_open:
            return 0
        if not self._compress:
            held = self._writers[1].held
            return worst_case(held) if held else 0
        ingested, consumed, produced = self._cctx.frame_progression()
        emitted = self.out_size - self._frame_start
        if ingested == consumed and produced == emitted:
            return 0
        # `produced` counts the frame's header and blocks as they are made
        return max(0, produced - emitted) + worst_case(ingested - consumed)

    def final(self, extra: int) -> int:
        more = worst_case(extra) if extra else 0
        return self.out_size + self.pending() + more + self.END_RESERVE + self.SWITCH_RESERVE

    @staticmethod
    def expand(n: int) -> int:
        return worst_case(n)

    @classmethod
    def fresh(cls, n: int) -> int:
        """`final(n)` of a layer that took nothing yet."""
        return worst_case(n) + cls.END_RESERVE + cls.SWITCH_RESERVE

    def tighten(self) -> None:
        if self.pending():
            self._writers[not self._compress].flush(zstandard.FLUSH_BLOCK)

    def close(self) -> None:
        try:
            if self._frame_open:
                self._writers[not self._compress].flush(zstandard.FLUSH_FRAME)
                self._frame_open = False
        finally:
            self._release()
        self._out.close()

    def abort(self) -> None:
        self._release()
        self._out.abort()

    def _release(self) -> None:
        """Break the cycle layer -> writers -> layer now: it would keep the
        compressor's buffers (tens of MiB with worker threads) alive until the
        cycle collector ran, one set per archive."""
        self._writers = ()  # type: ignore[assignment]
