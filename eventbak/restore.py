"""Restore: plan from the catalog (the folded log), fetch, verify, extract.

A restore picks one session (the latest completed one unless `--session`),
selects the members matching the given paths or globs, and extracts them
archive by archive. Every archive is checked against the SHA-256 its upload
event recorded before a byte of it is used. Each entry lands at its
original absolute path below the target directory. Metadata comes from the
catalog (nanosecond mtimes, modes, and owners when running as root);
directory mtimes are set last, deepest first.

Safety: every destination is checked to stay below the target directory
without passing through a symlink, existing files are never replaced
without `overwrite`, and files are created with O_EXCL | O_NOFOLLOW.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tarfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

import zstandard

from eventbak import archive as ar
from eventbak.core import events as ev
from eventbak.core.state import ArchiveState, SessionState, State
from eventbak.errors import EventbakError, UsageError, VaultError
from eventbak.statedir import members
from eventbak.vaults import Vault, open_vault

_CHUNK = 1024 * 1024
#: Whole files up to this size are read into memory and written by a thread.
_SMALL = 256 * 1024


@dataclass
class Item:
    """One member to write: where its bytes come from and where they go."""

    member: ev.Member
    dest: bytes  # path below the target dir (no leading "/")


@dataclass
class Plan:
    sessions: list[SessionState]
    by_archive: list[tuple[ArchiveState, dict[bytes, list[Item]]]]
    links: list[Item]  # hard links made after everything else
    dirs: list[Item]
    count: int
    size: int
    missing: int = 0  # members in archives that are not uploaded
    warnings: list[str] = field(default_factory=list)


def choose_sessions(state: State, session: str | None) -> list[SessionState]:
    """`--session` (id or unique prefix), else the latest completed session of
    each dataset (or, for a dataset with none, its latest with uploads)."""
    if session:
        matches = [s for s in state.sessions.values() if s.id == session]
        if not matches:
            matches = [s for s in state.sessions.values() if s.id.startswith(session)]
        if len(matches) != 1:
            what = "no session" if not matches else "more than one session"
            raise UsageError(f"{what} matches --session {session!r}")
        return matches
    latest: dict[str, SessionState] = {}
    fallback: dict[str, SessionState] = {}
    for s in state.sessions.values():
        if s.state == "completed":
            latest[s.dataset] = s
        elif s.archives_uploaded:
            fallback[s.dataset] = s
    for dataset, s in fallback.items():
        latest.setdefault(dataset, s)
    if not latest:
        raise EventbakError("nothing to restore: the log has no session with uploaded archives")
    return sorted(latest.values(), key=lambda s: s.opened_at)


def glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Shell-style: `*` and `?` stay within one path component, `**` crosses
    them, `[...]` is a character class."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if pattern.startswith(b"**", i):
            out.append(b".*")
            i += 2
            continue
        if c == b"*":
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(b"[^/]")
        elif c == b"[":
            end = pattern.find(b"]", i + 2 if pattern.startswith(b"[!", i) else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith(b"!"):
                    body = b"^" + body[1:]
                out.append(b"[" + body.replace(b"\\", b"\\\\") + b"]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(b"".join(out) + b"\\Z", re.DOTALL)


def _pattern_matcher(patterns: list[bytes]) -> Callable[[bytes], bool]:
    """A path matches if it, or a directory above it, is a pattern."""
    if not patterns:
        return lambda p: True
    exact: list[bytes] = []
    globs: list[re.Pattern[bytes]] = []
    for pat in patterns:
        pat = os.path.normpath(os.path.abspath(pat))
        if any(c in pat for c in (b"*", b"?", b"[")):
            globs.append(glob_regex(pat))
        else:
            exact.append(pat.rstrip(b"/") or b"/")

    def match(path: bytes) -> bool:
        for e in exact:
            if path == e or path.startswith(e + b"/") or e == b"/":
                return True
        if globs:
            p = path
            while p and p != b"/":
                if any(g.match(p) for g in globs):
                    return True
                p = os.path.dirname(p)
        return False

    return match


def plan_restore(state: State, root: Path, patterns: list[bytes], session: str | None) -> Plan:
    """What to extract from which archive. Member lists are read from the log
    one archive at a time; the plan holds only the selected entries."""
    sessions = choose_sessions(state, session)
    match = _pattern_matcher(patterns)
    plan = Plan(sessions=sessions, by_archive=[], links=[], dirs=[], count=0, size=0)
    files_by_path: dict[bytes, list[tuple[ArchiveState, ev.Member]]] = {}
    selected: dict[bytes, list[tuple[ArchiveState, ev.Member]]] = {}
    order: list[str] = []
    for s in sessions:
        for a in state.archives_of(s.id):
            order.append(a.id)
            if a.state != "uploaded":
                if a.state != "discarded":
                    plan.missing += a.count
                continue
            for m in members(root, a):
                # A path stored again (resume after a change, or a later
                # session of another dataset) starts a new generation: only
                # the last one is restored.
                new_generation = m.kind != "file" or m.offset == 0
                if m.kind == "file":
                    if new_generation:
                        files_by_path[m.path] = []
                    files_by_path.setdefault(m.path, []).append((a, m))
                if match(m.path):
                    if new_generation:
                        selected[m.path] = []
                    selected.setdefault(m.path, []).append((a, m))
        for gone, seq in s.deleted.items():  # unless stored again after that
            found = selected.get(gone)
            if found and found[-1][0].session == s.id and found[-1][0].sealed_seq < seq:
                del selected[gone]
    if not selected:
        ids = ", ".join(s.id for s in sessions)
        raise EventbakError(
            f"nothing to restore: no backed-up entry of session {ids} matches "
            + (" ".join(ev.show_path(p) for p in patterns) if patterns else "anything")
        )
    work: dict[str, dict[bytes, list[Item]]] = {}
    archives: dict[str, ArchiveState] = {}

    def add(a: ArchiveState, m: ev.Member, dest_path: bytes) -> None:
        name = ar.member_name(m.path, m.kind, m.offset if m.segmented else None).rstrip(b"/")
        archives[a.id] = a
        work.setdefault(a.id, {}).setdefault(name, []).append(Item(m, dest_path))

    for path, found in selected.items():
        for a, m in found:
            dest = path.lstrip(b"/")
            if m.kind == "dir":
                plan.dirs.append(Item(m, dest))
                continue
            if m.kind == "hardlink":
                if m.target in selected:
                    plan.links.append(Item(m, dest))
                else:  # the first link is not restored: give this one the data
                    for ta, tm in files_by_path.get(m.target, []):
                        add(ta, tm, dest)
                plan.count += 1
                continue
            add(a, m, dest)
            if m.kind != "file" or m.offset == 0:
                plan.count += 1
            if m.kind == "file":
                plan.size += m.length
    plan.by_archive = [(archives[aid], work[aid]) for aid in order if aid in work]
    if plan.missing:
        plan.warnings.append(f"{plan.missing} entries are in archives not uploaded yet")
    return plan


def _lexists_not_dir(path: bytes) -> bool:
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class _Extractor:
    def __init__(self, to: Path, overwrite: bool) -> None:
        self.to = os.fsencode(to.resolve())
        self.overwrite = overwrite
        self.safe_dirs: set[bytes] = {self.to}
        self.segments: dict[bytes, ev.Member] = {}
        self.root = os.geteuid() == 0
        self.files = 0
        self.bytes = 0

    def dest(self, rel: bytes) -> bytes:
        if not rel or any(part in (b"..",) for part in rel.split(b"/")):
            raise EventbakError(f"refusing unsafe path {ev.show_path(rel)!r} from the catalog")
        return self.to + b"/" + rel

    def parent_ok(self, dest: bytes) -> None:
        parent = os.path.dirname(dest)
        if parent in self.safe_dirs:
            return
        self.parent_ok(parent)
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            os.mkdir(parent, 0o700)
            st = os.lstat(parent)
        if not stat.S_ISDIR(st.st_mode):
            raise EventbakError(
                f"cannot restore below {ev.show_path(parent)}: it is not a directory"
            )
        self.safe_dirs.add(parent)

    def make_dir(self, item: Item) -> None:
        dest = self.dest(item.dest)
        self.parent_ok(dest)
        try:
            os.mkdir(dest, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(dest).st_mode):
                raise EventbakError(
                    f"cannot restore directory {ev.show_path(dest)}: a file is in the way"
                ) from None
        self.safe_dirs.add(dest)

    def _open_new(self, dest: bytes) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        if self.overwrite:
            try:
                if not stat.S_ISREG(os.lstat(dest).st_mode):
                    os.unlink(dest)  # a symlink (never followed) or other non-file
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise EventbakError(
                    f"cannot restore file {ev.show_path(dest)}: a directory is in the way"
                ) from None
            return os.open(dest, flags | os.O_TRUNC, 0o600)
        return os.open(dest, flags | os.O_EXCL, 0o600)

    def write_file(self, item: Item, data: IO[bytes] | None, writers: _Writers) -> None:
        """A file read from the archive in chunks here; the writes, then the
        metadata and the close, run in order in its directory's writer thread."""
        m = item.member
        dest = self.dest(item.dest)
        self.parent_ok(dest)
        if m.segmented:
            if dest not in self.segments:
                os.close(self._open_new(dest))
                self.segments[dest] = m
            fd = os.open(dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            pos = m.offset
        else:
            fd = self._open_new(dest)
            pos = 0
        key = _parent(item.dest)
        try:
            left = m.length
            while left > 0 and data is not None:
                chunk = data.read(min(_CHUNK, left))
                if not chunk:
                    raise EventbakError(f"archive ends inside {ev.show_path(m.path)}")
                writers.submit(key, partial(_pwrite_all, fd, chunk, pos), len(chunk))
                pos += len(chunk)
                left -= len(chunk)
        finally:  # queued after the writes: the fd stays open until they ran
            writers.submit(key, partial(self._close_file, fd, dest, m), 0)
        self.bytes += m.length
        if not m.segmented:
            self.files += 1

    def _close_file(self, fd: int, dest: bytes, m: ev.Member) -> None:
        try:
            if not m.segmented:
                self._finish_file(fd, dest, m)
        finally:
            os.close(fd)

    def write_small(self, item: Item, data: bytes) -> None:
        """A whole file already in memory (runs in a writer thread)."""
        m = item.member
        if len(data) != m.length:
            raise EventbakError(f"archive ends inside {ev.show_path(m.path)}")
        dest = self.dest(item.dest)
        fd = self._open_new(dest)
        try:
            _pwrite_all(fd, data, 0)
            self._finish_file(fd, dest, m)
        finally:
            os.close(fd)

    def _finish_file(self, fd: int, dest: bytes, m: ev.Member) -> None:
        """Owner, mode and mtime (no counting here: writer threads call it)."""
        if self.root:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode)
        os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))

    def finish_segments(self) -> None:
        for dest, m in self.segments.items():
            fd = os.open(dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, m.size)
                self._finish_file(fd, dest, m)
                self.files += 1
            finally:
                os.close(fd)

    def symlink(self, item: Item) -> None:
        m = item.member
        dest = self.dest(item.dest)
        self.parent_ok(dest)
        if self.overwrite and _lexists_not_dir(dest):
            os.unlink(dest)
        os.symlink(m.target, dest)
        if self.root:
            os.chown(dest, m.uid, m.gid, follow_symlinks=False)
        os.utime(dest, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)
        self.files += 1

    def hardlink(self, item: Item) -> None:
        dest = self.dest(item.dest)
        self.parent_ok(dest)
        if self.overwrite and _lexists_not_dir(dest):
            os.unlink(dest)
        os.link(self.dest(item.member.target.lstrip(b"/")), dest, follow_symlinks=False)
        self.files += 1

    def finish_dirs(self, dirs: list[Item]) -> None:
        for item in sorted(dirs, key=lambda i: i.dest.count(b"/"), reverse=True):
            m = item.member
            dest = self.dest(item.dest)
            if self.root:
                os.chown(dest, m.uid, m.gid, follow_symlinks=False)
            os.chmod(dest, m.mode)
            os.utime(dest, ns=(m.mtime_ns, m.mtime_ns))


