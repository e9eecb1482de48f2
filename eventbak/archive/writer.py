"""The writer that fills one staged archive up to its size limit.

The archive is the tar stream through its layers (layers.py: zstd unless
compression is `none`, age when encryption is on) into the sink. The writer
owns the tar side: it gathers small writes, and answers whether more tar
bytes fit from the layers' composed bounds, so that no archive exceeds its
limit whatever the stack.
"""

from __future__ import annotations

import os
from pathlib import Path

from eventbak.archive.layers import ArchiveFormat, Layer, Output
from eventbak.archive.sink import _Sink
from eventbak.archive.tar import END_OF_ARCHIVE
from eventbak.archive.zstd import ZstdLayer


class ArchiveWriter:
    """One archive being written into staging.

    `final_size(n)` bounds the archive's size if n more tar bytes come (the
    end of archive included): the tar bytes not yet handed to the first layer,
    through each layer's `final` of what the layer below will still emit.
    `room()` is the limit less `final_size(0)`; `fits(n)` answers from a
    running lower bound of the room (each write takes its worst case, the
    layers' composed `expand`, off) and recomputes `room()` only when that
    bound runs out; `capacity()` is the most tar bytes that surely fit now.
    `tighten()` makes the layers emit what they hold, so that the bounds come
    close to the truth. The archive never exceeds `limit`.

    Small writes (a small file with its header) are gathered and handed to
    the first layer together: one call per GATHER bytes instead of per file.
    """

    #: Writes under this size are gathered up to this size.
    GATHER = 256 * 1024

    def __init__(self, path: Path, limit: int, fmt: ArchiveFormat) -> None:
        self.path = path
        self.limit = limit
        self.format = fmt
        # 0600: a staged archive holds copies of the files it backs up
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._sink = _Sink(self._fd)  # closed (and its thread ended) by seal or abort
        self._first: Output = self._sink
        try:
            self._layers: list[Layer] = fmt.build(self._sink)
        except BaseException:
            self.abort()
            raise
        if self._layers:
            self._first = self._layers[0]
        first = self._layers[0] if self._layers else None
        self._zstd = first if isinstance(first, ZstdLayer) else None
        self.raw_size = 0
        self._gathered: list[bytes] = []
        self._gathered_size = 0
        self._spare = -1  # a lower bound of room(); < 0: unknown

    # -- size accounting ----------------------------------------------------

    def final_size(self, extra: int = 0) -> int:
        n = extra + self._gathered_size + len(END_OF_ARCHIVE)
        if not self._layers:
            return self._sink.size + n
        total = 0
        for i, layer in enumerate(self._layers):
            if i:
                n = total - layer.given
            total = layer.final(n)
        return total

    def expand(self, n: int) -> int:
        """Upper bound of what n more tar bytes add to the archive."""
        for layer in self._layers:
            n = layer.expand(n)
        return n

    def room(self) -> int:
        return max(0, self.limit - self.final_size(0))

    def fits(self, n: int) -> bool:
        """Whether n more tar bytes (one write or several) surely fit."""
        need = self.expand(n)
        if need <= self._spare:
            return True
        self._spare = self.room()
        return need <= self._spare

    def capacity(self) -> int:
        """The most tar bytes that surely fit now (final_size is monotone)."""
        lo, hi = 0, self.limit
        if self.final_size(0) > self.limit:
            return 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.final_size(mid) <= self.limit:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def tighten(self) -> None:
        self._hand_over()
        for layer in self._layers:
            layer.tighten()
        self._spare = -1

    # -- writing ------------------------------------------------------------

    def select(self, compress: bool) -> None:
        """Compress (or store) the data that follows, if there is a zstd layer."""
        if self._zstd is not None:
            self._hand_over()
            self._zstd.select(compress)
            self._spare = -1

    @property
    def compressing(self) -> bool:
        """Whether data written now goes through the zstd compressor."""
        return self._zstd is not None and self._zstd.compressing

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.raw_size += n
        self._spare -= self.expand(n)
        if not self._layers:
            self._sink.take(bytes(data) if isinstance(data, memoryview) else data)
        elif n < self.GATHER and isinstance(data, bytes):
            self._gathered.append(data)
            self._gathered_size += n
            if self._gathered_size >= self.GATHER:
                self._hand_over()
        else:
            self._hand_over()
            self._first.take(data)

    def _hand_over(self) -> None:
        if self._gathered:
            data = b"".join(self._gathered) if len(self._gathered) > 1 else self._gathered[0]
            self._gathered, self._gathered_size = [], 0
            self._first.take(data)

    def seal(self) -> tuple[int, int, str]:
        """Finish the stream, fsync; returns (size, raw size, sha256 hex)."""
        self.write(END_OF_ARCHIVE)
        self._hand_over()
        try:
            self._first.close()  # each layer ends its stream and closes the next
            os.fsync(self._fd)
        finally:
            self._close_fd()
        return self._sink.size, self.raw_size, self._sink.sha.hexdigest()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def abort(self) -> None:
        """Drop the archive (also after a failed seal): threads ended, file deleted."""
        self._first.abort()
        self._close_fd()
        self.path.unlink(missing_ok=True)
