"""The coordinator: runs one backup session as a Trio pipeline and owns the log.

    scanner --batches of entries--> builder --sealed archives--> uploader --> vault
      (thread: walk)                (thread: Packer)               (thread: vault.put)

Each stage is a task in one nursery; they talk over bounded memory channels,
so a slow vault stops the builder (at most `SEALED_BACKLOG` sealed archives
wait in staging) and a slow builder stops the scanner. Each task owns its
ends of the channels and closes them when done; the end of the walk flows
downstream as closed channels.

Only this module's tasks touch the state directory, always on the Trio
thread: `record` buffers an event, `commit` makes it durable. Commit points:
session opened, archive sealed (before it is handed to the uploader),
archive uploaded (before its staged file is deleted), session ended.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from eventbak import __version__
from eventbak import events as ev
from eventbak.builder import Output, Packer, Sealed
from eventbak.config import Compression
from eventbak.errors import EventbakError
from eventbak.scanner import Entry, Exclude, walk
from eventbak.state import SessionState
from eventbak.statedir import StateDir
from eventbak.vaults import Vault

BATCH_ENTRIES = 512
BATCH_BYTES = 16 * 1024 * 1024
ENTRY_BACKLOG = 4
SEALED_BACKLOG = 1


@dataclass(frozen=True)
class BackupRequest:
    dataset: str
    paths: list[bytes]  # absolute, normalized (scanner.normalize_roots)
    vault_url: str
    archive_size: int
    compression: Compression
    exclude: list[str]


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

    @property
    def state(self) -> str:
        return self.session.state


def new_session_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def _first_error(exc: BaseException) -> BaseException:
    """The most telling exception inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        inner = [_first_error(e) for e in exc.exceptions]
        for e in inner:
            if isinstance(e, EventbakError | OSError):
                return e
        return inner[0]
    return exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename!s})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


class Session:
    """One run of the pipeline for one session."""

    def __init__(
        self,
        sd: StateDir,
        session_id: str,
        req: BackupRequest,
        vault: Vault,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.sd = sd
        self.id = session_id
        self.req = req
        self.vault = vault
        self.on_progress = on_progress
        self.stop = threading.Event()
        self.packer = Packer(
            session_id,
            sd.staging,
            req.archive_size,
            req.compression,
            next_index=len(sd.state.sessions[session_id].archives) + 1,
            stop=self.stop,
        )
        self.started = time.monotonic()

    # -- the stages -----------------------------------------------------

    def _scan_thread(self, send: trio.MemorySendChannel[list[Entry]]) -> None:
        exclude = Exclude(self.req.exclude) if self.req.exclude else None
        batch: list[Entry] = []
        size = 0
        for entry in walk(self.req.paths, exclude):
            if self.stop.is_set():
                return
            batch.append(entry)
            if entry.kind == "file" and entry.st is not None:
                size += entry.st.st_size
            if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
                trio.from_thread.run(send.send, batch)
                batch, size = [], 0
        if batch:
            trio.from_thread.run(send.send, batch)

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

    async def _builder(
        self, recv: trio.MemoryReceiveChannel[list[Entry]], send: trio.MemorySendChannel[Sealed]
    ) -> None:
        async with recv, send:
            async for batch in recv:
                outputs = await trio.to_thread.run_sync(self.packer.pack, batch)
                await self._emit(outputs, send)
            await self._emit(await trio.to_thread.run_sync(self.packer.finish), send)

    async def _uploader(self, recv: trio.MemoryReceiveChannel[Sealed]) -> None:
        async with recv:
            async for sealed in recv:
                await self.upload(sealed.event, sealed.path)

    async def upload(self, sealed: ev.ArchiveSealed, path: Path) -> None:
        """Store one sealed archive and, once that is durable, drop its staged file."""
        suffix = path.name[len(sealed.archive) :]
        key = self.vault.key_for(self.id, sealed.archive, suffix)
        self.sd.record(
            ev.UploadStarted(at=time.time(), archive=sealed.archive, vault=self.vault.url, key=key)
        )
        stored = await trio.to_thread.run_sync(self.vault.put, key, path, sealed.sha256)
        self.sd.record(
            ev.ArchiveUploaded(
                at=time.time(),
                archive=sealed.archive,
                vault=self.vault.url,
                key=stored.key,
                size=stored.size,
                sha256=stored.sha256,
            )
        )
        self.sd.commit()
        path.unlink(missing_ok=True)

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
                if self.on_progress is not None:
                    outer.start_soon(self._progress, 0.5)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._scanner, entries_send)
                    nursery.start_soon(self._builder, entries_recv, sealed_send)
                    nursery.start_soon(self._uploader, sealed_recv)
                outer.cancel_scope.cancel()
        except BaseException as exc:
            first = _first_error(exc)
            if not isinstance(first, EventbakError | OSError):
                raise
            error = first
        finally:
            self.stop.set()
        session = self.sd.state.sessions[self.id]
        if error is not None:
            self._drop_partial()
            why = _describe(error)
            self.sd.record(
                ev.SessionPaused(at=time.time(), session=self.id, reason=f"error: {why}")
            )
            self.sd.commit()
            return Outcome(session, time.monotonic() - self.started, why)
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
        return Outcome(session, time.monotonic() - self.started)

    def _drop_partial(self) -> None:
        for out in self.packer.take():
            if not isinstance(out, Sealed):
                self.sd.record(out)
        aid = self.packer.abort()
        a = self.sd.state.archives.get(aid) if aid is not None else None
        if a is not None and a.state == "building":
            self.sd.record(
                ev.ArchiveDiscarded(at=time.time(), archive=a.id, reason="session stopped")
            )


def open_session(sd: StateDir, req: BackupRequest, dataset: str) -> str:
    sid = new_session_id()
    sd.record(
        ev.SessionOpened(
            at=time.time(),
            session=sid,
            dataset=dataset,
            vault=req.vault_url,
            paths=req.paths,
            archive_size=req.archive_size,
            compression=str(req.compression),
            exclude=req.exclude,
            host=socket.gethostname(),
            version=__version__,
        )
    )
    sd.commit()
    return sid


async def run_backup(
    sd: StateDir,
    req: BackupRequest,
    vault: Vault,
    on_progress: Callable[[Progress], None] | None = None,
) -> Outcome:
    await trio.to_thread.run_sync(vault.prepare)
    sid = open_session(sd, req, req.dataset)
    return await Session(sd, sid, req, vault, on_progress).run()
