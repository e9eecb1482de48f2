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

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pathspec

from eventbak.catalog.manifest import ManifestEntry

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


# -- what changed -------------------------------------------------------------


def _same(entry: Entry, k: ManifestEntry, ignore_inode: bool, ignore_ctime: bool) -> bool:
    """The walked entry is the one `k` describes (restic's rule: kind, size,
    mtime, ctime, inode, mode, owner, and a symlink's target; a known ctime
    or inode of 0 is an old log's, not compared)."""
    st = entry.st
    if st is None:
        return False
    if entry.kind == "file":
        if k.kind not in ("file", "hardlink") or k.size != st.st_size:
            return False
    elif entry.kind != k.kind:
        return False
    if entry.kind == "symlink" and entry.target != k.target:
        return False
    if not ignore_ctime and k.ctime_ns and k.ctime_ns != st.st_ctime_ns:
        return False
    if not ignore_inode and k.ino and k.ino != st.st_ino:
        return False
    return (
        k.mtime_ns == st.st_mtime_ns
        and k.mode == stat.S_IMODE(st.st_mode)
        and k.uid == st.st_uid
        and k.gid == st.st_gid
    )


def _covered(k: ManifestEntry) -> int:
    done = 0
    for loc in k.where:
        if loc.offset == done:
            done += loc.length
    return done


def changes(
    entries: Iterable[Entry],
    known: Iterable[ManifestEntry],
    cursor: bytes | None = None,
    ignore_inode: bool = False,
    ignore_ctime: bool = False,
    unchanged_links: dict[tuple[int, int], bytes] | None = None,
) -> Iterator[Entry]:
    """The walked entries still to store, and kind "deleted" for known paths
    that are gone: a merge of two streams in walk order, no index in memory.

    `known` is what the session's point in time holds already
    (catalog/build.py): the base session's entries with the session's own
    copies laid over them. An entry that is known and unchanged is dropped:
    neither read nor stored again. A changed or new one is stored; a split
    file stored in part (an interrupted session) continues from its first
    missing byte. A known path that is not walked, or is walked as a special
    file, comes out "deleted". `cursor` (the last path the session stored)
    marks entries before it that are stored now as changed during the
    session (`Entry.reason`). A hard link is unchanged only if the path it
    links to was unchanged too (`(dev, ino)` of the unchanged multi-link
    files are kept; memory grows only with those); they also go into
    `unchanged_links`, the builder's map of first names, so that a later
    name of the same file is stored as a link to the one not stored again.
    """
    ckey = key(cursor) if cursor is not None else None
    pending = iter(known)
    nxt = next(pending, None)
    if nxt is None:
        yield from entries
        return
    links: dict[tuple[int, int], bytes] = {}
    for entry in entries:
        ekey = key(entry.path)
        while nxt is not None and key(nxt.path) < ekey:
            yield Entry(nxt.path, "deleted")
            nxt = next(pending, None)
        before = ckey is not None and ekey <= ckey
        if nxt is None or nxt.path != entry.path:
            if before and entry.kind in ("file", "dir", "symlink"):
                entry.reason = "added before the resume point (new, or its archive was lost)"
            yield entry
            continue
        done, nxt = nxt, next(pending, None)
        if entry.kind in ("special", "error"):
            if entry.kind == "special":
                yield Entry(done.path, "deleted")
            yield entry
            continue
        st = entry.st
        same = _same(entry, done, ignore_inode, ignore_ctime)
        if same and done.kind == "hardlink":
            same = st is not None and links.get((st.st_dev, st.st_ino)) == done.target
        if not same:
            if before:
                entry.reason = "changed since it was stored"
            yield entry
        elif done.kind == "file" and _covered(done) < done.size:
            entry.start = _covered(done)  # continue a split file
            yield entry
        elif st is not None and entry.kind == "file" and st.st_nlink > 1:
            links.setdefault((st.st_dev, st.st_ino), entry.path)
            if unchanged_links is not None:  # later names are stored as links to it
                unchanged_links.setdefault((st.st_dev, st.st_ino), entry.path)
    while nxt is not None:
        yield Entry(nxt.path, "deleted")
        nxt = next(pending, None)
