"""The coordinator: runs one backup session as a Trio pipeline and owns the log.

    scanner --batches of entries--> builder --sealed archives--> uploader --> vault
      (thread: walk)                (thread: Packer)               (uploader.Transfers:
                                                                    vault steps in threads)

Each stage is a task in one nursery; they talk over bounded memory channels,
so a slow vault stops the builder (at most `SEALED_BACKLOG` sealed archives
wait in staging) and a slow builder stops the scanner. Each task owns its
ends of the channels and closes them when done; the end of the walk flows
downstream as closed channels.

Only this module's tasks touch the state directory, always on the Trio
thread: `record` buffers an event, `commit` makes it durable. Commit points:
session opened or resumed, archive sealed (before it is handed to the
uploader), archive uploaded (before its staged file is deleted), session
paused or completed.

Stopping (SIGTERM, SIGINT, a deadline): `request_stop` sets a flag that the
scanner and the packer check between entries and between 1 MiB chunks; the
archive being built is discarded (its entries are packed again on resume),
parts in flight may finish but no new part is started, sealed archives not
yet sent stay in staging. After the grace period the work scope is
cancelled: a vault call still running is abandoned (its outcome is unknown;
resume asks the vault). A second signal cancels at once. Either way
`SessionPaused` is then committed.

Resume (`recover`): every archive the log left `sealed` or `uploading` is
reconciled with the vault by the same plan the live upload follows
(core/plan.py, executed by uploader.Transfers); see docs/architecture.md,
"Resume semantics".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Protocol

import trio

from eventbak import __version__
from eventbak.archive.layers import ArchiveFormat
from eventbak.archive.policy import Policy
from eventbak.catalog import marker, store
from eventbak.catalog.build import KEPT, session_entries
from eventbak.catalog.dedup import ContentIndex
from eventbak.catalog.manifest import ManifestEntry, ManifestError
from eventbak.config import Compression, parse_compression
from eventbak.core import events as ev
from eventbak.core import plan
from eventbak.core.state import SessionState
from eventbak.daemon.bandwidth import Throttle, Timetable
from eventbak.errors import EXIT_FAILURE, EventbakError, UsageError
from eventbak.fsutil import sha256_file
from eventbak.pipeline.builder import Output, Packer, Sealed, Stopped
from eventbak.pipeline.scanner import Entry, Exclude, changes, walk
from eventbak.pipeline.scanner import key as walk_key
from eventbak.pipeline.uploader import Transfers
from eventbak.statedir import StateDir
from eventbak.vaults import Vault, parse_vault
from eventbak.vaults.url import expand_date, has_date_tag

BATCH_ENTRIES = 512
BATCH_BYTES = 16 * 1024 * 1024
ENTRY_BACKLOG = 4
SEALED_BACKLOG = 1
#: Buffered events past this size are committed at once (group commit aside).
COMMIT_BYTES = 4 * 1024 * 1024
DEFAULT_GRACE = 30.0


@dataclass(frozen=True)
class BackupRequest:
    dataset: str
    paths: list[bytes]  # absolute, normalized (scanner.normalize_roots)
    vault_url: str
    archive_size: int
    compression: Compression
    exclude: list[str]
    #: the vault's option keys from its config table (vaults/url.py)
    vault_options: dict[str, object] = field(default_factory=dict)
    #: age recipients (public keys): archives are encrypted to them all
    recipients: tuple[str, ...] = ()
    always_compress: list[str] = field(default_factory=list)
    never_compress: list[str] = field(default_factory=list)
    #: the change rule without inode numbers / ctimes (scanner.changes)
    ignore_inode: bool = False
    ignore_ctime: bool = False
    #: store everything, not only what changed since the last completed session
    full: bool = False
    #: the configured vault URL when it has a date tag (`dated` fills it in)
    vault_template: str = ""

    @property
    def format(self) -> ArchiveFormat:
        return ArchiveFormat(self.compression, self.recipients)

    @property
    def policy(self) -> Policy:
        return Policy(
            self.compression,
            never=self.never_compress,
            always=self.always_compress,
            roots=self.paths,
        )


class StopRouter(Protocol):
    """Who routes stop requests (signals) to the session running (runner.py)."""

    def attach(self, session: Session) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """How this run may be stopped (none of it is part of the session)."""

    deadline: float | None = None  # time.time() at which to pause
    #: the deadline on Trio's clock (trio.current_time()), set by the runner
    #: from `deadline` when its run starts
    stop_at: float | None = None
    grace: float = DEFAULT_GRACE  # seconds from a stop request to cancellation
    signals: bool = True  # watch SIGTERM/SIGINT (main thread only)
    new_session: bool = False  # abandon an unfinished session instead of resuming
    #: the upload limit (daemon/bandwidth.py), read at `local_now()` wall time
    upload_limit: Timetable | None = None
    local_now: Callable[[], dt.datetime] = dt.datetime.now


@dataclass
class Progress:
    """A snapshot for progress displays; read on the Trio thread."""

    session: str
    files: int
    bytes: int
    archives_sealed: int
    archives_uploaded: int
    bytes_uploaded: int
    elapsed: float


@dataclass
class Outcome:
    session: SessionState
    elapsed: float
    error: str = ""
    exit_code: int = 0  # the error's (errors.py)
    resumed: bool = False
    paused_for: str = ""
    run_files: int = 0  # what this run read (a resumed session did some before)
    run_bytes: int = 0

    @property
    def state(self) -> str:
        return self.session.state


def new_session_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def first_error(exc: BaseException) -> BaseException:
    """The most telling exception inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        inner = [first_error(e) for e in exc.exceptions]
        for e in inner:
            if isinstance(e, EventbakError | OSError):
                return e
        return inner[0]
    return exc