def verify_archive(vault: Vault, a: ArchiveState) -> None:
    h = hashlib.sha256()
    with vault.open(a.key) as f:
        while chunk := f.read(4 * _CHUNK):
            h.update(chunk)
    if h.hexdigest() != a.sha256:
        raise VaultError(
            f"archive {a.id} in {a.vault} is damaged: sha256 {h.hexdigest()}, expected {a.sha256}"
        )


def _parent(rel: bytes) -> bytes:
    return rel[: rel.rfind(b"/") + 1]


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


class _Writers:
    """Files are created and written by a few threads: creating a file costs
    the kernel far more than it costs Python, and the threads overlap that
    and the reading of the archive (the GIL is released in open, write and
    close). Everything for one directory goes to the same thread, in order
    (`key`): creating files in one directory takes its lock, and threads
    waiting for it spin on the CPU. At most `limit` tasks and `max_bytes`
    of data wait in memory."""

    def __init__(self, workers: int = 4, limit: int = 256, max_bytes: int = 16 * _CHUNK) -> None:
        self._pools = [
            ThreadPoolExecutor(1, thread_name_prefix=f"restore-{i}") for i in range(workers)
        ]
        self._pending: deque[tuple[Future[object], int]] = deque()
        self._bytes = 0
        self._limit = limit
        self._max_bytes = max_bytes

    def submit(self, key: bytes, fn: Callable[[], object], nbytes: int) -> None:
        pool = self._pools[hash(key) % len(self._pools)]
        self._pending.append((pool.submit(fn), nbytes))
        self._bytes += nbytes
        while len(self._pending) > self._limit or self._bytes > self._max_bytes:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, nbytes = self._pending.popleft()
        self._bytes -= nbytes
        future.result()

    def drain(self) -> None:
        while self._pending:
            self._wait_oldest()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            for pool in self._pools:
                pool.shutdown(wait=True, cancel_futures=True)


