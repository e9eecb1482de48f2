"""Restore: plan from the catalog (the folded log), thaw, fetch, verify, extract.

A restore picks one session (the latest completed one unless `--session`),
selects the members matching the given paths or globs, and extracts them
archive by archive. Each entry lands at its original absolute path below the
target directory. Metadata comes from the catalog (nanosecond mtimes, modes,
and owners when running as root); directory mtimes are set last, deepest
first.

The steps, in order:

* **plan** (`plan_restore`): which members of which archives; only the
  archives that hold the selected paths are touched at all.
* **vaults**: each archive's vault identity (`ref`) is turned into an opened
  vault by the caller's `vault_for` (the CLI's `VaultResolver`: `--vault`,
  then the config, then the log's latest URL for that vault), once per vault.
* **thaw** (`thaw`): S3 objects in a frozen class (GLACIER, DEEP_ARCHIVE) get
  a RestoreObject and are polled with `head` until readable; Glacier vault
  archives get an archive-retrieval job each, polled with `job_status`. The
  decisions are pure (`thaw_action`, `job_action`) so that a resumable
  restore job can reuse them with its own log.
* **fetch and verify**: each archive is read from the vault exactly once.
  The bytes are hashed (SHA-256, and counted) as they stream into zstd and
  tar; once tar has given what the plan needs, the rest of the object is read
  to its end, still hashing, and size and digest are compared with the log.
* **extract**: files, symlinks and split files' segments are written under
  temporary names in their destination directory (`.NAME.eventbak-TOKEN-N`,
  O_EXCL | O_NOFOLLOW, 0600), metadata applied to the temporary file, and
  renamed to their final names only after their archive verified. A file
  split across archives collects its segments in one temporary file, renamed
  once the archive holding its last segment verified.

What a failure leaves: a damaged or unreadable archive stops the restore with
one line naming it ("archive ID in VAULT is damaged: sha256 X, expected Y",
or "... cannot be read: ..."). The archives before it are restored (their
files are under their final names); every temporary file is removed, so
nothing of the failed archive, and no split file that was still being joined,
looks restored. Directories created for the plan stay: an empty directory is
not data. With `overwrite`, an existing file is replaced by a rename, so it
is either the old file or the restored one, never half of either. Any other
failure (a full disk, a directory in the way of a file, Ctrl-C) also removes
every temporary file; files already renamed (verified bytes) stay. Only a
kill that allows no clean-up (SIGKILL, power loss) can leave temporary files:
hidden names ending in `.eventbak-TOKEN-N`, never a final name.

Safety: every destination is checked to stay below the target directory
without passing through a symlink; without `overwrite` existing files are
refused before anything is read, and a file that appears at a final name
meanwhile is not replaced either (renameat2 with RENAME_NOREPLACE, which
fails if the final name exists; where the system or filesystem lacks it, a
check right before the rename). Paths come from the catalog only: a tar
member's name is used to find the member, never as a destination.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import os
import re
import secrets
import stat
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol, runtime_checkable

import msgspec
import zstandard

from eventbak import archive as ar
from eventbak.archive.age import AgeError, Decrypting, Identities
from eventbak.catalog.build import FromVault, entries_of
from eventbak.catalog.manifest import ManifestEntry, ManifestError, ManifestReader
from eventbak.core import events as ev
from eventbak.core.state import ArchiveState, SessionState, State
from eventbak.errors import EventbakError, KeyProblem, UsageError, VaultError, VaultUnreachable
from eventbak.vaults import Vault, open_vault, parse_vault
from eventbak.vaults.base import Held, Tier
from eventbak.vaults.url import FROZEN_CLASSES

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
    #: symlinks made from the catalog alone (manifests written before a
    #: symlink's entry named its archive), after the archives
    symlinks: list[Item] = field(default_factory=list)


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


def plan_restore(
    state: State,
    root: Path,
    patterns: list[bytes],
    session: str | None,
    from_vault: FromVault | None = None,
) -> Plan:
    """What to extract from which archive. Each chosen session's point in time
    is read as a stream (catalog/build.py `entries_of`: its manifest, or the
    log's member lists over its base); the plan holds only the selected
    entries (and, for hard links, where the files' bytes are)."""
    sessions = choose_sessions(state, session)
    match = _pattern_matcher(patterns)
    plan = Plan(sessions=sessions, by_archive=[], links=[], dirs=[], count=0, size=0)
    files_by_path: dict[bytes, _Pieces] = {}
    selected: dict[bytes, _Pieces] = {}
    for s in sessions:
        for arch in state.archives_of(s.id):
            if arch.state not in ("uploaded", "discarded"):
                plan.missing += arch.count
        try:
            # a later session (of another dataset) holding the same path wins
            for e in entries_of(state, root, s, from_vault):
                pieces = _pieces(state, s, e)
                if e.kind == "file":
                    files_by_path[e.path] = pieces
                if match(e.path):
                    selected[e.path] = pieces
        except ManifestError as exc:
            raise EventbakError(str(exc)) from None
    if not selected:
        ids = ", ".join(s.id for s in sessions)
        raise EventbakError(
            f"nothing to restore: no backed-up entry of session {ids} matches "
            + (" ".join(ev.show_path(p) for p in patterns) if patterns else "anything")
        )
    work: dict[str, dict[bytes, list[Item]]] = {}
    archives: dict[str, ArchiveState] = {}

    def add(a: ArchiveState | None, m: ev.Member, dest_path: bytes) -> None:
        assert a is not None  # files and symlinks have their archive
        stored = m.source or m.path  # a file found by dedup is stored under another name
        name = ar.member_name(stored, m.kind, m.offset if m.segmented else None).rstrip(b"/")
        archives[a.id] = a
        work.setdefault(a.id, {}).setdefault(name, []).append(Item(m, dest_path))

    # links whose first link is not restored: the first of them gets the data,
    # the others link to it (one tar member is read once)
    stand_in: dict[bytes, bytes] = {}
    for path, found in selected.items():
        for a, m in found:
            dest = path.lstrip(b"/")
            if m.kind == "dir":
                plan.dirs.append(Item(m, dest))
                continue
            if m.kind == "symlink" and a is None:
                plan.symlinks.append(Item(m, dest))
                plan.count += 1
                continue
            if m.kind == "hardlink":
                if m.target in selected:
                    plan.links.append(Item(m, dest))
                elif m.target in stand_in:
                    linked = msgspec.structs.replace(m, target=stand_in[m.target])
                    plan.links.append(Item(linked, dest))
                elif m.target in files_by_path:
                    stand_in[m.target] = path
                    for ta, tm in files_by_path[m.target]:
                        add(ta, tm, dest)
                plan.count += 1
                continue
            add(a, m, dest)
            if m.kind != "file" or m.offset == 0:
                plan.count += 1
            if m.kind == "file":
                plan.size += m.length
    order = {aid: i for i, aid in enumerate(state.archives)}  # sealed in this order
    plan.by_archive = [(archives[aid], work[aid]) for aid in sorted(work, key=order.__getitem__)]
    if plan.missing:
        plan.warnings.append(f"{plan.missing} entries are in archives not uploaded yet")
    return plan


#: Where a path's bytes are: the archive and member of each piece (a split
#: file's segments in order; one for a symlink; no archive for a directory,
#: a hard link, or a symlink whose entry names none: made from the catalog).
_Pieces = list[tuple[ArchiveState | None, ev.Member]]


def _pieces(state: State, s: SessionState, e: ManifestEntry) -> _Pieces:
    """The pieces of `e` in uploaded archives (a piece in an archive that is
    not, as in a session still running, is left out: a split file missing a
    segment is not restored, with a warning)."""

    def member(offset: int = 0, length: int = 0) -> ev.Member:
        return ev.Member(
            e.path, e.kind, e.mode, e.mtime_ns, e.size, e.uid, e.gid, e.target, offset, length,
            zstd=e.zstd, ctime_ns=e.ctime_ns, ino=e.ino,
        )  # fmt: skip

    if e.kind in ("dir", "hardlink") or (e.kind == "symlink" and not e.where):
        return [(None, member())]
    if not e.where:
        raise ManifestError(
            f"the point in time of session {s.id} lists {ev.show_path(e.path)} "
            "without the archive that holds it"
        )
    out: _Pieces = []
    for loc in e.where:
        a = state.archives.get(loc.archive)
        if a is None:
            raise ManifestError(
                f"the point in time of session {s.id} puts {ev.show_path(e.path)} in archive "
                f"{loc.archive}, which the log does not know"
            )
        if a.state == "uploaded":
            m = member(loc.offset, loc.length)
            out.append((a, msgspec.structs.replace(m, source=loc.path) if loc.path else m))
    return out


def manifest_from_vault(opener: VaultFor, identities: Identities | None) -> FromVault:
    """Reads a session's manifest from its vault (the state dir keeps only the
    latest of each dataset), checked against its record before it is read."""

    def read(s: SessionState) -> Iterator[ManifestEntry]:
        c = s.catalog
        assert c is not None
        name = f"manifest of session {s.id} ({c.key} in {s.vault})"
        if "age" in c.layers and identities is None:
            raise KeyProblem(
                f"the {name} is encrypted: give --identity FILE or set identity_file in "
                "[encryption]"
            )
        data = opener(s.vault).get_small(c.key)
        if data is None:
            raise ManifestError(
                f"the {name} is neither in the state dir nor readable in its vault"
            )
        got = hashlib.sha256(data).hexdigest()
        if got != c.sha256:
            raise ManifestError(f"the {name} is damaged: sha256 {got}, expected {c.sha256}")
        yield from ManifestReader(io.BytesIO(data), c.layers, identities, name=name)

    return read


# -- vaults ---------------------------------------------------------------------

#: An archive's vault identity (`ArchiveState.vault`) -> that vault, opened.
VaultFor = Callable[[str], Vault]


class VaultResolver:
    """Opens the vault of each identity (`ref`) once, from the most specific
    URL known for it: `--vault URL` (which must name that very vault), else a
    configured vault with that ref (with its table's option keys), else the
    URL of the latest run of a session in that vault (the log keeps its
    options, such as `endpoint_url`), else the ref itself. `close` closes what
    it opened."""

    def __init__(
        self,
        state: State,
        override: str | None = None,
        configured: Iterable[tuple[str, Mapping[str, object]]] = (),
        opener: Callable[[str, Mapping[str, object]], Vault] = open_vault,
    ) -> None:
        self._state = state
        self._override = override
        self._override_ref = parse_vault(override).ref if override else ""
        self._configured = list(configured)
        self._opener = opener
        self._opened: dict[str, Vault] = {}

    def url_for(self, ref: str) -> tuple[str, Mapping[str, object]]:
        if self._override:
            if self._override_ref != ref:
                raise UsageError(
                    f"--vault {self._override} is the vault {self._override_ref}, "
                    f"but the archives to restore are in {ref}"
                )
            return self._override, {}
        for url, options in self._configured:
            if parse_vault(url, options).ref == ref:
                return url, options
        runs = [s for s in self._state.sessions.values() if s.vault == ref and s.vault_url]
        if runs:
            return max(runs, key=lambda s: s.updated_at).vault_url, {}
        return ref, {}

    def __call__(self, ref: str) -> Vault:
        vault = self._opened.get(ref)
        if vault is None:
            url, options = self.url_for(ref)
            vault = self._opened[ref] = self._opener(url, options)
        return vault

    def close(self) -> None:
        opened, self._opened = self._opened, {}
        for vault in opened.values():
            vault.close()

    def __enter__(self) -> VaultResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- thaw -----------------------------------------------------------------------


@runtime_checkable
class RetrievalVault(Protocol):
    """A vault whose archives are read through retrieval jobs (the Glacier
    vault API): start one per archive, poll it, read its output once."""

    def start_retrieval(self, archive_id: str, tier: Tier) -> str: ...

    def job_status(self, job_id: str) -> str: ...

    def open_job_output(self, job_id: str) -> BinaryIO: ...


ThawAction = Literal["request", "wait", "read", "missing"]
JobAction = Literal["wait", "read", "failed"]


def thaw_action(held: Held | None) -> ThawAction:
    """What to do next about an object in a frozen class, given its `head`."""
    if held is None:
        return "missing"
    if held.thaw == "frozen":
        return "request"
    if held.thaw == "thawing":
        return "wait"
    return "read"


def job_action(status: str) -> JobAction:
    """What to do next about a retrieval job, given its status."""
    if status == "Succeeded":
        return "read"
    if status == "InProgress":
        return "wait"
    return "failed"


def _is_glacier(a: ArchiveState) -> bool:
    return a.vault.startswith("glacier://")


@dataclass
class Fetch:
    """How one archive is read: straight from its vault (`open`), after an S3
    thaw (`thaw`), or from a retrieval job's output (`job`)."""

    archive: ArchiveState
    vault: Vault
    how: Literal["open", "thaw", "job"] = "open"
    job_id: str = ""
    ready: bool = True
    requests: int = 0  # thaws asked for (again if the object froze again)

    def open(self) -> BinaryIO:
        if self.how == "job":
            assert isinstance(self.vault, RetrievalVault)
            return self.vault.open_job_output(self.job_id)
        return self.vault.open(self.archive.key)


def fetches_for(archives: list[ArchiveState], vaults: Mapping[str, Vault]) -> list[Fetch]:
    out = []
    for a in archives:
        vault = vaults[a.vault]
        if _is_glacier(a):
            if not isinstance(vault, RetrievalVault):
                raise VaultError(f"vault {a.vault} cannot start retrieval jobs to read archives")
            out.append(Fetch(a, vault, "job", ready=False))
        elif a.storage_class in FROZEN_CLASSES:
            out.append(Fetch(a, vault, "thaw", ready=False))
        else:
            out.append(Fetch(a, vault))
    return out


TIERS: dict[str, Tier] = {"standard": "Standard", "bulk": "Bulk", "expedited": "Expedited"}


def parse_tier(name: str) -> Tier:
    try:
        return TIERS[name.lower()]
    except KeyError:
        raise UsageError(f"--tier {name}: use Standard, Bulk or Expedited") from None


def check_tier(archives: list[ArchiveState], tier: Tier) -> None:
    """Deep Archive thaws with Standard or Bulk only: refuse before asking."""
    if tier != "Expedited":
        return
    deep = [a for a in archives if a.storage_class == "DEEP_ARCHIVE" and not _is_glacier(a)]
    if deep:
        raise UsageError(
            f"--tier Expedited: {len(deep)} of the archives to restore are in DEEP_ARCHIVE "
            f"(first: {deep[0].id}), which thaws with --tier Standard or Bulk only"
        )


@dataclass(frozen=True)
class ThawOptions:
    tier: Tier = "Standard"
    days: int = 7  # how long S3 keeps the readable copy
    poll: float = 60.0  # seconds between rounds of `head` / `job_status`
    wait: bool = True


#: A progress line while nothing changes, at most this often (seconds).
_HEARTBEAT = 600.0
#: An object that is frozen again after this many requests is an error.
_MAX_REQUESTS = 3
#: Rounds of polling in a row that may fail to reach the vault.
_UNREACHABLE_ROUNDS = 5


def thaw(
    fetches: list[Fetch],
    opts: ThawOptions,
    report: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Make the archives of `fetches` readable: ask S3 to thaw what is frozen
    (what already thaws is waited for, not asked again), start a retrieval
    job per Glacier archive, say what was asked, then poll every `opts.poll`
    seconds until all are ready. Returns how many are not ready: 0, unless
    `opts.wait` is off and something is still cold."""
    cold = [f for f in fetches if f.how != "open"]
    if not cold:
        return 0
    requested: dict[str, list[Fetch]] = {}
    thawing = 0
    for f in cold:
        a = f.archive
        if f.how == "job":
            assert isinstance(f.vault, RetrievalVault)
            f.job_id = f.vault.start_retrieval(a.key, opts.tier)
            report(f"started Glacier retrieval job {f.job_id} ({opts.tier}) for archive {a.id}")
            continue
        action = _head(f)
        if action == "request":
            f.vault.request_thaw(a.key, opts.tier, opts.days)
            f.requests += 1
            requested.setdefault(a.vault, []).append(f)
        elif action == "wait":
            thawing += 1
        else:
            f.ready = True
    for ref, asked in requested.items():
        size = _size_text(sum(f.archive.size for f in asked))
        report(
            f"requested a thaw of {len(asked)} archive{_s(len(asked))} ({size}) in {ref}: "
            f"tier {opts.tier}, readable for {opts.days} day{_s(opts.days)}"
        )
    if thawing:
        report(f"{thawing} archive{_s(thawing)} thawing already (requested before)")
    pending = [f for f in cold if not f.ready]
    if not pending:
        return 0
    if not opts.wait:
        report(
            f"not waiting (--no-wait): {len(pending)} of {len(cold)} archives are not "
            "readable yet; run the same restore again later"
        )
        if any(f.how == "job" for f in pending):
            report(
                "note: retrieval jobs are not recorded yet, so running restore again "
                "starts (and pays for) new jobs"
            )
        return len(pending)
    report(f"waiting for {len(pending)} of {len(cold)} archives (checking every {opts.poll:g} s)")
    started = last = clock()
    shown = len(cold) - len(pending)
    failing = 0
    while pending:
        sleep(opts.poll)
        try:
            for f in pending:
                _poll(f, opts, report)
            failing = 0
        except VaultUnreachable as exc:
            # a wait of hours outlives a network hiccup; what was asked stays asked
            failing += 1
            if failing > _UNREACHABLE_ROUNDS:
                raise
            report(f"cannot check on the thaws now (will try again): {exc}")
        pending = [f for f in pending if not f.ready]
        ready, now = len(cold) - len(pending), clock()
        if ready != shown or now - last >= _HEARTBEAT:
            report(f"{ready} of {len(cold)} archives ready ({_duration(now - started)})")
            shown, last = ready, now
    return 0


def _head(f: Fetch) -> ThawAction:
    action = thaw_action(f.vault.head(f.archive.key))
    if action == "missing":
        raise VaultError(f"archive {f.archive.id} is missing from {f.archive.vault}")
    return action


def _poll(f: Fetch, opts: ThawOptions, report: Callable[[str], None]) -> None:
    a = f.archive
    if f.how == "job":
        assert isinstance(f.vault, RetrievalVault)
        job = job_action(f.vault.job_status(f.job_id))
        if job == "failed":
            raise VaultError(f"Glacier retrieval job {f.job_id} for archive {a.id} failed")
        f.ready = job == "read"
        return
    action = _head(f)
    if action == "request":  # the thaw we asked for is gone (expired, or lost)
        if f.requests >= _MAX_REQUESTS:
            raise VaultError(
                f"archive {a.id} in {a.vault} is still frozen after {f.requests} thaw requests"
            )
        f.vault.request_thaw(a.key, opts.tier, opts.days)
        f.requests += 1
        report(f"archive {a.id} is frozen again: requested another thaw")
    f.ready = action == "read"


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _size_text(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# -- fetch and verify -------------------------------------------------------------

#: How much of an object is read at a time once tar has what it needs.
_DRAIN = 4 * _CHUNK


class _Verifier(io.RawIOBase):
    """The one read of an archive: every byte that the decoder takes from the
    vault is counted and hashed on the way (hashing releases the GIL: the
    writer threads go on meanwhile; a hashing thread of its own measured no
    faster); `finish` reads the rest of the object, which the decoder did not
    need, the same way."""

    def __init__(self, source: BinaryIO, a: ArchiveState) -> None:
        super().__init__()
        self._source = source
        self._archive = a
        self._sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Without the copy of `readinto` (zstd reads this way)."""
        if size is None or size < 0:
            return b"".join(iter(partial(self._read, _DRAIN), b""))
        return self._read(size)

    def _read(self, n: int) -> bytes:
        try:
            data = self._source.read(n)
        except OSError as exc:
            a = self._archive
            raise VaultError(
                f"archive {a.id} in {a.vault} cannot be read: {exc.strerror or exc}"
            ) from None
        if data:
            self.count += len(data)
            self._sha.update(data)
        return data

    def finish(self) -> tuple[int, str]:
        """(bytes, hex SHA-256) of the whole object."""
        while self._read(_DRAIN):
            pass
        return self.count, self._sha.hexdigest()


class ArchiveDamaged(VaultError):
    """One archive's bytes are not what the log says, or do not decode: its
    files are left out, the other archives are restored."""


class _BadMember(Exception):
    """The tar stream disagrees with the catalog (a member ends early, or has
    another size); the digest says next whether the archive is damaged."""


def _read_archive(
    f: Fetch,
    wanted: dict[bytes, list[Item]],
    ex: _Extractor,
    writers: _Writers,
    identities: Identities | None = None,
) -> None:
    """Extract the wanted members of one archive to temporary names while
    reading it once, then check its size and SHA-256 (VaultError if wrong).
    Decoding problems are reported only once the digest is known: a damaged
    archive is called damaged, whatever the decoder made of it."""
    a = f.archive
    source = f.open()
    problem = ""
    left = sum(len(items) for items in wanted.values())
    try:
        check = _Verifier(source, a)
        try:
            left = _extract(a, check, wanted, ex, writers, left, identities)
        except (tarfile.TarError, zstandard.ZstdError, EOFError, _BadMember, AgeError) as exc:
            problem = str(exc) or type(exc).__name__
        size, digest = check.finish()
    finally:
        source.close()
    if digest != a.sha256 or size != a.size:
        sizes = f" ({size} bytes, expected {a.size})" if size != a.size else ""
        raise ArchiveDamaged(
            f"archive {a.id} in {a.vault} is damaged: sha256 {digest}, expected {a.sha256}{sizes}"
        )
    if problem:
        raise ArchiveDamaged(f"archive {a.id} in {a.vault} cannot be read: {problem}")
    if left:
        raise ArchiveDamaged(f"archive {a.id} in {a.vault} lacks {left} members its catalog lists")


def _extract(
    a: ArchiveState,
    source: _Verifier,
    wanted: dict[bytes, list[Item]],
    ex: _Extractor,
    writers: _Writers,
    left: int,
    identities: Identities | None,
) -> int:
    """The tar loop; returns how many wanted members it did not find."""
    with contextlib.ExitStack() as layers:
        stream = _reader_stack(a, source, identities, layers)
        return _tar_loop(stream, wanted, ex, writers, left)


def _reader_stack(
    a: ArchiveState,
    source: _Verifier,
    identities: Identities | None,
    layers: contextlib.ExitStack,
) -> IO[bytes]:
    """The archive's layers undone in reverse order (age, then zstd), as the log names them."""
    stream: IO[bytes] = source  # type: ignore[assignment]
    for name in reversed(a.layers):
        if name == "age":
            if identities is None:  # restore() checks first; this is the last word
                raise KeyProblem(f"archive {a.id} is encrypted: give --identity FILE")
            stream = layers.enter_context(contextlib.closing(Decrypting(stream, identities)))  # type: ignore[arg-type]
        elif name == "zstd":
            stream = zstandard.ZstdDecompressor().stream_reader(
                stream,
                read_size=_CHUNK,
                read_across_frames=True,
            )
        else:
            raise VaultError(f"archive {a.id} has a layer this version cannot read: {name}")
    if not a.layers:  # tar reads 10 KiB at a time
        stream = io.BufferedReader(source, _CHUNK)
    return stream


def _tar_loop(
    stream: IO[bytes],
    wanted: dict[bytes, list[Item]],
    ex: _Extractor,
    writers: _Writers,
    left: int,
) -> int:
    with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tf:
        for ti in tf:
            items = wanted.get(ti.name.encode("utf-8", "surrogateescape"))
            if not items:
                continue
            # one member may be wanted at several paths (dedup): its data is read once
            files: list[Item] = []
            for item in items:
                m = item.member
                if m.segmented and ex.dest(item.dest) in ex.dropped:
                    left -= 1  # the rest of a file that lost a segment to a damaged archive
                    continue
                if m.kind == "file":
                    if ti.size != m.length:
                        raise _BadMember(
                            f"member {ev.show_path(m.path)} holds {ti.size} bytes, "
                            f"the catalog says {m.length}"
                        )
                    files.append(item)
                elif m.kind == "symlink":
                    ex.symlink(item)
                left -= 1
            if files and all(not i.member.segmented and ti.size <= _SMALL for i in files):
                data = tf.extractfile(ti)  # of ti.size bytes
                small = data.read() if data else b""
                for item in files:
                    ex.write_small(item, small, writers)
            elif files:
                ex.write_file(files, tf.extractfile(ti), writers)
            if left == 0:
                break
    return left


# -- extract ----------------------------------------------------------------------


def _parent(rel: bytes) -> bytes:
    return rel[: rel.rfind(b"/") + 1]


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _create(path: bytes) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600)


def _load_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc 2.28+ on Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(src: bytes, dst: bytes) -> bool:
    """Rename unless `dst` exists (FileExistsError then); False if the system
    or the filesystem cannot do that atomically."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def _unlink_quietly(path: bytes) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_TEMP = re.compile(rb"\A\.(.*)\.eventbak-[0-9a-f]+-[0-9]+\Z", re.DOTALL)


def _shown(path: object) -> str:
    """A path for a message: a temporary name shown as the name it stands for."""
    if path is None:
        return "?"
    raw = os.fsencode(path) if isinstance(path, (str, bytes)) else str(path).encode()
    parent, _, name = raw.rpartition(b"/")
    temp = _TEMP.match(name)
    if temp:
        raw = parent + b"/" + temp.group(1)
    return ev.show_path(raw)


@dataclass
class _Staged:
    """An entry written under a temporary name, waiting for its archive to verify."""

    tmp: bytes
    dest: bytes
    key: bytes  # its directory: the writer thread that owns it


@dataclass
class _Target:
    """A temporary file being written: where the next bytes go."""

    fd: int
    pos: int
    key: bytes
    member: ev.Member


@dataclass
class _Split:
    """A file split across archives, joined in one temporary file."""

    staged: _Staged
    member: ev.Member
    complete: bool = False  # its last segment is written (renamed once that archive verified)


class _Extractor:
    def __init__(self, to: Path, overwrite: bool) -> None:
        self.to = os.fsencode(to.resolve())
        self.overwrite = overwrite
        self.safe_dirs: set[bytes] = {self.to}
        self.root = os.geteuid() == 0
        self.files = 0
        self.bytes = 0
        self._token = secrets.token_hex(6).encode()
        self._serial = 0
        self._noreplace = _RENAMEAT2 is not None
        self.staged: list[_Staged] = []  # of the archive being read
        self.committing: list[_Staged] = []  # renames queued, not yet confirmed
        self.splits: dict[bytes, _Split] = {}  # dest -> split file being joined
        self.dropped: set[bytes] = set()  # split files left out (incomplete)

    def dest(self, rel: bytes) -> bytes:
        if not rel or any(part in (b"..",) for part in rel.split(b"/")):
            raise EventbakError(f"refusing unsafe path {ev.show_path(rel)!r} from the catalog")
        return self.to.rstrip(b"/") + b"/" + rel  # `--to /`: no "//" (a fixed point of dirname)

    def parent_ok(self, dest: bytes) -> None:
        parent = os.path.dirname(dest)
        if parent in self.safe_dirs or parent == dest:
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

    def _temp(self, dest: bytes) -> bytes:
        parent, _, name = dest.rpartition(b"/")
        self._serial += 1
        suffix = b".eventbak-%s-%d" % (self._token, self._serial)
        # a name of NAME_MAX bytes must still get a temporary name that fits
        return b"%s/.%s%s" % (parent, name[: 254 - len(suffix)], suffix)

    def _stage(self, item: Item) -> _Staged:
        dest = self.dest(item.dest)
        self.parent_ok(dest)
        s = _Staged(self._temp(dest), dest, _parent(item.dest))
        self.staged.append(s)
        return s

    # -- while an archive is read (main thread; writes queued per directory) ----

    def write_small(self, item: Item, data: bytes, writers: _Writers) -> None:
        m = item.member
        if len(data) != m.length:
            raise _BadMember(f"archive ends inside {ev.show_path(m.path)}")
        s = self._stage(item)
        writers.submit(s.key, partial(self._write_whole, s.tmp, data, m), len(data))
        self.files += 1
        self.bytes += m.length

    def write_file(self, items: list[Item], data: IO[bytes] | None, writers: _Writers) -> None:
        """One member's data, read from the archive in chunks here, into each
        of `items` (several when dedup found one content at several paths);
        the writes, then the metadata and the close, run in order in each
        file's directory's writer thread. A segment goes into its file's one
        temporary file, at its offset."""
        targets = [self._target(item) for item in items]
        try:
            left = items[0].member.length
            while left > 0 and data is not None:
                chunk = data.read(min(_CHUNK, left))
                if not chunk:
                    raise _BadMember(f"archive ends inside {ev.show_path(items[0].member.path)}")
                for t in targets:
                    writers.submit(t.key, partial(_pwrite_all, t.fd, chunk, t.pos), len(chunk))
                    t.pos += len(chunk)
                left -= len(chunk)
        finally:  # queued after the writes: the fd stays open until they ran
            for t in targets:
                writers.submit(t.key, partial(self._close_file, t.fd, t.member), 0)
        for item in items:
            self.bytes += item.member.length
            if not item.member.segmented:
                self.files += 1

    def _target(self, item: Item) -> _Target:
        """The open temporary file a member's data goes into."""
        m = item.member
        if not m.segmented:
            s = self._stage(item)
            return _Target(_create(s.tmp), 0, s.key, m)
        dest = self.dest(item.dest)
        split = self.splits.get(dest)
        if split is None:
            self.parent_ok(dest)
            staged = _Staged(self._temp(dest), dest, _parent(item.dest))
            os.close(_create(staged.tmp))
            split = self.splits[dest] = _Split(staged, m)
        fd = os.open(split.staged.tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if m.offset + m.length >= m.size:
            split.member, split.complete = m, True
        return _Target(fd, m.offset, split.staged.key, m)

    def symlink(self, item: Item) -> None:
        m = item.member
        s = self._stage(item)
        os.symlink(m.target, s.tmp)
        if self.root:
            os.chown(s.tmp, m.uid, m.gid, follow_symlinks=False)
        os.utime(s.tmp, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)
        self.files += 1

    # -- writer threads ---------------------------------------------------------

    def _write_whole(self, tmp: bytes, data: bytes, m: ev.Member) -> None:
        fd = _create(tmp)
        try:
            _pwrite_all(fd, data, 0)
            self._finish_file(fd, m)
        finally:
            os.close(fd)

    def _close_file(self, fd: int, m: ev.Member) -> None:
        try:
            if not m.segmented:
                self._finish_file(fd, m)
        finally:
            os.close(fd)

    def _finish_file(self, fd: int, m: ev.Member) -> None:
        """Owner, mode and mtime, on the temporary file (kept by the rename)."""
        if self.root:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode)
        os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))

    def _finish_split(self, split: _Split) -> None:
        m = split.member
        fd = os.open(split.staged.tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, m.size)
            self._finish_file(fd, m)
        finally:
            os.close(fd)
        self._place(split.staged)

    def _place_all(self, entries: list[_Staged]) -> None:
        for s in entries:
            self._place(s)

    def _place(self, s: _Staged) -> None:
        """The temporary name becomes the final one."""
        try:
            if self.overwrite:
                os.rename(s.tmp, s.dest)  # atomic: the old file or the new one
            else:
                self._place_new(s)
        except OSError as exc:
            _unlink_quietly(s.tmp)
            if exc.errno == errno.EISDIR or (exc.errno == errno.EEXIST and os.path.isdir(s.dest)):
                raise EventbakError(
                    f"cannot restore {ev.show_path(s.dest)}: a directory is in the way"
                ) from None
            if exc.errno == errno.EEXIST:
                raise EventbakError(
                    f"{ev.show_path(s.dest)} appeared while restoring and was not replaced "
                    "(use --overwrite to replace it)"
                ) from None
            raise

    def _place_new(self, s: _Staged) -> None:
        # renameat2(RENAME_NOREPLACE) fails if the final name exists, so no file
        # that appeared since the up-front check is replaced. Where the system
        # or filesystem lacks it, a check right before the rename is the best
        # there is.
        if self._noreplace and _rename_noreplace(s.tmp, s.dest):
            return
        self._noreplace = False
        if os.path.lexists(s.dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), s.dest)
        os.rename(s.tmp, s.dest)

    # -- once an archive verified, or failed -------------------------------------

    def commit(self, writers: _Writers) -> None:
        """Queue the renames of everything the archive just verified completed
        (after the writes of its files: same directory, same thread), one task
        per directory."""
        by_dir: dict[bytes, list[_Staged]] = {}
        for s in self.staged:
            by_dir.setdefault(s.key, []).append(s)
        for key, entries in by_dir.items():
            writers.submit(key, partial(self._place_all, entries), 0)
        self.committing.extend(self.staged)
        self.staged = []
        for dest, split in list(self.splits.items()):
            if split.complete:
                writers.submit(split.staged.key, partial(self._finish_split, split), 0)
                self.committing.append(split.staged)
                del self.splits[dest]
                self.files += 1

    def discard(self) -> None:
        """After a failure, once no writer runs: remove every temporary file
        (those whose rename ran are gone already)."""
        for s in [*self.staged, *self.committing, *(sp.staged for sp in self.splits.values())]:
            _unlink_quietly(s.tmp)
        self.staged, self.committing, self.splits = [], [], {}

    def reject(self, wanted: dict[bytes, list[Item]]) -> None:
        """The archive just read is damaged: its temporary files go, and every
        file it holds (a part of) is left out, split files included."""
        for s in self.staged:
            _unlink_quietly(s.tmp)
        self.staged = []
        for items in wanted.values():
            for item in items:
                dest = self.dest(item.dest)
                self.dropped.add(dest)
                split = self.splits.pop(dest, None)
                if split is not None:
                    _unlink_quietly(split.staged.tmp)

    def drop_incomplete(self, warnings: list[str]) -> None:
        """Split files whose later segments are in archives not uploaded: left
        out (a file with a hole of zeros would look restored)."""
        for dest, split in self.splits.items():
            _unlink_quietly(split.staged.tmp)
            self.dropped.add(dest)
            warnings.append(
                f"{ev.show_path(split.member.path)} is not restored: the rest of it is in "
                "archives not uploaded"
            )
        self.splits = {}

    # -- after every archive --------------------------------------------------------

    def hardlink(self, item: Item, warnings: list[str]) -> None:
        dest = self.dest(item.dest)
        target = self.dest(item.member.target.lstrip(b"/"))
        if target in self.dropped:
            warnings.append(f"{ev.show_path(item.member.path)} is not restored: its data is not")
            return
        self.parent_ok(dest)
        # the target too is reached through real directories only, and is a
        # regular file restored here: a catalog cannot make a link to a file
        # outside the target by way of a symlink it restored on the path
        self.parent_ok(target)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            warnings.append(
                f"{ev.show_path(item.member.path)} is not restored: the file it links to, "
                f"{ev.show_path(item.member.target)}, is not a restored regular file"
            )
            return
        if self.overwrite:
            tmp = self._temp(dest)
            os.link(target, tmp, follow_symlinks=False)
            try:
                os.rename(tmp, dest)
            except OSError:
                _unlink_quietly(tmp)
                raise
        else:
            os.link(target, dest, follow_symlinks=False)
        self.files += 1

    def finish_dirs(self, dirs: list[Item]) -> None:
        for item in sorted(dirs, key=lambda i: i.dest.count(b"/"), reverse=True):
            m = item.member
            dest = self.dest(item.dest)
            if self.root:
                os.chown(dest, m.uid, m.gid, follow_symlinks=False)
            os.chmod(dest, m.mode)
            os.utime(dest, ns=(m.mtime_ns, m.mtime_ns))


