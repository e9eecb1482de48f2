"""Manifests on disk: writing a completed session's manifest (the state
dir's copy and the vault's), and reading the state dir's copy back.

    <state dir>/catalog/<session>.mf.zst     the state dir's copy, 0600

The state dir keeps its own copy of every manifest it stored, compressed
but never encrypted: the next session of the dataset compares the tree
with it (the backup host holds the recipients, not the identity), and
restore plans from it without reading the log's member lists. It holds what
the event log holds already (paths and metadata), in a directory as
private as the log's. The vault's copy is the same stream, encrypted when
the session is (`catalog/<session>.mf.zst.age`).

A copy is trusted only as far as its record says: `CatalogStored.local_sha256`
is checked when it has been read to its end, and a copy that is missing or
does not match is an error naming it (`ManifestError`), never a silent
empty point in time.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from eventbak.catalog.manifest import (
    FORMAT_VERSION,
    ArchiveRecord,
    Header,
    ManifestEntry,
    ManifestError,
    ManifestReader,
    ManifestWriter,
)
from eventbak.core.state import SESSION_FINAL, ArchiveState, SessionState, State
from eventbak.fsutil import fsync_dir, private_dir

CATALOG_DIR = "catalog"
LOCAL_LAYERS = ["zstd"]


def local_path(root: Path, session: str) -> Path:
    return root / CATALOG_DIR / f"{session}.mf.zst"


def index_path(root: Path, session: str) -> Path:
    """The content index of a session's point in time (catalog/dedup.py)."""
    return root / CATALOG_DIR / f"{session}.idx"


class _Hashing(io.RawIOBase):
    """Reads a file, hashing every byte that passes."""

    def __init__(self, f: io.BufferedReader) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(buffer)
        self.sha.update(buffer[:n])
        return n


def read_local(root: Path, s: SessionState) -> Iterator[ManifestEntry]:
    """The entries of the state dir's copy of `s`'s manifest, checked against
    its record once read to the end (ManifestError if missing or different)."""
    path = local_path(root, s.id)
    name = f"manifest of session {s.id} ({path})"
    if s.catalog is None or not s.catalog.local_sha256:
        raise ManifestError(f"session {s.id} has no manifest on record in this state dir")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a generator)
    except OSError as exc:
        raise ManifestError(f"{name} cannot be read: {exc.strerror}") from None
    with f:
        hashing = _Hashing(f)
        reader = ManifestReader(io.BufferedReader(hashing), LOCAL_LAYERS, name=name)
        yield from reader
        got, want = _finish(hashing, f), s.catalog.local_sha256
        if got != want:
            raise ManifestError(f"{name} is damaged: sha256 {got}, expected {want}")


def _finish(hashing: _Hashing, f: io.BufferedReader) -> str:
    """The digest of the whole file: what the reader left unread is hashed too."""
    while chunk := f.read(1 << 20):
        hashing.sha.update(chunk)
    return hashing.sha.hexdigest()


def prune(root: Path, state: State, keep: SessionState) -> list[str]:
    """Remove the state dir's copies of the manifests of the sessions before
    `keep` of its lineage (same dataset, roots and vault: what a next
    session builds on is `keep`, completed). The vault holds them all, and
    restore reads them there (not from a Glacier vault: reading one takes a
    retrieval job, so there every copy stays). Returns the sessions whose
    copies went."""
    gone: list[str] = []
    if keep.vault.startswith("glacier://"):
        return gone
    for s in state.sessions.values():
        if s.id == keep.id:
            break
        same = s.dataset == keep.dataset and s.paths == keep.paths and s.vault == keep.vault
        if same and s.state in SESSION_FINAL and local_path(root, s.id).exists():
            local_path(root, s.id).unlink()
            gone.append(s.id)
    return gone


@dataclass
class Written:
    """A manifest written: the state dir's copy in place, the vault's staged."""

    local_sha256: str
    staged: Path  # the vault's copy (the local file itself when not encrypted)
    size: int
    sha256: str
    entries: int
    files: int
    bytes: int


def records(archives: Iterable[ArchiveState]) -> list[ArchiveRecord]:
    """The uploaded ones among `archives`, as a manifest header lists them."""
    return [
        ArchiveRecord(
            id=a.id,
            key=a.key,
            size=a.size,
            sha256=a.sha256,
            layers=a.layers,
            raw_size=a.raw_size,
            checksum=a.checksum,
            storage_class=a.storage_class,
            index=a.index,
            count=a.count,
            files=a.files,
            bytes=a.bytes,
        )
        for a in archives
        if a.state == "uploaded"
    ]


def write(
    root: Path,
    staging: Path,
    s: SessionState,
    entries: Iterable[ManifestEntry],
    recipients: tuple[str, ...],
    archives: list[ArchiveRecord],
) -> Written:
    """Write `s`'s manifest: the state dir's copy under its final name (fsynced,
    so that a recorded `CatalogStored` always finds it) and, when encrypted,
    the vault's copy in staging. One pass over `entries`."""
    catalog = root / CATALOG_DIR
    private_dir(catalog)
    final = local_path(root, s.id)
    tmp = final.with_name(final.name + ".partial")
    tmp.unlink(missing_ok=True)
    header = Header(
        FORMAT_VERSION, s.id, s.dataset, s.paths, time.time(), base=s.base, opened=s.opened_at,
        vault=s.vault, archive_size=s.archive_size, compression=s.compression,
        exclude=s.exclude, recipients=s.recipients, always_compress=s.always_compress,
        never_compress=s.never_compress, ignore_inode=s.ignore_inode,
        ignore_ctime=s.ignore_ctime, archives=archives,
    )  # fmt: skip
    writers = [ManifestWriter(tmp, header)]
    staged = staging / f"{s.id}.mf.partial"
    if recipients:
        staged.unlink(missing_ok=True)
        writers.append(ManifestWriter(staged, header, recipients))
    files = data = 0
    try:
        for e in entries:
            for w in writers:
                w.add(e)
            if e.kind == "hardlink" or e.kind == "file":
                files += 1
                data += e.size if e.kind == "file" else 0
        results = [w.close() for w in writers]
    except BaseException:
        for w in writers:
            w.abort()
        raise
    os.replace(tmp, final)
    fsync_dir(catalog)
    local_sha = results[0][1]
    size, sha = results[-1]
    return Written(
        local_sha256=local_sha,
        staged=staged if recipients else final,
        size=size,
        sha256=sha,
        entries=writers[0].count,
        files=files,
        bytes=data,
    )
