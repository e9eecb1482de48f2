"""The scanner: walks the source trees in one deterministic order.

Order: depth first, the entries of each directory sorted by their raw name
bytes, so the walk visits paths in the order of their component tuples
(`key(path)`). That order is what makes resume exact: a cursor "everything
up to key K is stored" means the same set of files on every run.

The walk never follows symlinks and never opens anything but directories.
Entries that cannot be backed up (special files, directories that cannot be
listed, entries that vanish between listing and stat) are yielded with a
kind that says so; the builder records them as events.
"""

from __future__ import annotations

import heapq
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pathspec

from eventbak.core import events as ev

#: Kinds yielded: "file", "dir", "symlink" are stored; "special" and "error"
#: become EntrySkipped events ("error" with exit code 3).
SPECIAL_NAMES = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class Entry:
    """One walked entry. `start` > 0: a split file whose first `start` bytes are
    already stored (resume). `reason` explains "special"/"error" kinds, and for
    stored kinds why an entry before the resume cursor is stored again."""

    __slots__ = ("kind", "path", "reason", "st", "start", "target")

    def __init__(
        self,
        path: bytes,
        kind: str,
        st: os.stat_result | None = None,
        target: bytes = b"",
        reason: str = "",
        start: int = 0,
    ) -> None:
        self.path = path
        self.kind = kind
        self.st = st
        self.target = target
        self.reason = reason
        self.start = start

    def __repr__(self) -> str:
        return f"Entry({self.path!r}, {self.kind})"


def key(path: bytes) -> tuple[bytes, ...]:
    """The walk order of `path` (an absolute path)."""
    return tuple(path.split(b"/"))


@dataclass
class Exclude:
    """gitignore-style patterns, matched relative to each source root."""

    patterns: list[str]

    def __post_init__(self) -> None:
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns) if self.patterns else None

    def matcher(self, root: bytes) -> Callable[[bytes, bool], bool] | None:
        spec = self._spec
        if spec is None:
            return None
        cut = len(root.rstrip(b"/")) + 1

        def excluded(path: bytes, is_dir: bool) -> bool:
            rel = os.fsdecode(path[cut:])
            return bool(spec.match_file(rel + "/" if is_dir else rel))

        return excluded


def normalize_roots(paths: list[bytes]) -> list[bytes]:
    """Absolute, normalized, sorted in walk order, nested roots dropped."""
    roots = sorted({os.path.normpath(os.path.abspath(p)) for p in paths}, key=key)
    out: list[bytes] = []
    for r in roots:
        if any(r == o or r.startswith(o.rstrip(b"/") + b"/") for o in out):
            continue
        out.append(r)
    return out


def _classify(path: bytes, st: os.stat_result) -> Entry:
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        return Entry(path, "file", st)
    if fmt == stat.S_IFDIR:
        return Entry(path, "dir", st)
    if fmt == stat.S_IFLNK:
        try:
            return Entry(path, "symlink", st, os.readlink(path))
        except FileNotFoundError:
            return Entry(path, "error", st, reason="vanished")
        except OSError as exc:
            return Entry(path, "error", st, reason=f"unreadable: {exc.strerror}")
    return Entry(path, "special", st, reason=SPECIAL_NAMES.get(fmt, "special file"))


def walk(
    roots: list[bytes], exclude: Exclude | None = None, skip: frozenset[bytes] = frozenset()
) -> Iterator[Entry]:
    """Every entry under `roots` (normalized with `normalize_roots`), in walk order.
    Directories in `skip` (eventbak's own state dir and local vault) are left out."""
    for root in roots:
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            yield Entry(root, "error", reason="vanished")
            continue
        except OSError as exc:
            yield Entry(root, "error", reason=f"unreadable: {exc.strerror}")
            continue
        entry = _classify(root, st)
        yield entry
        if entry.kind == "dir":
            excluded = exclude.matcher(root) if exclude else None
            yield from _walk_tree(root, excluded, skip)


def _listing(path: bytes) -> list[os.DirEntry[bytes]] | str:
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except FileNotFoundError:
        return "vanished"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    entries.sort(key=lambda d: d.name)
    return entries