def _exit_code(exc: BaseException | None) -> int:
    if exc is None:
        return 0
    return exc.exit_code if isinstance(exc, EventbakError) else EXIT_FAILURE


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename!s})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


class Session:
    """One run of the pipeline for one session (new or resumed)."""

    def __init__(
        self,
        sd: StateDir,
        session_id: str,
        req: BackupRequest,
        vault: Vault,
        on_progress: Callable[[Progress], None] | None = None,
        options: RunOptions | None = None,
        stopper: StopRouter | None = None,
    ) -> None:
        self.sd = sd
        self.stopper = stopper
        self.id = session_id
        self.req = req
        self.vault = vault
        self.on_progress = on_progress
        self.options = options or RunOptions()
        self.stop = threading.Event()
        self.stop_reason = ""
        self._work_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        s = sd.state.sessions[session_id]
        self.dedup = (
            ContentIndex(store.index_path(sd.root, s.base), lambda: self._open_base(s.base))
            if s.base
            else None
        )
        self.packer = Packer(
            session_id,
            sd.staging,
            req.archive_size,
            req.format,
            req.policy,
            next_index=len(s.archives) + 1,
            stop=self.stop,
            dedup=self.dedup,
        )
        self.started = time.monotonic()
        # what the point in time holds already (the base's manifest, and for a
        # resumed session its own copies): read by the scanner thread
        self._known: Callable[[], Iterable[ManifestEntry]] = self._base_entries
        self._resume_cursor: bytes | None = None
        limit = self.options.upload_limit
        throttle = Throttle(limit, self.options.local_now) if limit is not None else None
        self.transfers = Transfers(sd, vault, session_id, self.stop, throttle)
        # recovered archives still to send, with what reconciling them learnt
        self._to_upload: list[tuple[str, plan.Observed]] = []

    # -- stopping ---------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop taking new work; cancel the rest after the grace period."""
        if self.stop.is_set():
            if reason.startswith("signal") and self._work_scope is not None:
                self._work_scope.cancel()  # a second signal: no more grace
            return
        self.stop_reason = reason
        self.stop.set()
        if self._nursery is not None:
            self._nursery.start_soon(self._grace_timer)

    async def _grace_timer(self) -> None:
        await trio.sleep(self.options.grace)
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def _watch_deadline(self, stop_at: float) -> None:
        await trio.sleep_until(stop_at)
        self.request_stop("deadline")

    # -- recovery ------------------------------------------------------------

    async def recover(self) -> None:
        """Bring a resumed session back to a state the pipeline can continue
        from: archives being built are discarded; sealed and uploading ones
        are reconciled with the vault (the uploader sends what is missing)."""
        sd, state = self.sd, self.sd.state
        for a in state.archives_of(self.id):
            if a.state == "building":
                (sd.staging / f"{a.id}.partial").unlink(missing_ok=True)
                sd.record(
                    ev.ArchiveDiscarded(
                        at=time.time(), archive=a.id, reason="incomplete at interruption"
                    )
                )
                sd.commit()
            elif a.state in ("sealed", "uploading"):
                obs = await self.transfers.run(a.id, plan.Observed(), send=False)
                if state.archives[a.id].state in ("sealed", "uploading"):
                    self._to_upload.append((a.id, obs))
        s = state.sessions[self.id]
        if s.base:  # before anything is packed again, not at the end of the walk
            check_base(
                sd, state.sessions[s.base],
                "`eventbak backup --new-session --full` abandons this session and stores "
                "everything again",
            )  # fmt: skip
        kept = [a for a in state.archives_of(self.id) if a.state in KEPT]
        # the list of archives is taken now; their members are read lazily,
        # one archive per run at a time, by the scanner thread
        known = session_entries(state, sd.root, self.id, self._open_base, KEPT)
        self._known = lambda: known
        lasts = [a.last.path for a in kept if a.last is not None]
        self._resume_cursor = max(lasts, key=walk_key) if lasts else None
        self.packer.next_index = len(s.archives) + 1

    async def remove_orphans(self) -> None:
        """Delete staged files the log does not need, and abort the vault's
        unfinished uploads of this state dir's sessions that no unfinished
        archive of the log is continuing."""
        sd, state = self.sd, self.sd.state
        keep = set()
        live: set[tuple[str, str]] = set()
        for a in state.archives.values():
            if a.state in ("sealed", "uploading"):
                keep.add(a.staged)
                if a.upload_id:
                    live.add((a.key, a.upload_id))
            elif a.state == "building" and state.sessions[a.session].unfinished:
                keep.add(f"{a.id}.partial")
        for f in sorted(sd.staging.iterdir()):
            if f.name in keep:
                continue
            size = f.stat().st_size if f.is_file() else 0
            f.unlink(missing_ok=True)
            sd.record(ev.OrphanRemoved(at=time.time(), where="staging", name=f.name, size=size))
        sd.commit()
        vault = self.vault
        leftovers = await trio.to_thread.run_sync(vault.unfinished, set(state.sessions))
        for u in leftovers:
            if (u.key, u.upload_id) in live:
                continue
            await trio.to_thread.run_sync(vault.abort, u.key, u.upload_id)
            name = f"{u.key} (upload {u.upload_id})" if u.upload_id else u.key
            sd.record(ev.OrphanRemoved(at=time.time(), where=vault.ref, name=name, size=u.size))
            sd.commit()

    # -- the stages -----------------------------------------------------

    def _scan_thread(self, send: trio.MemorySendChannel[list[Entry]]) -> None:
        exclude = Exclude(self.req.exclude) if self.req.exclude else None
        own = [self.sd.root, self.vault.local_root]
        skip = frozenset(os.fsencode(os.path.abspath(p)) for p in own if p is not None)
        s = self.sd.state.sessions[self.id]
        entries = changes(
            walk(self.req.paths, exclude, skip),
            self._known(),
            self._resume_cursor,
            ignore_inode=s.ignore_inode,
            ignore_ctime=s.ignore_ctime,
            unchanged_links=self.packer.links,
        )
        batch: list[Entry] = []
        size = 0
        for entry in entries:
            if self.stop.is_set():
                return
            batch.append(entry)
            if entry.kind == "file" and entry.st is not None:
                size += entry.st.st_size
            if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
                if not self._hand_over(send, batch):
                    return
                batch, size = [], 0
        if batch and not self.stop.is_set():
            self._hand_over(send, batch)

    def _hand_over(self, send: trio.MemorySendChannel[list[Entry]], batch: list[Entry]) -> bool:
        """Send a batch from the scanner thread; False once the builder stopped
        listening (it closed its end after a stop request) or we were cancelled."""
        try:
            trio.from_thread.run(send.send, batch)
        except (trio.BrokenResourceError, trio.Cancelled, trio.RunFinishedError):
            return False
        return True

    async def _scanner(self, send: trio.MemorySendChannel[list[Entry]]) -> None:
        async with send:
            await trio.to_thread.run_sync(self._scan_thread, send)

    async def _emit(self, outputs: list[Output], send: trio.MemorySendChannel[Sealed]) -> None:
        for out in outputs:
            if isinstance(out, Sealed):
                self.sd.record(out.event)
                self.sd.commit()
                await send.send(out)
            else:
                self.sd.record(out)
        if self.sd.log.pending_bytes > COMMIT_BYTES:
            # pieces of a long member list: written out so that the buffer stays small
            # (durable early does no harm: an archive not sealed is discarded on resume)
            self.sd.commit()

    async def _builder(
        self, recv: trio.MemoryReceiveChannel[list[Entry]], send: trio.MemorySendChannel[Sealed]
    ) -> None:
        async with recv, send:
            try:

                def on_seal(outputs: list[Output]) -> None:  # runs in the packer's thread
                    trio.from_thread.run(self._emit, outputs, send)

                self.packer.on_seal = on_seal
                async for batch in recv:
                    outputs = await trio.to_thread.run_sync(self.packer.pack, batch)
                    await self._emit(outputs, send)
                if self.stop.is_set():
                    raise Stopped
                await self._emit(await trio.to_thread.run_sync(self.packer.finish), send)
            except Stopped:
                await self._emit(self.packer.take(), send)
                self._drop_partial("session stopped")

    async def _uploader(self, recv: trio.MemoryReceiveChannel[Sealed]) -> None:
        """Sends recovered archives, then each archive as it is sealed
        (`Transfers.run_all`: up to two at once to a multipart vault). After a
        stop request nothing new is started: sealed archives stay in staging
        and an upload keeps its confirmed parts, for the next run."""

        async def archives() -> AsyncIterator[tuple[str, plan.Observed]]:
            for archive, observed in self._to_upload:
                if self.stop.is_set():
                    break
                yield archive, observed
            async for sealed in recv:
                if self.stop.is_set():
                    continue  # stays sealed in staging; uploaded on resume
                yield sealed.event.archive, plan.Observed.fresh()

        async with recv:
            await self.transfers.run_all(archives())

    async def _progress(self, interval: float) -> None:
        assert self.on_progress is not None
        while True:
            await trio.sleep(interval)
            self.on_progress(self.progress())

    def progress(self) -> Progress:
        s = self.sd.state.sessions[self.id]
        p = self.packer.progress
        return Progress(
            session=self.id,
            files=p.files,
            bytes=p.bytes,
            archives_sealed=p.archives,
            archives_uploaded=s.archives_uploaded,
            bytes_uploaded=s.bytes_uploaded,
            elapsed=time.monotonic() - self.started,
        )

    # -- the session ----------------------------------------------------

    async def run(self) -> Outcome:
        entries_send, entries_recv = trio.open_memory_channel[list[Entry]](ENTRY_BACKLOG)
        sealed_send, sealed_recv = trio.open_memory_channel[Sealed](SEALED_BACKLOG)
        error: BaseException | None = None
        try:
            async with trio.open_nursery() as outer:
                self._nursery = outer
                if self.stopper is not None:
                    self.stopper.attach(self)
                stop_at = self.options.stop_at
                if stop_at is None and self.options.deadline is not None:
                    stop_at = trio.current_time() + max(0.0, self.options.deadline - time.time())
                if stop_at is not None:
                    outer.start_soon(self._watch_deadline, stop_at)
                if self.on_progress is not None:
                    outer.start_soon(self._progress, 0.5)
                with trio.CancelScope() as self._work_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._scanner, entries_send)
                        nursery.start_soon(self._builder, entries_recv, sealed_send)
                        nursery.start_soon(self._uploader, sealed_recv)
                    if not self.stop_reason:
                        await self._store_catalog()
                outer.cancel_scope.cancel()
        except BaseException as exc:
            first = first_error(exc)
            if not isinstance(first, EventbakError | OSError):
                self._pause_for_bug(first)
                raise
            error = first
        finally:
            self.stop.set()
            if self.dedup is not None:
                self.dedup.close()
        session = self.sd.state.sessions[self.id]
        elapsed = time.monotonic() - self.started
        if error is not None or self.stop_reason:
            self._drop_partial("session stopped")
            why = f"error: {_describe(error)}" if error is not None else self.stop_reason
            self.sd.record(ev.SessionPaused(at=time.time(), session=self.id, reason=why))
            self._commit_or_note(why)
            return Outcome(
                session,
                elapsed,
                _describe(error) if error is not None else "",
                exit_code=_exit_code(error),
                paused_for=why,
                run_files=self.packer.progress.files,
                run_bytes=self.packer.progress.bytes,
            )
        self.sd.record(
            ev.SessionCompleted(
                at=time.time(),
                session=self.id,
                files=session.files,
                bytes=session.bytes,
                archives=session.archives_uploaded,
                skipped=len(session.skipped),
                changed=len(session.changed),
            )
        )
        self.sd.commit()
        # the next session builds on this one: older manifests are read from the
        # vault (a copy that cannot be removed now is removed next time)
        with contextlib.suppress(OSError):
            store.prune(self.sd.root, self.sd.state, session)
        return Outcome(
            session,
            elapsed,
            run_files=self.packer.progress.files,
            run_bytes=self.packer.progress.bytes,
        )

    def _open_base(self, session: str) -> Iterator[ManifestEntry]:
        try:
            yield from store.read_local(self.sd.root, self.sd.state.sessions[session])
        except ManifestError as exc:
            raise ManifestError(
                f"{exc}; `eventbak backup --new-session --full` abandons this session "
                "and stores everything again"
            ) from None

    def _base_entries(self) -> Iterable[ManifestEntry]:
        base = self.sd.state.sessions[self.id].base
        return self._open_base(base) if base else ()

    async def _store_catalog(self) -> None:
        """Every archive is uploaded: the session's manifest (catalog/build.py:
        its base's entries with what it stored laid over them) is written to
        the state dir (catalog/store.py) and, encrypted when the session is,
        into the vault in a hot class, and recorded before `SessionCompleted`.
        A crash before the record writes and stores it again at the next
        run, under the same key."""
        self.sd.commit()  # the member lists are read back from the log
        recipients = self.req.recipients
        layers = ["zstd", "age"] if recipients else ["zstd"]
        key = f"catalog/{self.id}.mf" + ev.archive_suffix(layers).removeprefix(".tar")
        sd = self.sd
        s = sd.state.sessions[self.id]

        def write() -> tuple[store.Written, bytes]:
            entries = session_entries(sd.state, sd.root, self.id, self._open_base)
            archives = store.records(sd.state.archives_of(self.id))
            w = store.write(sd.root, sd.staging, s, entries, recipients, archives)
            return w, w.staged.read_bytes()

        w, data = await trio.to_thread.run_sync(write)
        receipt = await trio.to_thread.run_sync(self.vault.put_small, key, data)
        sd.record(
            ev.CatalogStored(
                at=time.time(), session=self.id, key=receipt.key, size=w.size, sha256=w.sha256,
                entries=w.entries, layers=layers, checksum=receipt.checksum, files=w.files,
                bytes=w.bytes, local_sha256=w.local_sha256,
            )
        )  # fmt: skip
        sd.commit()
        if w.staged.parent == sd.staging:
            w.staged.unlink(missing_ok=True)
        if self.dedup is not None:  # the next session builds on this one
            self.dedup.close()
            self.dedup.path.unlink(missing_ok=True)

    def _pause_for_bug(self, exc: BaseException) -> None:
        """An exception that is a bug (or a cancellation from outside) still
        leaves the session paused, with its error, when it was running: the
        process then ends (a supervisor restarts it) and resumes it."""
        if isinstance(exc, trio.Cancelled | KeyboardInterrupt):
            return
        s = self.sd.state.sessions[self.id]
        if s.state != "running":
            return
        with contextlib.suppress(Exception):
            self._drop_partial("session stopped")
            why = f"error: unexpected {type(exc).__name__}: {exc}"[:500]
            self.sd.record(ev.SessionPaused(at=time.time(), session=self.id, reason=why))
            self.sd.commit()

    def _commit_or_note(self, why: str) -> None:
        try:
            self.sd.commit()
        except OSError as exc:
            # The state dir itself is full or failing: the log keeps its last
            # durable event, and the next start resumes as after a crash.
            raise EventbakError(
                f"session paused ({why}) but the pause could not be recorded "
                f"({_describe(exc)}); the next backup resumes from the last durable event"
            ) from None

    def _drop_partial(self, reason: str) -> None:
        for out in self.packer.take():
            if isinstance(out, Sealed):
                self.sd.record(out.event)  # durable in staging: keep for resume
            else:
                self.sd.record(out)
        aid = self.packer.abort()
        a = self.sd.state.archives.get(aid) if aid is not None else None
        if a is not None and a.state == "building":
            self.sd.record(ev.ArchiveDiscarded(at=time.time(), archive=a.id, reason=reason))


