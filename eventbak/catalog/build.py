"""A session's point in time: every entry in walk order, with where its
bytes are, from the event log and the manifest of the session it builds on.

A session stores what changed since its base (the last completed session
of its dataset, `SessionOpened.base`; none for a full session). Its point
in time is the base's manifest with the session's own copies laid over it:

* **own copies**: the members of the session's archives, read back from the
  log one archive at a time and merged in walk order across the session's
  runs (each run stored its members in walk order; a resumed run starts
  from the top again and stores changed entries once more). For a path
  stored more than once the last copy wins; a file's copy is its first
  segment (offset 0) and the segments after it.
* **deletions**: a path recorded deleted (`EntryDeleted`) is left out,
  unless the session stored it again after that.
* **the base**: every entry of the base's manifest that the session neither
  stored again nor found deleted is part of the point in time as it is,
  bytes in the base's archives (or older ones).

The same merge serves three readers: the manifest written when a session
completes (archives uploaded), the scanner's comparison when a session
starts or resumes (archives sealed or further: `KEPT`), and restore's plan
for a session whose manifest is not on disk. Memory holds one path's
segments at a time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from eventbak.catalog import store
from eventbak.catalog.manifest import Location, ManifestEntry, ManifestError
from eventbak.core import events as ev
from eventbak.core.state import ArchiveState, SessionState, State
from eventbak.pipeline.scanner import key as walk_key
from eventbak.statedir import members

#: The archive states whose members count when a session continues: what is
#: sealed is durable in staging and will be uploaded.
KEPT = frozenset({"sealed", "uploading", "uploaded"})
UPLOADED = frozenset({"uploaded"})

#: Opens the manifest entries of a completed session (its base), or raises.
OpenBase = Callable[[str], Iterable[ManifestEntry]]

_Copy = list[tuple[ArchiveState, ev.Member]]


def _tagged(root: Path, archives: list[ArchiveState]) -> Iterator[tuple[ArchiveState, ev.Member]]:
    for a in archives:
        for m in members(root, a):
            yield a, m


def own_copies(
    state: State, root: Path, session: str, states: Collection[str] = UPLOADED
) -> Iterator[_Copy]:
    """The last copy of each path the session stored (in archives in `states`
    now: the list is taken at the call, the members are read as iterated),
    in walk order: its first member and the segments after it."""
    runs: dict[int, list[ArchiveState]] = {}
    for a in state.archives_of(session):
        if a.state in states:
            runs.setdefault(a.run, []).append(a)
    return _copies(root, [runs[r] for r in sorted(runs)])


def _copies(root: Path, runs: list[list[ArchiveState]]) -> Iterator[_Copy]:
    # heapq.merge is stable: for equal paths the later run comes later
    merged = heapq.merge(*(_tagged(root, r) for r in runs), key=lambda am: walk_key(am[1].path))
    current: _Copy = []
    for a, m in merged:
        if current and current[0][1].path == m.path and m.kind == "file" and m.offset != 0:
            current.append((a, m))  # the next segment of the same copy
            continue
        if current and current[0][1].path != m.path:
            yield current
        current = [(a, m)]  # a new path, or a later copy of the same one
    if current:
        yield current


def copy_entry(copy: _Copy) -> ManifestEntry:
    """A path's copy as a manifest entry. `where` lists a file's segments
    and, for a symlink, the archive holding its member (offset and length 0)."""
    first = copy[0][1]
    digest = b""
    if first.kind == "file":
        where = [Location(m.ref or a.id, m.offset, m.length, m.source) for a, m in copy]
        digest = copy[-1][1].hash
    elif first.kind == "symlink":
        where = [Location(copy[0][0].id, 0, 0)]
    else:
        where = []
    return ManifestEntry(
        path=first.path,
        kind=first.kind,
        mode=first.mode,
        mtime_ns=first.mtime_ns,
        ctime_ns=first.ctime_ns,
        ino=first.ino,
        size=first.size,
        uid=first.uid,
        gid=first.gid,
        target=first.target,
        hash=digest,
        zstd=first.zstd,
        where=where,
    )


def point_in_time(
    base: Iterable[ManifestEntry], copies: Iterable[_Copy], deleted: dict[bytes, int]
) -> Iterator[ManifestEntry]:
    """The base's entries with the session's own copies laid over them and its
    deletions taken out, in walk order (a merge of two sorted streams)."""
    pending = iter(base)
    b = next(pending, None)
    for copy in copies:
        path = copy[0][1].path
        k = walk_key(path)
        while b is not None and walk_key(b.path) < k:
            if b.path not in deleted:
                yield b
            b = next(pending, None)
        if b is not None and b.path == path:
            b = next(pending, None)  # the session's copy replaces the base's
        gone = deleted.get(path)
        if gone is None or copy[-1][0].sealed_seq > gone:
            yield copy_entry(copy)
    while b is not None:
        if b.path not in deleted:
            yield b
        b = next(pending, None)


def session_entries(
    state: State,
    root: Path,
    session: str,
    open_base: OpenBase | None = None,
    states: Collection[str] = UPLOADED,
) -> Iterator[ManifestEntry]:
    """The entries of `session`'s point in time (own copies from archives in
    `states`). A session with a base needs `open_base` to read its manifest."""
    s = state.sessions[session]
    base: Iterable[ManifestEntry] = ()
    if s.base:
        if open_base is None:
            raise ValueError(f"session {session} builds on {s.base}: its manifest is needed")
        base = open_base(s.base)
    # the deletions as of now: a running session records more as it goes
    return point_in_time(base, own_copies(state, root, session, states), dict(s.deleted))


#: Reads a session's manifest from its vault (the state dir keeps the latest only).
FromVault = Callable[[SessionState], Iterable[ManifestEntry]]


def entries_of(
    state: State, root: Path, s: SessionState, from_vault: FromVault | None = None
) -> Iterable[ManifestEntry]:
    """A session's point in time, for reading it: its manifest when one is on
    record, the state dir's copy (checked against the record) or, once that
    was pruned, the vault's through `from_vault` (missing or damaged:
    ManifestError naming it); else built from the log (uploaded archives)
    over its base's, found the same way."""
    if s.catalog is not None and s.catalog.local_sha256:
        if from_vault is not None and not store.local_path(root, s.id).exists():
            return from_vault(s)
        return store.read_local(root, s)

    def open_base(base: str) -> Iterable[ManifestEntry]:
        b = state.sessions.get(base)
        if b is None:
            raise ManifestError(f"session {s.id} builds on {base}, which the log does not hold")
        return entries_of(state, root, b, from_vault)

    return session_entries(state, root, s.id, open_base)
