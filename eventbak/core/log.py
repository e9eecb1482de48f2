"""The event log on disk: framing, append with group commit, torn-tail recovery.

Layout (docs/formats.md has the full specification)::

    header  8 bytes   b"EVBKLOG" + format version byte (1)
    record  4 bytes   payload length, unsigned little-endian
            4 bytes   CRC-32 of (the 4 length bytes + payload)
            N bytes   payload: one msgpack-encoded event (events.py)

Records are appended and never rewritten. `append` only buffers; `commit`
writes the buffer and fsyncs (group commit). Callers commit at the points
that matter (archive sealed, archive uploaded, session state changes), so a
crash loses at most the uncommitted tail, which only ever holds facts that
can be rediscovered.

A damaged record is a *torn tail* when no valid record follows it: a crash
during the last write. It is cut off when the log is opened for writing and
reported. A damaged record followed by a valid one is corruption in the
middle of the log, which is never skipped silently: `LogCorrupt` names its
offset.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from eventbak.core import events as ev
from eventbak.errors import LogCorrupt, UsageError
from eventbak.fsutil import fsync_dir

MAGIC = b"EVBKLOG"
FORMAT_VERSION = 1
HEADER = MAGIC + bytes([FORMAT_VERSION])
FRAME = struct.Struct("<II")
#: A record larger than this is treated as damage, not as data.
MAX_RECORD = 256 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ev.Event)
_head_decoder = msgspec.msgpack.Decoder(ev.HeadEvent)


def encode_record(event: ev.Event) -> bytes:
    """One framed record for `event`."""
    payload = _encoder.encode(event)
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length))
    return length + struct.pack("<I", crc) + payload


@dataclass(frozen=True)
class TornTail:
    """What a damaged final record looked like when it was found."""

    offset: int
    dropped: int
    reason: str


@dataclass(frozen=True)
class Record:
    seq: int  # 1-based position in the log
    offset: int  # byte offset of the record's frame
    event: ev.Event | ev.HeadEvent  # ArchiveSealedHead unless read with full=True


def _frame_at(data: memoryview, pos: int) -> tuple[int, str]:
    """End offset of a valid frame at `pos`, or (-1, why it is not one)."""
    n = len(data)
    if n - pos < FRAME.size:
        return -1, "incomplete frame header"
    length, crc = FRAME.unpack_from(data, pos)
    if length > MAX_RECORD:
        return -1, f"implausible record length {length}"
    end = pos + FRAME.size + length
    if end > n:
        return -1, "record extends past the end of the file"
    if zlib.crc32(data[pos + FRAME.size : end], zlib.crc32(data[pos : pos + 4])) != crc:
        return -1, "checksum mismatch"
    return end, ""


def _valid_frame_after(data: memoryview, pos: int) -> int:
    """Offset of the first valid frame strictly after `pos`, or -1."""
    for q in range(pos + 1, len(data) - FRAME.size + 1):
        end, _ = _frame_at(data, q)
        if end > 0:
            return q
    return -1


def _scan(
    path: Path,
    data: memoryview,
    until: int | None,
    decoder: msgspec.msgpack.Decoder[Any],
    base: int = 0,
    seq: int = 0,
) -> Iterator[Record | TornTail]:
    """Records of a log image; a torn tail is yielded last, corruption raises.
    With `base` > 0, `data` is the log from that offset on (the records after
    a checkpoint, the first of them numbered `seq` + 1)."""
    if base:
        yield from _records(path, data, until, decoder, base, seq)
        return
    if len(data) < len(HEADER):
        if bytes(data) != HEADER[: len(data)]:
            raise UsageError(f"{path} is not an eventbak event log")
        if len(data):
            yield TornTail(0, len(data), "incomplete log header")
        return
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise UsageError(f"{path} is not an eventbak event log")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise UsageError(
            f"{path} has log format version {version}; this eventbak reads version "
            f"{FORMAT_VERSION} (upgrade eventbak)"
        )
    yield from _records(path, data[len(HEADER) :], until, decoder, len(HEADER), 0)


def _records(
    path: Path,
    data: memoryview,
    until: int | None,
    decoder: msgspec.msgpack.Decoder[Any],
    base: int,
    seq: int,
) -> Iterator[Record | TornTail]:
    """The frames of `data`, which starts at file offset `base` on a record."""
    pos = 0
    while pos < len(data):
        if until is not None and seq >= until:
            return
        end, why = _frame_at(data, pos)
        if end < 0:
            if _valid_frame_after(data, pos) >= 0:
                raise LogCorrupt(str(path), base + pos, why)
            yield TornTail(base + pos, len(data) - pos, why)
            return
        event = _decode(decoder, data[pos + FRAME.size : end], path, base + pos)
        if isinstance(event, ev.ArchiveSealedHead) and event.count == 0:
            # written before the summary fields existed: compute them once
            full = _decode(_decoder, data[pos + FRAME.size : end], path, base + pos)
            assert isinstance(full, ev.ArchiveSealed)
            event = head_of(full)
        seq += 1
        yield Record(seq, base + pos, event)
        pos = end


@dataclass
class LogImage:
    """Everything read from a log file without changing it."""

    records: list[Record]
    torn: TornTail | None
    size: int


def iter_log(
    path: Path, until: int | None = None, full: bool = False, start: int = 0, seq: int = 0
) -> Iterator[Record | TornTail]:
    """The records of the log at `path`, one at a time (a torn tail last);
    corruption raises when it is reached. Member lists are skipped
    (`ArchiveSealedHead`) unless `full`. With `start`, only the records from
    that offset on are read (after a checkpoint: the first is number `seq` + 1)."""
    try:
        with open(path, "rb") as f:
            if start:
                f.seek(start)
            raw = f.read()
    except FileNotFoundError:
        return
    decoder = _decoder if full else _head_decoder
    yield from _scan(path, memoryview(raw), until, decoder, start, seq)


def read_log(
    path: Path, until: int | None = None, full: bool = False, start: int = 0, seq: int = 0
) -> LogImage:
    """Read (never modify) the log at `path`. A missing file is an empty log.

    Archive member lists are skipped (`ArchiveSealedHead`) unless `full`:
    load them one archive at a time with `read_event_at`. With `start`, the
    records from that offset on (see `iter_log`)."""
    records: list[Record] = []
    torn: TornTail | None = None
    for item in iter_log(path, until, full, start, seq):
        if isinstance(item, TornTail):
            torn = item
        else:
            records.append(item)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    return LogImage(records, torn, size)


def check_frames(path: Path, end: int) -> None:
    """Every record before `end` has a whole frame and the right CRC
    (LogCorrupt naming the first that does not): what a writer checks of the
    part of the log a checkpoint stands for, without decoding it."""
    with open(path, "rb") as f:
        if f.read(len(HEADER)) != HEADER:
            raise LogCorrupt(str(path), 0, "not an eventbak event log header")
        pos = len(HEADER)
        while pos < end:
            head = f.read(FRAME.size)
            if len(head) < FRAME.size:
                raise LogCorrupt(str(path), pos, "incomplete frame header")
            length, crc = FRAME.unpack(head)
            if length > MAX_RECORD or pos + FRAME.size + length > end:
                raise LogCorrupt(str(path), pos, f"implausible record length {length}")
            payload = f.read(length)
            if zlib.crc32(payload, zlib.crc32(head[:4])) != crc:
                raise LogCorrupt(str(path), pos, "checksum mismatch")
            pos += FRAME.size + length


def read_event_at(path: Path, offset: int) -> ev.Event:
    """The full event of the record at `offset` (checked like any record)."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(FRAME.size)
        if len(head) < FRAME.size:
            raise LogCorrupt(str(path), offset, "no record at this offset")
        length, _ = FRAME.unpack(head)
        if length > MAX_RECORD:
            raise LogCorrupt(str(path), offset, f"implausible record length {length}")
        frame = head + f.read(length)
    end, why = _frame_at(memoryview(frame), 0)
    if end < 0:
        raise LogCorrupt(str(path), offset, why)
    event: ev.Event = _decode(_decoder, frame[FRAME.size :], path, offset)
    return event