def find_base(sd: StateDir, req: BackupRequest, vault: Vault) -> str:
    """The session a new one stores the changes since: the latest completed
    session of the same dataset, paths and vault; "" (a full session) if
    there is none, if it predates manifests in the state dir, or `req.full`.
    Its manifest copy must be whole: a missing or damaged one is an error
    (ManifestError) that says how to start a full session instead."""
    if req.full:
        return ""
    for s in reversed(sd.state.sessions.values()):
        if not (
            s.state == "completed"
            and s.dataset == req.dataset
            and s.paths == req.paths
            and vault_ref(s.vault) == vault.ref
        ):
            continue
        if s.catalog is None or not s.catalog.local_sha256:
            return ""  # stored before eventbak kept manifests: start afresh
        if sorted(s.recipients) != sorted(req.recipients):
            return ""  # encryption changed: every file is stored under the new keys
        check_base(sd, s, "run `eventbak backup --full` to store everything again")
        return s.id
    return ""


def check_base(sd: StateDir, s: SessionState, remedy: str) -> None:
    """The state dir's copy of `s`'s manifest is whole (ManifestError if not)."""
    assert s.catalog is not None
    path = store.local_path(sd.root, s.id)
    try:
        ok = sha256_file(path) == s.catalog.local_sha256
        why = "is damaged (its sha256 differs from the log's)"
    except OSError as exc:
        ok, why = False, f"cannot be read: {exc.strerror}"
    if not ok:
        raise ManifestError(
            f"the manifest of session {s.id} ({path}) {why}; a session builds on it: {remedy}"
        )


