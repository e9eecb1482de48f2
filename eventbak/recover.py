"""Disaster recovery: a state dir rebuilt from a vault alone.

After the machine (and its state dir) is lost, the vault still holds, for
every completed session, its manifest (`catalog/<session>.mf.zst[.age]`):
every entry of the point in time and where its bytes are, and in its header
what the session was and its archives (key, size, SHA-256, layers, the
checksum the vault confirmed). `recover` reads those, in a hot class only
(no thaw: S3 stores catalog objects as STANDARD whatever the archives'
class), and writes a new event log that tells the same story as the lost
one in short: each session opened, its archives sealed and uploaded, its
catalog stored, completed. Each manifest is copied into the state dir
(catalog/store.py), so `restore` works as before, from the vault.

A catalog read from a vault is untrusted input. The manifest reader refuses
paths that are not absolute, hold `..` or empty components, or come out of
walk order; here, every archive an entry names must be one that a catalog
of the vault lists, and keys must be where eventbak puts archives. Restore
then checks every destination again (no write through a symlink, nothing
outside the target).

What the rebuilt log cannot tell: member lists per archive (`inspect
--members` shows none; restore does not need them), skipped and changed
entries, interruptions. Sessions that never completed left no catalog and
are not recovered; their archives stay in the vault, unreferenced.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from eventbak.archive.age import Identities
from eventbak.catalog import marker, store
from eventbak.catalog.manifest import ArchiveRecord, ManifestEntry, ManifestError, ManifestReader
from eventbak.core import events as ev
from eventbak.errors import EventbakError, KeyProblem, UsageError
from eventbak.statedir import StateDir, log_path
from eventbak.vaults import Vault
from eventbak.vaults.base import Tier
from eventbak.vaults.glacier import InventoryEntry

CATALOG = "catalog/"
_SESSION = r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4,32}"
_NAME = re.compile(rf"^catalog/(?P<session>{_SESSION})\.mf(?P<suffix>(\.zst)?(\.age)?)$")
_ARCHIVE_ID = re.compile(rf"^{_SESSION}-[0-9]{{6}}$")
_SUFFIX_LAYERS = {"": [], ".zst": ["zstd"], ".age": ["age"], ".zst.age": ["zstd", "age"]}


@dataclass
class Recovered:
    vault: str
    vault_id: str
    sessions: list[str] = field(default_factory=list)
    archives: int = 0
    entries: int = 0
    warnings: list[str] = field(default_factory=list)
    #: catalogs left out, each with why (damaged, not eventbak's, ...)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Catalog:
    session: str
    key: str
    layers: list[str]
    archive_id: str = ""  # Glacier: the archive that holds it


@runtime_checkable
class _GlacierLike(Protocol):
    """A vault that lists itself by an inventory job and is read by
    retrieval jobs (vaults/glacier.py)."""

    ref: str

    def start_inventory(self) -> str: ...

    def read_inventory(self, job_id: str) -> list[InventoryEntry]: ...

    def start_retrieval(self, archive_id: str, tier: Tier) -> str: ...

    def job_status(self, job_id: str) -> str: ...

    def open_job_output(self, job_id: str) -> BinaryIO: ...


@dataclass
class Waiting:
    """How to wait for Glacier's jobs (hours on AWS, seconds on moto)."""

    tier: Tier = "Standard"
    poll: float = 60.0
    sleep: Callable[[float], None] = time.sleep


def _named(key: str, archive_id: str = "") -> _Catalog | None:
    m = _NAME.match(key)
    if m is None:
        return None
    return _Catalog(m["session"], key, _SUFFIX_LAYERS[m["suffix"]], archive_id)


def catalogs(vault: Vault) -> tuple[list[_Catalog], list[str]]:
    """The vault's catalog objects and warnings for objects under catalog/
    that are not eventbak's."""
    found: list[_Catalog] = []
    warnings: list[str] = []
    for key in vault.list_small(CATALOG):
        c = _named(key)
        if c is None:
            warnings.append(f"left alone: {key} (not a catalog name of eventbak's)")
        else:
            found.append(c)
    return found, warnings


