"""Helpers to describe a real directory tree and compare two of them."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import trio

from eventbak.config import Compression
from eventbak.pipeline.coordinator import BackupRequest, Outcome
from eventbak.pipeline.scanner import normalize_roots
from eventbak.restore import RestoreReport, restore
from eventbak.runner import run_backup
from eventbak.statedir import StateDir
from eventbak.vaults import open_vault


def sha256_of(path: bytes) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def describe(root: bytes | Path, *, mtimes: bool = True) -> dict[bytes, tuple[object, ...]]:
    """Every entry below `root` (relative path -> kind, mode, mtime, content),
    hard links as groups; FIFOs, sockets and devices are left out (never stored)."""
    root_b = os.fsencode(root)
    out: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_b)
            st = os.lstat(full)
            mt = st.st_mtime_ns if mtimes else None
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(full), mt)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, mt)
            elif stat.S_ISREG(st.st_mode):
                first = inodes.setdefault((st.st_dev, st.st_ino), rel)
                out[rel] = ("file", mode, mt, st.st_size, sha256_of(full), first)
    # hard-link groups are compared by membership, not by which name came first
    groups: dict[bytes, list[bytes]] = {}
    for rel, d in out.items():
        if d[0] == "file":
            groups.setdefault(d[5], []).append(rel)  # type: ignore[arg-type]
    for members in groups.values():
        for rel in members:
            d = out[rel]
            out[rel] = (*d[:5], tuple(sorted(members)))
    return out


def backup(
    state_dir: Path,
    vault_dir: Path,
    paths: list[Path | bytes],
    archive_size: int = 128 * 1024 * 1024,
    compression: Compression | None = None,
    exclude: list[str] | None = None,
    *,
    full: bool = False,
    ignore_inode: bool = False,
    ignore_ctime: bool = False,
) -> Outcome:
    req = BackupRequest(
        dataset="test",
        paths=normalize_roots([os.fsencode(p) for p in paths]),
        vault_url=f"file://{vault_dir}",
        archive_size=archive_size,
        compression=compression or Compression("auto"),
        exclude=exclude or [],
        full=full,
        ignore_inode=ignore_inode,
        ignore_ctime=ignore_ctime,
    )
    sd = StateDir.open(state_dir)
    try:
        return trio.run(run_backup, sd, req, open_vault(req.vault_url), None)
    finally:
        sd.close()


def restore_all(
    state_dir: Path, to: Path, patterns: list[bytes] | None = None, session: str | None = None
) -> RestoreReport:
    from eventbak.statedir import read_state

    state, _ = read_state(state_dir)
    return restore(state, state_dir, patterns or [], to, session)


def check_manifest_is_the_tree(state_dir: Path, session: str, roots: list[Path]) -> int:
    """The session's point in time (its manifest, or built from the log) lists exactly the tree
    under `roots` as it is now: every path, kind, mode, mtime, ctime, inode,
    size, symlink target, and for files byte ranges that cover the file with no gap.
    Returns the number of entries."""
    import stat as st_

    from eventbak.catalog.build import entries_of
    from eventbak.restore import VaultResolver, manifest_from_vault
    from eventbak.statedir import read_state

    state, _ = read_state(state_dir)
    with VaultResolver(state) as vaults:  # older manifests are the vault's only
        from_vault = manifest_from_vault(vaults, None)
        entries = list(entries_of(state, state_dir, state.sessions[session], from_vault))
    want: dict[bytes, tuple[object, ...]] = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(os.fsencode(root)):
            for name in [b"", *dirs, *files]:
                p = os.path.join(dirpath, name) if name else dirpath
                s = os.lstat(p)
                if st_.S_ISDIR(s.st_mode):
                    kind = "dir"
                elif st_.S_ISLNK(s.st_mode):
                    kind = "symlink"
                elif st_.S_ISREG(s.st_mode):
                    kind = "file"
                else:
                    continue  # specials are skipped, not listed
                want[p] = (kind, st_.S_IMODE(s.st_mode), s.st_mtime_ns, s.st_ctime_ns,
                           s.st_ino, s.st_size if kind == "file" else 0,
                           os.readlink(p) if kind == "symlink" else b"")  # fmt: skip
    got: dict[bytes, tuple[object, ...]] = {}
    for e in entries:
        kind = "file" if e.kind == "hardlink" else e.kind
        target = e.target if kind == "symlink" else b""
        got[e.path] = (kind, e.mode, e.mtime_ns, e.ctime_ns, e.ino, e.size, target)
        if e.kind == "file":
            covered = 0
            for loc in e.where:
                assert loc.offset == covered, (e.path, e.where)
                covered += loc.length
            assert covered == e.size, (e.path, e.where)
    assert got == want
    return len(entries)