def _decode(
    decoder: msgspec.msgpack.Decoder[Any], payload: bytes | memoryview, path: Path, offset: int
) -> Any:
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise LogCorrupt(
            str(path), offset, f"undecodable event ({exc}); written by a newer eventbak?"
        ) from None
    except msgspec.DecodeError as exc:
        raise LogCorrupt(str(path), offset, f"undecodable event ({exc})") from None


def head_of(sealed: ev.ArchiveSealed) -> ev.ArchiveSealedHead:
    """The head of a seal record, its summary computed from its members when
    the record has none (logs before the summary fields)."""
    s = sealed
    if sealed.members and not sealed.count:
        s = ev.ArchiveSealed.of(
            sealed.at, sealed.archive, sealed.staged, sealed.size, sealed.raw_size,
            sealed.sha256, sealed.compression, sealed.members, sealed.layers,
        )  # fmt: skip
    fields = ev.ArchiveSealedHead.__struct_fields__
    return ev.ArchiveSealedHead(**{f: getattr(s, f) for f in fields})


class EventLog:
    """The writable log of a state directory. Only one process may hold it
    (see `statedir.lock`); this class assumes the caller holds the lock."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self._fd = fd
        self._durable_end = size
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.seq = 0
        #: where the last record appended starts (-1: none)
        self.last_offset = -1

    @classmethod
    def open(
        cls, path: Path, start: int = 0, seq: int = 0, last: int = -1
    ) -> tuple[EventLog, LogImage]:
        """Open for appending; a torn tail is cut off (the caller records that:
        see `LogImage.torn`). Returns the log and what it held, to fold: with
        `start` (a checkpoint's end), the records after it only (`seq`: how
        many came before; `last`: where the last of them starts).
        """
        image = read_log(path, start=start, seq=seq)
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = image.size
            if image.torn is not None:
                size = image.torn.offset
                os.ftruncate(fd, size)
                os.fsync(fd)
            if size == 0:
                os.write(fd, HEADER)
                os.fsync(fd)
                size = len(HEADER)
            if created:
                fsync_dir(path.parent)
            os.lseek(fd, size, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        log = cls(path, fd, size)
        log.seq = seq + len(image.records)
        log.last_offset = image.records[-1].offset if image.records else last
        return log, image

    def append(self, event: ev.Event) -> int:
        """Buffer `event`; it becomes durable at the next `commit`. Returns its seq."""
        record = encode_record(event)
        self.last_offset = self.next_offset
        self._buffer.append(record)
        self._buffered += len(record)
        self.seq += 1
        return self.seq

    @property
    def next_offset(self) -> int:
        """Where the next appended record will start."""
        return self._durable_end + self._buffered

    def commit(self) -> None:
        """Write every buffered event and fsync. On failure (disk full) the file
        is cut back to its last durable end and the error is raised; the
        buffered events stay buffered for a later retry."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self._durable_end)
                os.lseek(self._fd, self._durable_end, os.SEEK_SET)
            except OSError:
                pass
            raise
        self._durable_end += len(data)
        self._buffer.clear()
        self._buffered = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        return self._buffered

    @property
    def durable_end(self) -> int:
        return self._durable_end

    def frame_head(self, offset: int) -> bytes:
        """The 8 bytes (length, CRC) of the durable record at `offset`."""
        return os.pread(self._fd, FRAME.size, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