def _wait_for(vault: _GlacierLike, job: str, what: str, waiting: Waiting) -> None:
    while True:
        status = vault.job_status(job)
        if status == "Succeeded":
            return
        if status != "InProgress":
            raise EventbakError(f"vault {vault.ref}: the {what} job {job} failed")
        waiting.sleep(waiting.poll)


def glacier_catalogs(
    vault: _GlacierLike, waiting: Waiting, say: Callable[[str], None]
) -> tuple[list[_Catalog], list[str]]:
    """A Glacier vault's catalog archives, from an inventory job (waited for:
    hours on AWS; an interrupted recover starts a new one), each named by
    its description (the latest of one key wins: a session may store its
    catalog again after a crash)."""
    job = vault.start_inventory()
    say(f"inventory job {job} started in {vault.ref}; waiting for it (hours on AWS)")
    _wait_for(vault, job, "inventory", waiting)
    latest: dict[str, InventoryEntry] = {}
    for e in vault.read_inventory(job):
        newer = e.key not in latest or e.created >= latest[e.key].created
        if e.kind == "catalog" and e.key is not None and newer:
            latest[e.key] = e
    found: list[_Catalog] = []
    warnings: list[str] = []
    for key, e in latest.items():
        c = _named(key, e.archive_id)
        if c is None:
            warnings.append(f"left alone: archive {e.archive_id} ({key!r} is not a catalog name)")
        else:
            found.append(c)
    return found, warnings


def recover(
    root: Path,
    vault: Vault,
    identities: Identities | None,
    say: Callable[[str], None] = lambda line: None,
    waiting: Waiting | None = None,
) -> Recovered:
    """Rebuild the state dir `root` (with no event log yet) from `vault`;
    for a Glacier vault, by an inventory job and a retrieval job per catalog
    (`waiting`)."""
    if log_path(root).exists() and log_path(root).stat().st_size > 8:
        raise UsageError(
            f"state dir {root} already holds an event log: recover into an empty state dir"
        )
    # read only: no prepare (it would create a local vault's directories, or
    # a Glacier vault); a vault that is not there lists no catalog
    glacier = vault if isinstance(vault, _GlacierLike) else None
    waiting = waiting or Waiting()
    if glacier is not None:
        mark = None
        found, warnings = glacier_catalogs(glacier, waiting, say)
    else:
        mark = marker.read(vault)
        found, warnings = catalogs(vault)
    if not found:
        raise EventbakError(
            f"vault {vault.ref} holds no catalog: nothing to recover (only completed sessions "
            "store one, since eventbak 0.3)"
        )
    encrypted = [c for c in found if "age" in c.layers]
    if encrypted and identities is None:
        raise KeyProblem(
            f"{len(encrypted)} catalog{'s' if len(encrypted) > 1 else ''} in vault {vault.ref} "
            f"{'are' if len(encrypted) > 1 else 'is'} encrypted (first: {encrypted[0].key}): "
            "give --identity FILE or set identity_file in [encryption]"
        )
    out = Recovered(vault.ref, mark.vault_id if mark else "", warnings=warnings)
    if mark is None and glacier is None:
        out.warnings.append(
            f"vault {vault.ref} has no {marker.MARKER} (written by backups since 0.3)"
        )
    sd = StateDir.open(root)
    fetched: list[_Fetched] = []
    try:
        if glacier is not None:  # every retrieval at once, then each waited for
            jobs = {c.key: glacier.start_retrieval(c.archive_id, waiting.tier) for c in found}
            say(f"{len(jobs)} catalog retrieval jobs started ({waiting.tier} tier)")

            def read(c: _Catalog) -> bytes | None:
                assert glacier is not None
                _wait_for(glacier, jobs[c.key], f"retrieval of {c.key}", waiting)
                with glacier.open_job_output(jobs[c.key]) as stream:
                    return stream.read()

        else:

            def read(c: _Catalog) -> bytes | None:
                return vault.get_small(c.key)

        for c in found:
            try:
                fetched.append(_fetch(sd.staging, vault, c, identities, read))
            except ManifestError as exc:
                out.skipped.append(str(exc))
        known: dict[str, str] = {}  # archive id -> its session
        try:
            for f in _in_order(fetched):
                # a catalog that does not check out is left out, whole, before
                # anything of it is recorded: the others are still points in time
                try:
                    _check_one(vault, f, identities, known)
                except ManifestError as exc:
                    out.skipped.append(str(exc))
                    continue
                _recover_one(sd, vault, f, identities, known, out)
                say(f"session {f.catalog.session}: {out.entries} entries so far")
            if not out.sessions:
                raise EventbakError(f"nothing recovered: {out.skipped[0]}")
        except BaseException:
            # all or nothing: the log stays empty (its events were only
            # buffered), and so does the state dir's catalog
            for sid in out.sessions:
                store.local_path(root, sid).unlink(missing_ok=True)
            raise
        sd.commit()
    finally:
        for f in fetched:
            f.path.unlink(missing_ok=True)
        sd.close()
    return out