def open_session(sd: StateDir, req: BackupRequest, vault: Vault) -> str:
    sid = new_session_id()
    sd.record(
        ev.SessionOpened(
            at=time.time(),
            session=sid,
            dataset=req.dataset,
            vault=vault.ref,
            vault_url=vault.url,
            paths=req.paths,
            archive_size=req.archive_size,
            compression=str(req.compression),
            exclude=req.exclude,
            host=socket.gethostname(),
            version=__version__,
            recipients=list(req.recipients),
            always_compress=req.always_compress,
            never_compress=req.never_compress,
            base=find_base(sd, req, vault),
            vault_template=req.vault_template,
            ignore_inode=req.ignore_inode,
            ignore_ctime=req.ignore_ctime,
        )
    )
    sd.commit()
    return sid


def dated(sd: StateDir, req: BackupRequest, when: dt.datetime) -> BackupRequest:
    """The request with the vault its URL's date tag names, if it has one:
    the vault of the lineage's unfinished session (fixed for the session's
    life, whatever the day), else the vault of `when` (local time)."""
    if not has_date_tag(req.vault_url):
        return req
    for s in reversed(sd.state.unfinished_sessions()):
        if s.dataset == req.dataset and s.paths == req.paths and s.vault_template == req.vault_url:
            return dc_replace(req, vault_url=s.vault_url, vault_template=req.vault_url)
    url = expand_date(req.vault_url, when)
    return dc_replace(req, vault_url=url, vault_template=req.vault_url)


