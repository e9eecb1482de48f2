"""The sink: where an archive's bytes land in staging, hashed and counted,
written by a thread of its own."""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import threading
from collections.abc import Callable


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

    def take(self, data: bytes | memoryview) -> None:
        self.write(data)

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

    def abort(self) -> None:
        self.discard()

    def discard(self) -> None:
        """Stop the thread; what was not yet written is dropped, errors ignored."""
        if self._thread.is_alive():
            self._batch, self._batched = [], 0
            self._error = self._error or OSError("archive discarded")
            self._queue.put(None)
            self._thread.join()