@dataclass(frozen=True)
class _Fetched:
    catalog: _Catalog
    path: Path  # its bytes, in staging
    size: int
    sha256: str
    opened: float
    base: str


def _open(
    f: _Fetched | _Catalog, source: BinaryIO, identities: Identities | None, name: str
) -> ManifestReader:
    c = f.catalog if isinstance(f, _Fetched) else f
    try:
        return ManifestReader(source, c.layers, identities, name=name)
    except ManifestError as exc:
        if "age" in c.layers and identities is not None:
            raise KeyProblem(
                f"{name} cannot be decrypted with identity file {identities.path} ({exc})"
            ) from None
        raise


def _fetch(
    staging: Path,
    vault: Vault,
    c: _Catalog,
    identities: Identities | None,
    read: Callable[[_Catalog], bytes | None],
) -> _Fetched:
    """The catalog's bytes into staging (not memory: a catalog grows with its
    files), and what orders it: when its session opened, what it builds on."""
    data = read(c)
    if data is None:
        raise EventbakError(f"vault {vault.ref}: {c.key} was listed but cannot be read")
    path = staging / f"recover-{c.session}.mf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as out:
        out.write(data)
    name = f"catalog {c.key} in vault {vault.ref}"
    with open(path, "rb") as source:
        reader = _open(c, source, identities, name)
        h = reader.header
        reader.close()
    if h.session != c.session:
        raise ManifestError(f"{name} says it is of session {h.session}")
    sha = hashlib.sha256(data).hexdigest()
    return _Fetched(c, path, len(data), sha, h.opened or h.created, h.base)


def _in_order(fetched: list[_Fetched]) -> Iterator[_Fetched]:
    """Oldest first (ids of one second do not sort by time), and never a
    session before the one it builds on."""
    pending = sorted(fetched, key=lambda f: (f.opened, f.catalog.session))
    present = {f.catalog.session for f in fetched}
    done: set[str] = set()
    while pending:
        i = next(
            (i for i, f in enumerate(pending) if f.base in done or f.base not in present),
            0,  # a cycle (a forged catalog): go on in time order; checks refuse it later
        )
        f = pending.pop(i)
        done.add(f.catalog.session)
        yield f


def _check_one(
    vault: Vault, f: _Fetched, identities: Identities | None, known: dict[str, str]
) -> None:
    """Read the whole catalog once, checking it (ManifestError if it does not
    check out), before anything of it is recorded."""
    c = f.catalog
    name = f"catalog {c.key} in vault {vault.ref}"
    with open(f.path, "rb") as source:
        reader = _open(f, source, identities, name)
        ours = _archives(vault, c, reader, known)
        for _ in _checked(reader, {**known, **dict.fromkeys(ours, c.session)}, name):
            pass


