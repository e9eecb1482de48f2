"""The event log on disk: framing, torn tails, corruption, failed commits, the lock."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbak.core import events as ev
from eventbak.core import log as evlog
from eventbak.core.log import HEADER, EventLog, read_log
from eventbak.core.state import IllegalTransition
from eventbak.errors import LockedError, LogCorrupt, UsageError
from eventbak.statedir import StateDir, log_path, read_state
from tests.eventsamples import NON_UTF8, T0, member, numbered, sample_events

REPO = Path(__file__).resolve().parent.parent


def write_log(path: Path, events: list[ev.Event]) -> None:
    log, image = EventLog.open(path)
    try:
        assert image.records == []
        for e in events:
            log.append(e)
        log.commit()
    finally:
        log.close()


def events_of(path: Path) -> list[ev.Event]:
    image = read_log(path, full=True)
    assert image.torn is None
    return [r.event for r in image.records]


def offsets(path: Path) -> list[int]:
    return [r.offset for r in read_log(path, full=True).records]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# -- round trip ----------------------------------------------------------------------


def test_sample_uses_every_event_type() -> None:
    assert {type(e) for e in sample_events()} == set(ev.EVENT_TYPES)


def test_round_trip_every_event_type(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    events = sample_events()
    write_log(path, events)
    image = read_log(path, full=True)
    assert image.torn is None
    assert [r.event for r in image.records] == events
    assert [r.seq for r in image.records] == list(range(1, len(events) + 1))
    assert image.records[0].offset == len(HEADER)
    assert image.size == path.stat().st_size
    # records are contiguous: each starts where the previous one's frame ended
    data = path.read_bytes()
    assert data.startswith(HEADER)
    ends = [r.offset for r in image.records[1:]] + [len(data)]
    for r, end in zip(image.records, ends, strict=True):
        assert evlog.encode_record(r.event) == data[r.offset : end]
    # the non-UTF-8 bytes came back as the same bytes, and Members as Members
    sealed = next(e for e in image.records if isinstance(e.event, ev.ArchiveSealed)).event
    assert isinstance(sealed, ev.ArchiveSealed)
    assert sealed.members[2].path == NON_UTF8
    assert all(isinstance(m, ev.Member) for m in sealed.members)
    assert sealed.members[-1].segmented


def test_read_until(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    events = sample_events()
    write_log(path, events)
    for k in (0, 1, 5, len(events), len(events) + 3):
        assert [r.event for r in read_log(path, until=k, full=True).records] == events[:k]


def test_append_only_buffers_until_commit(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    events = numbered(5)
    log, _ = EventLog.open(path)
    try:
        assert path.read_bytes() == HEADER
        assert [log.append(e) for e in events[:3]] == [1, 2, 3]
        assert log.pending == 3
        assert read_log(path, full=True).records == []  # nothing durable yet
        log.commit()
        assert log.pending == 0
        assert events_of(path) == events[:3]
        size = path.stat().st_size
        log.commit()  # nothing buffered: nothing written
        assert path.stat().st_size == size
        log.append(events[3])
        log.append(events[4])
        log.commit()
    finally:
        log.close()
    assert events_of(path) == events
    # reopening continues the sequence numbers and appends after the old records
    log, image = EventLog.open(path)
    try:
        assert [r.event for r in image.records] == events
        assert log.seq == 5
        assert log.append(events[0]) == 6
        log.commit()
    finally:
        log.close()
    assert events_of(path) == [*events, events[0]]


@settings(max_examples=60, deadline=None)
@given(
    paths=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
    sizes=st.lists(st.integers(min_value=0, max_value=2**62), min_size=1, max_size=6),
    at=st.floats(allow_nan=False, allow_infinity=False),
    reason=st.text(max_size=30),
)
def test_round_trip_arbitrary_bytes_and_text(
    paths: list[bytes], sizes: list[int], at: float, reason: str
) -> None:
    events: list[ev.Event] = [
        ev.ArchiveSealed(
            at=at,
            archive="a",
            staged="s",
            size=sizes[0],
            raw_size=sizes[-1],
            sha256="0" * 64,
            compression="auto",
            members=[member(p, size=s) for p, s in zip(paths, sizes, strict=False)],
        ),
        *(ev.EntrySkipped(at=at, session="x", path=p, reason=reason) for p in paths),
    ]
    framed = HEADER + b"".join(evlog.encode_record(e) for e in events)
    decoded = [r.event for r in evlog._scan(Path("mem"), memoryview(framed), None, evlog._decoder)]
    assert decoded == events


# -- empty, missing, not a log ------------------------------------------------------------


def test_missing_file_is_an_empty_log(tmp_path: Path) -> None:
    image = read_log(tmp_path / "nope.log", full=True)
    assert (image.records, image.torn, image.size) == ([], None, 0)
    assert not (tmp_path / "nope.log").exists()  # reading never creates it


def test_empty_file_is_an_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(b"")
    image = read_log(path, full=True)
    assert (image.records, image.torn, image.size) == ([], None, 0)
    log, _ = EventLog.open(path)
    log.close()
    assert path.read_bytes() == HEADER


def test_header_only_is_an_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(HEADER)
    image = read_log(path, full=True)
    assert (image.records, image.torn) == ([], None)


@pytest.mark.parametrize("cut", range(1, len(HEADER)))
def test_torn_header_is_rewritten(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(HEADER[:cut])
    image = read_log(path, full=True)
    assert image.records == []
    assert image.torn is not None and image.torn.offset == 0 and image.torn.dropped == cut
    log, _ = EventLog.open(path)
    log.append(numbered(1)[0])
    log.commit()
    log.close()
    assert events_of(path) == numbered(1)


@pytest.mark.parametrize(
    "content",
    [
        b"hello",  # shorter than the header
        b"NOTALOG\x01" + bytes(40),
        b"EVBKLOX\x01",
        b"evbklog\x01",
        b'state_dir = "/x"\n',
        b"\x00" * 100,
    ],
)
def test_not_a_log(tmp_path: Path, content: bytes) -> None:
    root = tmp_path / "state"
    root.mkdir()
    path = log_path(root)
    path.write_bytes(content)
    attempts: list[Callable[[], object]] = [
        lambda: read_log(path, full=True),
        lambda: EventLog.open(path),
        lambda: StateDir.open(root),
        lambda: StateDir.open(root),  # the failed open released the lock
        lambda: read_state(root),
    ]
    for attempt in attempts:
        with pytest.raises(UsageError, match="not an eventbak event log") as info:
            attempt()
        assert str(path) in str(info.value)
        assert not isinstance(info.value, LogCorrupt)
    assert path.read_bytes() == content  # never "repaired"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    root = tmp_path / "state"
    src = tmp_path / "src.log"
    write_log(src, numbered(3))
    data = bytearray(src.read_bytes())
    data[len(evlog.MAGIC)] = version
    root.mkdir()
    log_path(root).write_bytes(bytes(data))
    with pytest.raises(UsageError, match=f"version {version}"):
        read_log(log_path(root))
    with pytest.raises(UsageError, match=f"version {version}"):
        StateDir.open(root)
    assert log_path(root).read_bytes() == bytes(data)
    # the lock was released on the way out
    with pytest.raises(UsageError, match=f"version {version}"):
        StateDir.open(root)


# -- torn tails --------------------------------------------------------------------------


def _torn_cases() -> list[tuple[str, int]]:
    events = sample_events()
    first_sealed = next(i for i, e in enumerate(events) if isinstance(e, ev.ArchiveSealed))
    return [("small-last-record", len(events)), ("sealed-last-record", first_sealed + 1)]


@pytest.mark.parametrize(("n"), [n for _, n in _torn_cases()], ids=[i for i, _ in _torn_cases()])
def test_torn_tail_at_every_byte_of_the_last_record(tmp_path: Path, n: int) -> None:
    events = sample_events()[:n]
    good = tmp_path / "good.log"
    write_log(good, events)
    data = good.read_bytes()
    last = offsets(good)[-1]
    assert len(data) - last > evlog.FRAME.size + 10

    # cut exactly at the record boundary: no torn tail, just one record fewer
    exact = tmp_path / "exact.log"
    exact.write_bytes(data[:last])
    image = read_log(exact, full=True)
    assert image.torn is None
    assert [r.event for r in image.records] == events[:-1]

    later = ev.EntrySkipped(at=T0 + 99, session="s-later", path=b"/later\xff", reason="r")
    for cut in range(last + 1, len(data)):
        root = tmp_path / f"cut{cut}"
        root.mkdir()
        path = log_path(root)
        path.write_bytes(data[:cut])

        image = read_log(path, full=True)
        assert [r.event for r in image.records] == events[:-1], cut
        assert image.torn is not None, cut
        assert image.torn.offset == last
        assert image.torn.dropped == cut - last
        assert image.size == cut
        assert path.stat().st_size == cut  # reading changed nothing

        sd = StateDir.open(root)
        try:
            assert sd.torn == image.torn
            assert path.stat().st_size > last  # cut, then the truncation was recorded
            assert path.read_bytes()[:last] == data[:last]
            recorded = sd.state.truncations
            assert recorded[-1] == (last, cut - last)
            opened = ev.SessionOpened(
                at=T0 + 98, session="s-later", dataset="d", vault="file:///v",
                paths=[b"/later"], archive_size=1 << 20, compression="none",
            )  # fmt: skip
            sd.record(opened)
            sd.record(later)
            sd.commit()
            live = sd.state
        finally:
            sd.close()

        after = read_log(path, full=True)
        assert after.torn is None
        got = [r.event for r in after.records]
        assert got[: n - 1] == events[:-1]
        assert after.records[n - 1].offset == last  # appended exactly where the cut was
        trunc = got[n - 1]
        assert isinstance(trunc, ev.LogTailTruncated)
        assert (trunc.offset, trunc.dropped) == (last, cut - last)
        assert got[n:] == [opened, later]
        assert read_state(root)[0] == live
        shutil.rmtree(root)


def test_eventlog_open_truncates_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    events = numbered(4)
    write_log(path, events)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    log, image = EventLog.open(path)
    try:
        assert image.torn is not None
        assert path.stat().st_size == image.torn.offset
        assert log.seq == 3
        log.append(events[0])
        log.commit()
    finally:
        log.close()
    assert events_of(path) == [*events[:3], events[0]]


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00",
        b"\x00" * 7,
        b"\x00" * 8,
        b"\x00" * 4096,  # a zero-filled block after a crash
        b"\xde\xad\xbe\xef" * 9,
        b"\xff" * 300,
        b"\x10\x00\x00\x00" + b"\x00\x00\x00\x00" + b"x" * 16,  # plausible frame, bad CRC
        b"\x10\x00\x00\x00" + b"\x00\x00\x00\x00" + b"x" * 3,  # plausible frame, too short
    ],
    ids=["zero1", "zero7", "zero8", "zeros4096", "deadbeef", "ff300", "badcrc", "short"],
)
def test_garbage_tail(tmp_path: Path, tail: bytes) -> None:
    root = tmp_path / "state"
    root.mkdir()
    path = log_path(root)
    events = sample_events()
    write_log(path, events)
    end = path.stat().st_size
    with path.open("ab") as f:
        f.write(tail)
    image = read_log(path, full=True)
    assert [r.event for r in image.records] == events
    assert image.torn is not None
    assert (image.torn.offset, image.torn.dropped) == (end, len(tail))
    sd = StateDir.open(root)
    try:
        assert sd.state.truncations == [(1234, 17), (end, len(tail))]
    finally:
        sd.close()
    got = events_of(path)
    assert got[:-1] == events
    assert isinstance(got[-1], ev.LogTailTruncated)
    assert (got[-1].offset, got[-1].dropped) == (end, len(tail))
    # a second open finds nothing torn and records nothing more
    StateDir.open(root).close()
    assert events_of(path) == got


# -- corruption in the middle ----------------------------------------------------------------


@pytest.mark.parametrize("which", ["first", "middle", "sealed", "second-to-last"])
def test_flipped_byte_in_a_record_before_the_last(tmp_path: Path, which: str) -> None:
    good = tmp_path / "good.log"
    events = sample_events()
    write_log(good, events)
    data = good.read_bytes()
    offs = offsets(good)
    sealed = next(i for i, e in enumerate(events) if isinstance(e, ev.ArchiveSealed))
    idx = {
        "first": 0,
        "middle": len(offs) // 2,
        "sealed": sealed,  # the biggest record: Members, non-UTF-8 paths
        "second-to-last": len(offs) - 2,
    }[which]
    start = offs[idx]
    end = offs[idx + 1]
    root = tmp_path / "state"
    root.mkdir()
    path = log_path(root)
    for i in range(start, end):  # length bytes, CRC bytes and payload
        bad = bytearray(data)
        bad[i] ^= 0xFF
        path.write_bytes(bytes(bad))
        with pytest.raises(LogCorrupt) as info:
            read_log(path, full=True)
        assert info.value.offset == start, i
        assert info.value.path == str(path)
        assert f"offset {start}" in str(info.value)
        # reading only the records before it still works
        assert [r.event for r in read_log(path, until=idx, full=True).records] == events[:idx]
        if i in (start, start + 4, end - 1):  # (every open is a few fsyncs: sample some)
            with pytest.raises(LogCorrupt) as info2:
                EventLog.open(path)
            assert info2.value.offset == start
            with pytest.raises(LogCorrupt):
                StateDir.open(root)
            with pytest.raises(LogCorrupt):  # not LockedError: the lock was released
                StateDir.open(root)
            assert path.read_bytes() == bytes(bad)  # nothing was cut off


def test_flipped_bits_never_drop_records(tmp_path: Path) -> None:
    """Whatever single byte is damaged, read_log either returns every record
    before the damage (torn tail: only when the last record is hit) or raises."""
    good = tmp_path / "good.log"
    events = numbered(6)
    write_log(good, events)
    data = good.read_bytes()
    offs = offsets(good)
    path = tmp_path / "bad.log"
    for i in range(len(HEADER), len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            path.write_bytes(bytes(bad))
            hit = max(k for k, o in enumerate(offs) if o <= i)
            try:
                image = read_log(path, full=True)
            except LogCorrupt as exc:
                assert exc.offset == offs[hit]
                assert hit < len(offs) - 1
                continue
            assert hit == len(offs) - 1, f"damage at {i} in record {hit} was not reported"
            assert [r.event for r in image.records] == events[:-1]
            assert image.torn is not None and image.torn.offset == offs[-1]


# -- a commit that fails (file size limit standing in for a full disk) -----------------------

FSIZE_CHILD = textwrap.dedent(
    """
    import os, resource, signal, sys
    from pathlib import Path
    from eventbak.statedir import StateDir, log_path
    from tests.eventsamples import numbered

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    root = Path(sys.argv[1])
    events = numbered(300)
    sd = StateDir.open(root)
    for e in events[:10]:
        sd.record(e)
    sd.commit()
    size = log_path(root).stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
    for e in events[10:]:
        sd.record(e)
    try:
        sd.commit()
    except OSError as exc:
        print("failed", exc.errno, flush=True)
    else:
        print("committed", flush=True)
    print("size", size, log_path(root).stat().st_size, sd.log.pending, flush=True)
    sys.stdin.readline()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    sd.commit()  # the buffered events were kept for this retry
    sd.close()
    print("done", flush=True)
    """
)


def test_failed_commit_keeps_committed_events(tmp_path: Path) -> None:
    root = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-c", FSIZE_CHILD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline().split()
        assert first == ["failed", str(errno.EFBIG)], proc.stderr.read() if proc.stderr else ""
        _, committed_size, size_now, pending = proc.stdout.readline().split()
        assert size_now == committed_size  # cut back to the last durable end
        assert int(pending) == 290
        # while the child still holds the log: it reads back as the committed events
        image = read_log(log_path(root))
        assert image.torn is None
        assert [r.event for r in image.records] == numbered(10)
        assert read_state(root)[0].sessions["s-num"].skipped[b"/x/9\xff"] == "r9"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert events_of(log_path(root)) == numbered(300)


# -- the lock ------------------------------------------------------------------------------


def test_second_open_in_the_same_process_is_locked(tmp_path: Path) -> None:
    sd = StateDir.open(tmp_path)
    try:
        with pytest.raises(LockedError) as info:
            StateDir.open(tmp_path)
        assert f"pid {os.getpid()}" in str(info.value)
        assert str(tmp_path) in str(info.value)
        # the failed attempt did not take the lock away from the holder
        with pytest.raises(LockedError):
            StateDir.open(tmp_path)
        sd.record(numbered(1)[0])
        sd.commit()
    finally:
        sd.close()
    again = StateDir.open(tmp_path)  # released on close
    again.close()
    assert events_of(log_path(tmp_path)) == numbered(1)


LOCK_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from eventbak.statedir import StateDir

    sd = StateDir.open(Path(sys.argv[1]))
    print("locked", flush=True)
    sys.stdin.readline()
    sd.close()
    print("released", flush=True)
    sys.stdin.readline()
    """
)


