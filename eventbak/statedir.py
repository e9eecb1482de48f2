"""The state directory: the event log, the staging area and the lock.

    <state dir>/events.log     the event log (core/log.py)
    <state dir>/staging/       archives being built (*.partial) or sealed
    <state dir>/lock           held (flock) by the one process writing the log

`StateDir.open` takes the lock, opens the log (cutting a torn tail), and
folds it into `state`. `record` applies an event to the state *before*
buffering it, so an illegal event raises and is never written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from eventbak.core import checkpoint
from eventbak.core import events as ev
from eventbak.core.log import (
    EventLog,
    LogImage,
    TornTail,
    check_frames,
    read_event_at,
    read_log,
)
from eventbak.core.state import ArchiveState, State, apply
from eventbak.errors import LockedError, LogCorrupt, UsageError
from eventbak.fsutil import private_dir

LOG_NAME = "events.log"


def log_path(root: Path) -> Path:
    return root / LOG_NAME


def read_state(
    root: Path, until: int | None = None, from_checkpoint: bool = False
) -> tuple[State, LogImage]:
    """Fold the log without taking the lock or changing anything (read-only
    commands). `from_checkpoint`: from the checkpoint when one fits the log
    (the image then holds the records after it only; not with `until`)."""
    use = from_checkpoint and until is None
    cp = checkpoint.load(root, log_path(root)) if use else None
    state, start, seq = (cp.state, cp.offset, cp.seq) if cp is not None else (State(), 0, 0)
    image = read_log(log_path(root), until, start=start, seq=seq)
    for rec in image.records:
        apply(state, rec.event, rec.offset)
    return state, image


def members(root: Path, archive: ArchiveState) -> Iterator[ev.Member]:
    """The member list of a sealed archive, read from its log records (the
    pieces listed while it was built, then its seal) one record at a time."""
    if archive.offset < 0:
        raise ValueError(f"archive {archive.id} has no sealed record in the log")
    path = log_path(root)
    for offset in [*archive.listed, archive.offset]:
        event = read_event_at(path, offset)
        if (
            not isinstance(event, ev.ArchiveSealed | ev.MembersListed)
            or event.archive != archive.id
        ):
            raise LogCorrupt(str(path), offset, f"not a member list of {archive.id}")
        yield from event.members


class StateDir:
    def __init__(
        self, root: Path, lock_fd: int, log: EventLog, state: State, torn: TornTail | None
    ):
        self.root = root
        self._lock_fd = lock_fd
        self.log = log
        self.state = state
        self.torn = torn
        self.staging = root / "staging"

    @classmethod
    def open(cls, root: Path) -> StateDir:
        try:
            # private whatever the umask: staging holds copies of every file
            private_dir(root)
            private_dir(root / "staging")
        except OSError as exc:
            raise UsageError(f"state dir {root}: {exc.strerror}") from None
        lock_fd = _lock(root / "lock")
        log: EventLog | None = None
        try:
            cp = checkpoint.load(root, log_path(root))
            if cp is not None:
                # never append to a log damaged before the checkpoint: its
                # frames are checked (not decoded, not folded)
                check_frames(log_path(root), cp.offset)
                log, image = EventLog.open(log_path(root), cp.offset, cp.seq, cp.last)
                state = cp.state
            else:
                log, image = EventLog.open(log_path(root))
                state = State()
            for rec in image.records:
                apply(state, rec.event, rec.offset)
        except BaseException:
            if log is not None:
                log.close()
            os.close(lock_fd)
            raise
        sd = cls(root, lock_fd, log, state, image.torn)
        torn = image.torn
        if torn is not None and torn.offset > 0:
            sd.record(ev.LogTailTruncated(at=time.time(), offset=torn.offset, dropped=torn.dropped))
            sd.commit()
        return sd

    def record(self, event: ev.Event) -> None:
        apply(self.state, event, self.log.next_offset)
        self.log.append(event)

    def members(self, archive: ArchiveState) -> Iterator[ev.Member]:
        """Members of a sealed archive (committing first if its seal is buffered)."""
        if self.log.pending:
            self.commit()
        return members(self.root, archive)

    def commit(self) -> None:
        self.log.commit()

    def checkpoint(self) -> None:
        """Keep the folded state beside the log (core/checkpoint.py), if every
        event it holds is durable."""
        log = self.log
        if log.pending or log.last_offset < 0:
            return
        head = log.frame_head(log.last_offset)
        checkpoint.save(self.root, self.state, log.durable_end, log.seq, log.last_offset, head)

    def close(self) -> None:
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                self.checkpoint()
        self.log.close()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):  # no pid: nobody holds it now
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = -1


def lock_holder(root: Path) -> int | None:
    """The pid the lock file names, if that process still runs (a backup or
    the daemon holding the state dir): for display only. It does not take
    the lock, not even to probe it, so a backup starting now is never
    refused because of a status."""
    try:
        text = (root / "lock").read_text().strip()
        pid = int(text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise LockedError(
            f"state dir {path.parent} is in use by another eventbak process (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