def _extract_archive(
    vault: Vault,
    a: ArchiveState,
    wanted: dict[bytes, list[Item]],
    ex: _Extractor,
    writers: _Writers,
) -> None:
    """Extract the wanted members of `a`, which the caller has verified."""
    with vault.open(a.key) as raw:
        stream = raw
        if a.compression != "none":
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        try:
            with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tf:
                left = sum(len(v) for v in wanted.values())
                for ti in tf:
                    items = wanted.get(ti.name.encode("utf-8", "surrogateescape"))
                    if not items:
                        continue
                    for item in items:
                        m = item.member
                        if m.kind == "file" and not m.segmented and m.length <= _SMALL:
                            f = tf.extractfile(ti)
                            data = f.read() if f is not None else b""
                            ex.parent_ok(ex.dest(item.dest))  # mkdirs stay in this thread
                            writers.submit(
                                _parent(item.dest), partial(ex.write_small, item, data), len(data)
                            )
                            ex.files += 1
                            ex.bytes += m.length
                        elif m.kind == "file":
                            ex.write_file(item, tf.extractfile(ti), writers)
                        elif m.kind == "symlink":
                            ex.symlink(item)
                        left -= 1
                    if left == 0:
                        break
        except (tarfile.TarError, zstandard.ZstdError) as exc:
            raise VaultError(f"archive {a.id} cannot be read: {exc}") from None
    writers.drain()
    if left:
        raise VaultError(f"archive {a.id} lacks {left} members its catalog lists")