class _Writers:
    """Files are created and written by a few threads: creating a file costs
    the kernel far more than it costs Python, and the threads overlap that
    and the reading of the archive (the GIL is released in open, write and
    close). Everything for one directory goes to the same thread, in order
    (`key`): creating files in one directory takes its lock, and threads
    waiting for it spin on the CPU; and a file's rename is queued behind its
    writes. At most `limit` tasks and `max_bytes` of data wait in memory."""

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

    def abort(self) -> None:
        """After a failure: let every queued task run (the renames of archives
        that verified among them), ignoring errors, and stop the threads."""
        for pool in self._pools:
            pool.shutdown(wait=True)
        self._pending.clear()
        self._bytes = 0


# -- restore ----------------------------------------------------------------------


@dataclass
class RestoreReport:
    session: str
    files: int
    bytes: int
    elapsed: float
    warnings: list[str]
    archives: int = 0  # read from their vaults (each once)
    read_bytes: int = 0
    pending: int = 0  # archives not readable yet (--no-wait): nothing was restored
    damaged: list[str] = field(default_factory=list)  # archives left out, one line each


def restore(
    state: State,
    root: Path,
    patterns: list[bytes],
    to: Path,
    session: str | None = None,
    overwrite: bool = False,
    *,
    vault_for: VaultFor | None = None,
    tier: Tier = "Standard",
    thaw_days: int = 7,
    poll: float = 60.0,
    wait: bool = True,
    report: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    identities: Identities | None = None,
) -> RestoreReport:
    """Restore the selected entries below `to` (see the module's docstring
    for the order of the steps and what a failure leaves).

    `vault_for` opens the vault of an archive's vault identity; the caller
    owns what it opens. Without it, vaults are opened from the log's URLs and
    closed at the end. `report` gets the thaw lines (what was requested, the
    waiting); with `wait` off, archives that are not readable yet are asked
    for and the restore returns with `pending` set, restoring nothing."""
    started = time.monotonic()
    own = VaultResolver(state) if vault_for is None else None
    opener: VaultFor = vault_for or own  # type: ignore[assignment]
    try:
        return _restore(
            state, root, patterns, to, session, overwrite, opener, tier, thaw_days, poll,
            wait, report, sleep, identities, started,
        )  # fmt: skip
    finally:
        if own is not None:
            own.close()