def _lock_child(root: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_CHILD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    proc = _lock_child(tmp_path)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        with pytest.raises(LockedError) as info:
            StateDir.open(tmp_path)
        assert f"pid {proc.pid}" in str(info.value)
        assert f"pid {os.getpid()}" not in str(info.value)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        sd = StateDir.open(tmp_path)  # the child still runs, but let go of the lock
        sd.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    proc = _lock_child(tmp_path)
    try:
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            StateDir.open(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    sd = StateDir.open(tmp_path)  # SIGKILL released the flock
    try:
        assert (tmp_path / "lock").read_text().strip() == str(os.getpid())
    finally:
        sd.close()


# -- records that frame correctly but do not decode --------------------------------------


def _frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return length + struct.pack("<I", zlib.crc32(payload, zlib.crc32(length))) + payload


def _msgpack(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


@pytest.mark.parametrize("where", ["middle", "last"])
@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (_msgpack({"t": "FutureThingHappened", "at": 1.0}), "newer eventbak"),
        (_msgpack({"t": "SessionPaused", "at": 1.0}), "undecodable"),  # missing fields
        (b"\xc1\xc1\xc1", "undecodable"),  # not msgpack
    ],
    ids=["unknown-tag", "missing-field", "not-msgpack"],
)
def test_valid_frame_with_bad_payload_is_corruption(
    tmp_path: Path, payload: bytes, why: str, where: str
) -> None:
    events = numbered(3)
    path = tmp_path / "events.log"
    good = [evlog.encode_record(e) for e in events]
    if where == "middle":
        body = good[0] + _frame(payload) + good[1] + good[2]
        expected = len(HEADER) + len(good[0])
    else:
        body = b"".join(good) + _frame(payload)
        expected = len(HEADER) + sum(len(g) for g in good)
    path.write_bytes(HEADER + body)
    # a checksummed record is never a torn tail, even at the end: never cut off
    with pytest.raises(LogCorrupt, match=why) as info:
        read_log(path, full=True)
    assert info.value.offset == expected
    with pytest.raises(LogCorrupt):
        EventLog.open(path)
    assert path.read_bytes() == HEADER + body


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    # forward compatibility: a newer eventbak may add optional fields at the end
    path = tmp_path / "events.log"
    payload = _msgpack(
        {"t": "SessionPaused", "at": 2.5, "session": "s", "reason": "deadline", "extra": [1, 2]}
    )
    path.write_bytes(HEADER + _frame(payload))
    assert events_of(path) == [ev.SessionPaused(at=2.5, session="s", reason="deadline")]


# -- a log the fold refuses ---------------------------------------------------------------


def _log_fds(path: Path) -> list[str]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                fds.append(fd)
        except OSError:
            pass  # the descriptor of the listing itself, already closed
    return fds


def _refused_log(root: Path) -> Path:
    path = log_path(root)
    write_log(path, [*numbered(2), ev.SessionPaused(at=T0, session="nope", reason="x")])
    with pytest.raises(IllegalTransition, match="unknown session nope"):
        read_state(root)
    return path


def test_open_of_a_refused_log_raises_and_releases_the_lock(tmp_path: Path) -> None:
    path = _refused_log(tmp_path)
    data = path.read_bytes()
    for _ in range(2):  # the second attempt meets the same error, not LockedError
        with pytest.raises(IllegalTransition):
            StateDir.open(tmp_path)
    assert path.read_bytes() == data


def test_open_of_a_refused_log_closes_the_log_file(tmp_path: Path) -> None:
    path = _refused_log(tmp_path)
    assert _log_fds(path) == []
    with pytest.raises(IllegalTransition):
        StateDir.open(tmp_path)
    assert _log_fds(path) == []


def test_seal_records_without_summary_fields_are_summarised_on_read(tmp_path: Path) -> None:
    """A record written before ArchiveSealed carried count/files/bytes/last
    still folds to the right counters and resume point."""
    from eventbak.statedir import read_state

    members = [
        ev.Member(b"/d", "dir", 0o755, 1),
        ev.Member(b"/d/a", "file", 0o644, 1, 10, 0, 0, b"", 0, 10),
        ev.Member(b"/d/big", "file", 0o644, 1, 100, 0, 0, b"", 0, 60),
    ]
    old_style = ev.ArchiveSealed(
        at=1.0, archive="s-000001", staged="x", size=1, raw_size=2, sha256="0" * 64,
        compression="auto", members=members,
    )  # fmt: skip
    assert old_style.count == 0  # the summary fields at their defaults
    path = tmp_path / "events.log"
    log, _ = EventLog.open(path)
    log.append(
        ev.SessionOpened(
            at=0.0,
            session="s",
            dataset="d",
            vault="file:///v",
            paths=[b"/d"],
            archive_size=65536,
            compression="auto",
        )
    )
    log.append(ev.ArchiveStarted(at=0.5, session="s", archive="s-000001", index=1))
    log.append(old_style)
    log.commit()
    log.close()
    state, _ = read_state(tmp_path)
    a = state.archives["s-000001"]
    assert (a.count, a.files, a.bytes, a.last) == (3, 2, 70, members[-1])
    assert (state.sessions["s"].files, state.sessions["s"].bytes) == (2, 70)