@dataclass
class RestoreReport:
    session: str
    files: int
    bytes: int
    elapsed: float
    warnings: list[str]


def restore(
    state: State,
    root: Path,
    patterns: list[bytes],
    to: Path,
    session: str | None = None,
    overwrite: bool = False,
) -> RestoreReport:
    started = time.monotonic()
    plan = plan_restore(state, root, patterns, session)
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--to {to}: {exc.strerror}") from None
    ex = _Extractor(to, overwrite)
    if not overwrite:
        clashes = [
            ex.dest(i.dest)
            for _, wanted in plan.by_archive
            for items in wanted.values()
            for i in items
            if not i.member.segmented or i.member.offset == 0
        ] + [ex.dest(i.dest) for i in plan.links]
        existing = [d for d in clashes if os.path.lexists(d)]
        if existing:
            raise UsageError(
                f"{len(existing)} files to restore already exist (first: "
                f"{ev.show_path(existing[0])}); use --overwrite to replace them"
            )
    vaults: dict[str, Vault] = {}

    def vault_of(a: ArchiveState) -> Vault:
        return vaults.get(a.vault) or vaults.setdefault(a.vault, open_vault(a.vault))

    writers = _Writers()
    # Each archive is verified before anything is taken from it; the next
    # one is verified meanwhile, in a thread (hashing releases the GIL).
    checker = ThreadPoolExecutor(1, thread_name_prefix="verify")
    try:
        for item in sorted(plan.dirs, key=lambda i: i.dest.count(b"/")):
            ex.make_dir(item)
        archives = [a for a, _ in plan.by_archive]

        def check(i: int) -> Future[None] | None:
            if i >= len(archives):
                return None
            return checker.submit(verify_archive, vault_of(archives[i]), archives[i])

        ahead = check(0)
        for i, (a, wanted) in enumerate(plan.by_archive):
            verified, ahead = ahead, check(i + 1)
            assert verified is not None
            verified.result()
            _extract_archive(vault_of(a), a, wanted, ex, writers)
        ex.finish_segments()
        for item in plan.links:
            ex.hardlink(item)
        ex.finish_dirs(plan.dirs)
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename is not None else "?"
        raise EventbakError(f"restore failed: {exc.strerror}: {where}") from None
    finally:
        checker.shutdown(wait=True, cancel_futures=True)
        writers.close()
    return RestoreReport(
        ", ".join(s.id for s in plan.sessions),
        ex.files + len(plan.dirs),
        ex.bytes,
        time.monotonic() - started,
        plan.warnings,
    )