def _restore(
    state: State,
    root: Path,
    patterns: list[bytes],
    to: Path,
    session: str | None,
    overwrite: bool,
    opener: VaultFor,
    tier: Tier,
    thaw_days: int,
    poll: float,
    wait: bool,
    report: Callable[[str], None] | None,
    sleep: Callable[[float], None],
    identities: Identities | None,
    started: float,
) -> RestoreReport:
    from_vault = manifest_from_vault(opener, identities)
    plan = plan_restore(state, root, patterns, session, from_vault)
    archives = [a for a, _ in plan.by_archive]
    check_tier(archives, tier)
    check_keys(state, archives, identities)
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
        ] + [ex.dest(i.dest) for i in plan.links + plan.symlinks]
        existing = [d for d in clashes if os.path.lexists(d)]
        if existing:
            raise UsageError(
                f"{len(existing)} files to restore already exist (first: "
                f"{ev.show_path(existing[0])}); use --overwrite to replace them"
            )
    sessions = ", ".join(s.id for s in plan.sessions)
    vaults: dict[str, Vault] = {}
    for a in archives:
        if a.vault not in vaults:
            vaults[a.vault] = opener(a.vault)
    fetches = fetches_for(archives, vaults)
    opts = ThawOptions(tier, thaw_days, poll, wait)
    pending = thaw(fetches, opts, report or (lambda line: None), sleep)
    if pending:
        elapsed = time.monotonic() - started
        return RestoreReport(sessions, 0, 0, elapsed, plan.warnings, pending=pending)
    damaged = _extract_all(plan, fetches, ex, identities)
    return RestoreReport(
        sessions,
        ex.files + len(plan.dirs),
        ex.bytes,
        time.monotonic() - started,
        plan.warnings,
        archives=len(archives),
        read_bytes=sum(a.size for a in archives),
        damaged=damaged,
    )