def find_unfinished(sd: StateDir, req: BackupRequest) -> SessionState | None:
    """The unfinished session this request continues: same dataset, paths and
    vault (by identity: its options may have changed)."""
    ref = vault_ref(req.vault_url)
    for s in reversed(sd.state.unfinished_sessions()):
        if s.dataset == req.dataset and s.paths == req.paths and vault_ref(s.vault) == ref:
            return s
    return None


def vault_ref(url: str) -> str:
    """A vault URL's identity (what SessionOpened.vault holds); old logs hold
    the URL itself there."""
    try:
        return parse_vault(url).ref
    except EventbakError:
        return url


def _session_request(s: SessionState, req: BackupRequest) -> BackupRequest:
    """A resumed session keeps the settings it was opened with; the vault's
    options are this run's."""
    return BackupRequest(
        dataset=s.dataset,
        paths=s.paths,
        vault_url=req.vault_url,
        vault_options=req.vault_options,
        archive_size=s.archive_size,
        compression=parse_compression(s.compression),
        exclude=s.exclude,
        recipients=tuple(s.recipients),
        always_compress=s.always_compress,
        never_compress=s.never_compress,
        ignore_inode=s.ignore_inode,
        ignore_ctime=s.ignore_ctime,
    )


async def run_session(
    sd: StateDir,
    req: BackupRequest,
    vault: Vault,
    on_progress: Callable[[Progress], None] | None,
    options: RunOptions,
    stopper: StopRouter | None = None,
) -> Outcome:
    await trio.to_thread.run_sync(vault.prepare)
    await trio.to_thread.run_sync(marker.ensure, vault)
    session: Session | None = None
    try:
        previous = find_unfinished(sd, req)
        if previous is not None and req.full and not options.new_session:
            raise UsageError(
                f"--full starts a new session, but session {previous.id} is unfinished: "
                "add --new-session to abandon it (its uploaded archives stay), or back up "
                "without --full to finish it"
            )
        if previous is not None and options.new_session:
            await _abandon(sd, previous, vault)
            previous = None
        if previous is None:
            sid = open_session(sd, req, vault)
            session = Session(sd, sid, req, vault, on_progress, options, stopper)
            await session.remove_orphans()
        else:
            after = "paused" if previous.state == "paused" else "crash"
            sd.record(
                ev.SessionResumed(
                    at=time.time(), session=previous.id, after=after, pid=os.getpid(),
                    vault_url=vault.url,
                )
            )  # fmt: skip
            sd.commit()  # first: a crash during recovery still counts as an interruption
            resumed = _session_request(previous, req)
            session = Session(sd, previous.id, resumed, vault, on_progress, options, stopper)
            await session.remove_orphans()
            await session.recover()
    except (OSError, EventbakError) as exc:
        # The sweep or the recovery met the vault refusing or gone, or a disk
        # error: the session opened or resumed above is paused with the reason,
        # as a failure in the pipeline would pause it.
        if session is not None and sd.state.sessions[session.id].state == "running":
            why = f"error: {_describe(exc)}"
            sd.record(ev.SessionPaused(at=time.time(), session=session.id, reason=why))
            with contextlib.suppress(OSError):  # else the next run resumes as after a crash
                sd.commit()
        if isinstance(exc, EventbakError):
            raise
        raise EventbakError(
            f"cannot prepare the session: {_describe(exc)} (the event log in {sd.root} "
            "keeps its last durable event; the next backup resumes from there)"
        ) from None
    outcome = await session.run()
    outcome.resumed = previous is not None
    return outcome


