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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pathspec

#: Kinds yielded: "file", "dir", "symlink" are stored; "special" and "error"
#: become EntrySkipped events ("error" with exit code 3).
SPECIAL_NAMES = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class Entry:
    __slots__ = ("kind", "path", "reason", "st", "target")

    def __init__(
        self,
        path: bytes,
        kind: str,
        st: os.stat_result | None = None,
        target: bytes = b"",
        reason: str = "",
    ) -> None:
        self.path = path
        self.kind = kind
        self.st = st
        self.target = target
        self.reason = reason

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


def walk(roots: list[bytes], exclude: Exclude | None = None) -> Iterator[Entry]:
    """Every entry under `roots` (normalized with `normalize_roots`), in walk order."""
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
            yield from _walk_tree(root, excluded)


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


def _walk_tree(root: bytes, excluded: Callable[[bytes, bool], bool] | None) -> Iterator[Entry]:
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
