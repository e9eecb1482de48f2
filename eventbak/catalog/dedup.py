"""File-level dedup: a file whose content the vault already holds is not
stored again; the session refers to the bytes where they are.

The index maps (size, BLAKE3-256 of the content) to where those bytes live,
for every file of at least `DEDUP_MIN` bytes in the base session's point in
time (its manifest: moved, renamed and copied files are found there). It is
an SQLite file beside the base's manifest in the state dir
(`catalog/<base>.idx`), built on first use by the builder's thread from
that manifest and kept for the next session that builds on the same base,
so memory stays flat however many files the tree holds. It is a cache: it
can always be built again from the manifest, and a damaged one is.

A file is a candidate when it is new or changed, whole (not a split file
resumed from an offset), at least `DEDUP_MIN` bytes, and some indexed file
has its size: only then is it hashed before it is packed (one read more;
the page cache usually serves the second). Files in the same session are
not deduplicated against each other: only bytes in uploaded archives of a
completed session are referred to.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from eventbak.catalog.manifest import Location, ManifestEntry

#: Smaller files are not worth an index row (their tar header costs as much).
DEDUP_MIN = 16 * 1024

_SCHEMA = """
CREATE TABLE files (size INTEGER NOT NULL, hash BLOB NOT NULL, zstd INTEGER NOT NULL,
                    path BLOB NOT NULL, "where" BLOB NOT NULL);
"""
_encode = msgspec.msgpack.Encoder().encode
_decode_where = msgspec.msgpack.Decoder(list[Location]).decode


class Found(msgspec.Struct, frozen=True):
    """Where a file's content is: its pieces, each naming the path its
    member is stored under in that archive."""

    where: list[Location]
    zstd: bool


class ContentIndex:
    """The (size, blake3) index of one base session, built lazily from
    `entries()` into `path` (used from one thread at a time)."""

    def __init__(self, path: Path, entries: Callable[[], Iterable[ManifestEntry]]) -> None:
        self.path = path
        self._entries = entries
        self._db: sqlite3.Connection | None = None
        self.failed = False

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            if not self.path.exists():
                self._build()
            # the builder runs in worker threads, one batch at a time
            self._db = sqlite3.connect(self.path, check_same_thread=False)
        return self._db

    def _build(self) -> None:
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?)",
                (
                    (e.size, e.hash, e.zstd, e.path, _encode(_resolved(e)))
                    for e in self._entries()
                    if e.kind == "file" and e.hash and e.size >= DEDUP_MIN
                ),
            )
            db.execute("CREATE INDEX by_content ON files (size, hash)")
            db.commit()
        finally:
            db.close()
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def may_hold(self, size: int) -> bool:
        """Some indexed file has this size (worth hashing the candidate)."""
        if size < DEDUP_MIN or self.failed:
            return False
        row = self._query("SELECT 1 FROM files WHERE size = ? LIMIT 1", (size,))
        return row is not None

    def find(self, size: int, digest: bytes) -> Found | None:
        query = 'SELECT "where", zstd FROM files WHERE size = ? AND hash = ? LIMIT 1'
        row = self._query(query, (size, digest))
        return None if row is None else Found(_decode_where(row[0]), bool(row[1]))

    def _query(self, query: str, args: tuple[object, ...]) -> Any:
        """One row, or None. A damaged index is removed (the next session
        builds it again) and dedup is off for this one: storing a file is
        never wrong."""
        try:
            return self._open().execute(query, args).fetchone()
        except (sqlite3.Error, msgspec.DecodeError):
            self.close()
            self.failed = True
            self.path.unlink(missing_ok=True)
            return None

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


def _resolved(e: ManifestEntry) -> list[Location]:
    """`e.where` with each piece's stored path spelled out."""
    return [loc if loc.path else msgspec.structs.replace(loc, path=e.path) for loc in e.where]