def _walk_tree(
    root: bytes, excluded: Callable[[bytes, bool], bool] | None, skip: frozenset[bytes]
) -> Iterator[Entry]:
    first = _listing(root)
    if isinstance(first, str):
        yield Entry(root, "error", reason=first)
        return
    stack: list[Iterator[os.DirEntry[bytes]]] = [iter(first)]
    while stack:
        de = next(stack[-1], None)
        if de is None:
            stack.pop()
            continue
        path = de.path
        try:
            st = de.stat(follow_symlinks=False)
        except FileNotFoundError:
            yield Entry(path, "error", reason="vanished")
            continue
        except OSError as exc:
            yield Entry(path, "error", reason=f"unreadable: {exc.strerror}")
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if excluded is not None and excluded(path, is_dir):
            continue
        if is_dir and skip and path in skip:
            continue
        if is_dir:
            yield Entry(path, "dir", st)
            children = _listing(path)
            if isinstance(children, str):
                yield Entry(path, "error", reason=children)
            else:
                stack.append(iter(children))
        elif stat.S_ISREG(st.st_mode):
            yield Entry(path, "file", st)
        else:
            yield _classify(path, st)


# -- resume ------------------------------------------------------------------


@dataclass
class _Stored:
    """What a session already stored of one path (its segments merged)."""

    member: ev.Member
    covered: int  # bytes from offset 0 stored without a gap

    @property
    def complete(self) -> bool:
        return self.member.kind != "file" or self.covered >= self.member.size


def merge_runs(runs: list[Iterable[ev.Member]]) -> Iterator[ev.Member]:
    """The stored members of a session in walk order. Each run of the session
    (until an interruption) stored its members in walk order; a resumed run
    starts from the top again (entries changed before the cursor). For equal
    paths the later run comes later (heapq.merge is stable), so it wins."""
    return heapq.merge(*runs, key=lambda m: key(m.path))


def _merge_stored(members: Iterable[ev.Member]) -> Iterator[_Stored]:
    """Stored members (in walk order) merged per path; later copies win."""
    current: _Stored | None = None
    for m in members:
        if (
            current is not None
            and current.member.path == m.path
            and m.kind == "file"
            and m.offset != 0
        ):
            if m.offset == current.covered:
                current.covered += m.length
            continue
        if current is not None and current.member.path != m.path:
            yield current
        current = _Stored(m, m.length if m.kind == "file" else 0)
    if current is not None:
        yield current


def _same(entry: Entry, m: ev.Member) -> bool:
    st = entry.st
    if st is None:
        return False
    if entry.kind == "file":
        if m.kind not in ("file", "hardlink") or m.size != st.st_size:
            return False
    elif entry.kind != m.kind:
        return False
    if entry.kind == "symlink" and entry.target != m.target:
        return False
    return (
        m.mtime_ns == st.st_mtime_ns
        and m.mode == stat.S_IMODE(st.st_mode)
        and m.uid == st.st_uid
        and m.gid == st.st_gid
    )


def resume_filter(
    entries: Iterable[Entry], stored: Iterable[ev.Member], cursor: bytes | None
) -> Iterator[Entry]:
    """The entries still to store when a session resumes.

    `stored` are the members of the session's non-discarded archives, in
    walk order; `cursor` is the path of the last of them. Entries up to the
    cursor are compared with what was stored (a merge of two sorted
    streams, no index in memory): unchanged ones are dropped, changed or new
    ones (and members of discarded archives) are stored again, and stored
    paths that are gone come out as kind "deleted". A split file cut at the
    cursor continues from its first missing byte if it did not change.
    """
    if cursor is None:
        yield from entries
        return
    ckey = key(cursor)
    pending = _merge_stored(stored)
    nxt = next(pending, None)
    for entry in entries:
        ekey = key(entry.path)
        if ekey > ckey:
            while nxt is not None:  # stored but not walked: deleted
                yield Entry(nxt.member.path, "deleted")
                nxt = next(pending, None)
            yield entry
            continue
        while nxt is not None and key(nxt.member.path) < ekey:
            yield Entry(nxt.member.path, "deleted")
            nxt = next(pending, None)
        if nxt is None or nxt.member.path != entry.path:
            if entry.kind in ("file", "dir", "symlink"):
                entry.reason = "added before the resume point (new, or its archive was lost)"
            yield entry
            continue
        done, nxt = nxt, next(pending, None)
        if entry.kind in ("special", "error"):
            yield entry
        elif not _same(entry, done.member):
            entry.reason = "changed since it was stored"
            yield entry
        elif not done.complete:
            entry.start = done.covered  # continue a split file
            yield entry
    while nxt is not None:
        yield Entry(nxt.member.path, "deleted")
        nxt = next(pending, None)