async def _abandon(sd: StateDir, s: SessionState, vault: Vault) -> None:
    """Close `s` for good by the upload plan's "settle" goal: archives the vault
    holds whole are recorded as uploaded (an upload may have finished
    unrecorded), unfinished uploads are aborted, the rest are discarded;
    staged files go only once that is durable."""
    transfers = Transfers(sd, vault, s.id)
    for a in sd.state.archives_of(s.id):
        if a.state == "building":
            sd.record(ev.ArchiveDiscarded(at=time.time(), archive=a.id, reason="session abandoned"))
            sd.commit()
            (sd.staging / f"{a.id}.partial").unlink(missing_ok=True)
        elif a.state in ("sealed", "uploading"):
            await transfers.run(a.id, plan.Observed(), goal="settle")
    sd.record(ev.SessionAbandoned(at=time.time(), session=s.id, reason="--new-session"))
    sd.commit()


def parse_duration(text: str) -> float:
    """`90`, `30s`, `15m`, `2h`, `1h30m` -> seconds. ValueError otherwise."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 15m, 2h, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def parse_until(text: str, now: float | None = None) -> float:
    """`HH:MM` (local time) -> the next such moment as time.time()."""
    try:
        hh, mm = text.strip().split(":")
        h, m = int(hh), int(mm)
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day HH:MM") from None
    base = dt.datetime.fromtimestamp(now if now is not None else time.time())
    target = base.replace(hour=h, minute=m, second=0, microsecond=0)
    if target <= base:
        target += dt.timedelta(days=1)
    return target.timestamp()