def check_keys(state: State, archives: list[ArchiveState], identities: Identities | None) -> None:
    """Before anything is read: encrypted archives need an identity that
    matches one of their session's recipients (KeyProblem otherwise)."""
    encrypted = [a for a in archives if "age" in a.layers]
    if not encrypted:
        return
    if identities is None:
        raise KeyProblem(
            f"{len(encrypted)} archive{_s(len(encrypted))} to read "
            f"{'is' if len(encrypted) == 1 else 'are'} encrypted (first: {encrypted[0].id}): "
            "give --identity FILE or set identity_file in [encryption]"
        )
    for sid in dict.fromkeys(a.session for a in encrypted):
        recipients = state.sessions[sid].recipients
        if recipients and not identities.recipients.intersection(recipients):
            raise KeyProblem(
                f"identity file {identities.path} matches none of the recipients session "
                f"{sid} was encrypted to ({', '.join(recipients)})"
            )


def _extract_all(
    plan: Plan, fetches: list[Fetch], ex: _Extractor, identities: Identities | None
) -> list[str]:
    """Every archive in turn; returns the damaged ones' errors (their files
    are left out, and split files with a segment in them)."""
    writers = _Writers()
    done = False
    damaged: list[str] = []
    try:
        for item in sorted(plan.dirs, key=lambda i: i.dest.count(b"/")):
            ex.make_dir(item)
        for f, (_, wanted) in zip(fetches, plan.by_archive, strict=True):
            counts = ex.files, ex.bytes
            try:
                _read_archive(f, wanted, ex, writers, identities)
            except ArchiveDamaged as exc:
                damaged.append(str(exc))
                writers.drain()  # its writes ran: its temporary files can go
                ex.reject(wanted)
                ex.files, ex.bytes = counts
                continue
            writers.drain()  # this archive's writes, and the renames of the one before
            ex.committing = []
            ex.commit(writers)
        writers.drain()
        ex.committing = []
        for item in plan.symlinks:
            ex.symlink(item)
        ex.commit(writers)
        writers.drain()
        ex.committing = []
        ex.drop_incomplete(plan.warnings)
        for item in plan.links:
            ex.hardlink(item, plan.warnings)
        ex.finish_dirs(plan.dirs)
        done = True
        return damaged
    except OSError as exc:
        raise EventbakError(
            f"restore failed: {exc.strerror or exc}: {_shown(exc.filename)}"
        ) from None
    finally:
        if done:
            writers.close()
        else:
            writers.abort()
            ex.discard()
