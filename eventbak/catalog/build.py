"""A session's manifest from the event log: every entry of its point in time
in walk order, with where its bytes are.

The members of a session's uploaded archives are read back from the log one
archive at a time and merged in walk order across the session's runs (each
run stored its members in walk order; a resumed run starts from the top
again and stores changed entries once more, as `scanner.merge_runs`). For a
path stored more than once the last copy wins; a file's copy is its first
segment (offset 0) and the segments after it; an entry the resume found
deleted after its last copy was sealed is left out. These are the rules
restore's plan follows (`restore.plan_restore`), and a test holds the two
together. Memory holds one path's segments at a time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path

from eventbak.catalog.manifest import Location, ManifestEntry
from eventbak.core import events as ev
from eventbak.core.state import ArchiveState, State
from eventbak.pipeline.scanner import key as walk_key
from eventbak.statedir import members


def _tagged(root: Path, archives: list[ArchiveState]) -> Iterator[tuple[ArchiveState, ev.Member]]:
    for a in archives:
        for m in members(root, a):
            yield a, m


def session_entries(state: State, root: Path, session: str) -> Iterator[ManifestEntry]:
    """The entries of `session` as its manifest lists them (uploaded archives only)."""
    s = state.sessions[session]
    runs: dict[int, list[ArchiveState]] = {}
    for a in state.archives_of(session):
        if a.state == "uploaded":
            runs.setdefault(a.run, []).append(a)
    # heapq.merge is stable: for equal paths the later run comes later
    merged = heapq.merge(
        *(_tagged(root, runs[r]) for r in sorted(runs)), key=lambda am: walk_key(am[1].path)
    )
    current: list[tuple[ArchiveState, ev.Member]] = []
    for a, m in merged:
        if current and current[0][1].path == m.path and m.kind == "file" and m.offset != 0:
            current.append((a, m))  # the next segment of the same copy
            continue
        if current and current[0][1].path != m.path:
            entry = _entry(current, s.deleted)
            if entry is not None:
                yield entry
        current = [(a, m)]  # a new path, or a later copy of the same one
    if current:
        entry = _entry(current, s.deleted)
        if entry is not None:
            yield entry


def _entry(
    copy: list[tuple[ArchiveState, ev.Member]], deleted: dict[bytes, int]
) -> ManifestEntry | None:
    """One path's last copy (its first member and the segments after it)."""
    first = copy[0][1]
    last_archive = copy[-1][0]
    gone = deleted.get(first.path)
    if gone is not None and last_archive.sealed_seq < gone:
        return None
    where = [Location(x.id, m.offset, m.length) for x, m in copy if m.kind == "file"]
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
        zstd=first.zstd,
        where=where,
    )