def _archives(
    vault: Vault, c: _Catalog, reader: ManifestReader, known: dict[str, str]
) -> dict[str, ArchiveRecord]:
    """The catalog's own archives, by id, checked (none listed by another)."""
    ours: dict[str, ArchiveRecord] = {}
    for rec in reader.header.archives:
        if not _ARCHIVE_ID.match(rec.id) or rec.id in ours or rec.id in known:
            raise ManifestError(f"{reader.name} lists a bad or repeated archive id {rec.id!r}")
        if not (rec.key.startswith(f"archives/{c.session}/") or vault.ref.startswith("glacier:")):
            raise ManifestError(
                f"{reader.name} puts archive {rec.id} at an unexpected key {rec.key!r}"
            )
        ours[rec.id] = rec
    return ours


def _recover_one(
    sd: StateDir,
    vault: Vault,
    f: _Fetched,
    identities: Identities | None,
    known: dict[str, str],
    out: Recovered,
) -> None:
    c = f.catalog
    name = f"catalog {c.key} in vault {vault.ref}"
    with open(f.path, "rb") as source:
        _record_session(sd, vault, f, _open(f, source, identities, name), known, out)


def _record_session(
    sd: StateDir,
    vault: Vault,
    f: _Fetched,
    reader: ManifestReader,
    known: dict[str, str],
    out: Recovered,
) -> None:
    c = f.catalog
    h = reader.header
    name = reader.name
    ours = _archives(vault, c, reader, known)
    seen = {**known, **dict.fromkeys(ours, c.session)}
    s_entries = _checked(reader, seen, name)
    base = h.base if h.base in out.sessions else ""  # a base the vault lost: a full one
    at = h.opened or h.created
    sd.record(
        ev.SessionOpened(
            at=at, session=c.session, dataset=h.dataset, vault=vault.ref, paths=h.paths,
            archive_size=h.archive_size, compression=h.compression or "auto",
            exclude=h.exclude, vault_url=vault.url, recipients=h.recipients,
            always_compress=h.always_compress, never_compress=h.never_compress, base=base,
            ignore_inode=h.ignore_inode, ignore_ctime=h.ignore_ctime,
        )
    )  # fmt: skip
    for rec in sorted(ours.values(), key=lambda r: r.index):
        sd.record(ev.ArchiveStarted(at=at, session=c.session, archive=rec.id, index=rec.index))
        sd.record(
            ev.ArchiveSealed(
                at=at, archive=rec.id, staged="", size=rec.size, raw_size=rec.raw_size,
                sha256=rec.sha256, compression=h.compression or "auto", members=[],
                count=rec.count, files=rec.files, bytes=rec.bytes, layers=rec.layers,
            )
        )  # fmt: skip
        sd.record(ev.UploadStarted(at=at, archive=rec.id, vault=vault.ref, key=rec.key))
        sd.record(
            ev.ArchiveUploaded(
                at=at, archive=rec.id, vault=vault.ref, key=rec.key, size=rec.size,
                sha256=rec.sha256, checksum=rec.checksum, storage_class=rec.storage_class,
            )
        )  # fmt: skip
    s = sd.state.sessions[c.session]
    w = store.write(sd.root, sd.staging, s, s_entries, (), list(ours.values()))
    sd.record(
        ev.CatalogStored(
            at=h.created or at, session=c.session, key=c.key, size=f.size, sha256=f.sha256,
            entries=w.entries, layers=c.layers, files=w.files, bytes=w.bytes,
            local_sha256=w.local_sha256,
        )
    )  # fmt: skip
    sd.record(
        ev.SessionCompleted(
            at=h.created or at, session=c.session, files=s.files, bytes=s.bytes,
            archives=len(ours), skipped=0, changed=0,
        )
    )  # fmt: skip
    known.update(dict.fromkeys(ours, c.session))
    out.sessions.append(c.session)
    out.archives += len(ours)
    out.entries += w.entries


def _checked(
    reader: ManifestReader, archives: dict[str, str], name: str
) -> Iterator[ManifestEntry]:
    """The entries, each naming only archives some catalog of the vault lists."""
    for e in reader:
        for loc in e.where:
            if loc.archive not in archives:
                raise ManifestError(
                    f"{name}: {ev.show_path(e.path)} is in archive {loc.archive}, which no "
                    "catalog of the vault lists"
                )
        yield e
