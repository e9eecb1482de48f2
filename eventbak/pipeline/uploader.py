"""The upload executor: carries out core/plan.py's steps against a vault.

`Transfers.run(archive, observed)` asks the plan for the next step, performs
it in a worker thread (vault calls, hashing), records the resulting events
on the Trio thread, and asks again, until the plan says `Done` (or, with
`send=False`, until the next step would send archive bytes). The same loop
serves the live upload, recovery after an interruption and settling an
abandoned session; only the Trio thread ever touches the state dir.

Durability: `UploadStarted` is committed before any byte of an attempt is
sent; each `PartUploaded` is committed as its part is confirmed (one fsync
per part: about 0.1 ms against the seconds a 16 MiB part takes, and a crash
then costs at most the parts in flight); `ArchiveUploaded` is committed
before the staged file is deleted.

Parts are sent `vault.concurrency` at a time from threads, across every
archive of the session in transfer (`run_all` runs up to two).
Cancellation: a vault call cut off by cancellation is abandoned (its thread
finishes on its own) and nothing is recorded for it; the log keeps what was
confirmed, and the next run reconciles with the vault.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Literal, TypeVar, TypeVarTuple

import trio

from eventbak.core import events as ev
from eventbak.core import plan
from eventbak.core.state import ArchiveState
from eventbak.daemon.bandwidth import Throttle
from eventbak.errors import UploadGone
from eventbak.fsutil import sha256_file
from eventbak.statedir import StateDir
from eventbak.vaults.base import Part, PartRange, Receipt, Vault

#: Archives in transfer at once to a multipart vault (`Transfers.run_all`).
LANES = 2

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def _staged_state(path: Path, sha256: str) -> Literal["ok", "missing", "damaged"]:
    try:
        return "ok" if sha256_file(path) == sha256 else "damaged"
    except FileNotFoundError:
        return "missing"


class Transfers:
    """Runs the upload plan for the archives of one session."""

    def __init__(
        self,
        sd: StateDir,
        vault: Vault,
        session: str,
        stop: threading.Event | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.sd = sd
        self.vault = vault
        self.session = session
        self.stop = stop or threading.Event()
        #: the upload limit, awaited before each part or one-part upload
        self.throttle = throttle
        self._parts: trio.Semaphore | None = None

    def _slots(self) -> trio.Semaphore:
        """Parts in flight, shared by every archive of the session in transfer
        (made on first use, inside the Trio run)."""
        if self._parts is None:
            self._parts = trio.Semaphore(max(1, self.vault.concurrency))
        return self._parts

    def key_of(self, a: ArchiveState) -> str:
        return a.key or self.vault.key_for(a.session, a.id, a.suffix)

    def _staged(self, a: ArchiveState) -> Path:
        return self.sd.staging / a.staged

    def _record(self, *events: ev.Event) -> None:
        for e in events:
            self.sd.record(e)
        self.sd.commit()

    async def _thread(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        # abandoned on cancel: a vault call may hang on the network; its
        # outcome is then unknown and reconciled on the next run
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    async def run(
        self, aid: str, obs: plan.Observed, goal: plan.Goal = "upload", send: bool = True
    ) -> plan.Observed:
        """Step archive `aid` until the plan is done, or (`send=False`, or a
        stop request) until the next step would send bytes. Returns what was
        learnt, to continue from."""
        vault = self.vault
        while True:
            a = self.sd.state.archives[aid]

            def expected(parts: list[Part], sha256: str = a.sha256) -> str:
                return vault.expected_checksum(sha256, parts)

            step = plan.next_step(a, obs, vault.part_size, expected, goal)
            sending = isinstance(step, plan.Put | plan.Begin | plan.SendParts)
            if isinstance(step, plan.Done) or (sending and (not send or self.stop.is_set())):
                return obs
            key = self.key_of(a)
            if isinstance(step, plan.Head):
                obs.held = await self._thread(vault.head, key)
                obs.head = True
            elif isinstance(step, plan.CheckStaged):
                obs.staged = await self._thread(_staged_state, self._staged(a), a.sha256)
            elif isinstance(step, plan.ListParts):
                obs.vault_parts = await self._thread(vault.list_parts, key, step.upload_id)
                obs.parts = True
            elif isinstance(step, plan.Adopt):
                held = step.held
                self._uploaded(a, key, Receipt(key, held.size, held.checksum, held.storage_class))
            elif isinstance(step, plan.Put):
                if not step.again:
                    self._record(self._started(a, key))
                if self.throttle is not None:
                    await self.throttle.take(a.size)
                receipt = await self._thread(vault.put, key, self._staged(a), a.size, a.sha256)
                self._uploaded(a, key, receipt)
            elif isinstance(step, plan.Begin):
                upload_id = await self._thread(vault.begin, key)
                self._record(self._started(a, key, upload_id, step.part_size))
                obs.parts, obs.vault_parts = True, []
            elif isinstance(step, plan.SendParts):
                self._adopt(a, step.upload_id, step.adopt)
                await self._send_parts(a, key, step.upload_id, step.ranges, obs)
            elif isinstance(step, plan.Complete):
                self._adopt(a, step.upload_id, step.adopt)
                try:
                    receipt = await self._thread(
                        vault.complete, key, step.upload_id, list(step.parts), a.size, a.sha256
                    )
                except UploadGone:
                    # it may have completed before an interruption: ask again
                    obs = plan.Observed(staged=obs.staged)
                    continue
                self._uploaded(a, key, receipt)
            elif isinstance(step, plan.Forget):
                self._record(
                    ev.UploadLost(
                        at=time.time(), archive=a.id, upload_id=step.upload_id, reason=step.reason
                    )
                )
                obs = plan.Observed(head=True, held=None, staged=obs.staged)
            elif isinstance(step, plan.Abort):
                await self._thread(vault.abort, key, step.upload_id)
                reason = "session abandoned" if goal == "settle" else f"staged file {obs.staged}"
                self._discard(a, reason)
            elif isinstance(step, plan.Discard):
                self._discard(a, step.reason)

    async def run_all(self, items: AsyncIterable[tuple[str, plan.Observed]]) -> None:
        """Transfer each archive `items` yields, in order of arrival.

        With a multipart vault two archives may be in transfer at once
        (`LANES`), their parts sharing the vault's `concurrency` slots: the
        next archive's parts go up while the previous one's last parts and
        its Complete finish, so the slots never idle between archives. A
        one-part vault takes one archive at a time. The next item is taken
        only when a lane is free: backpressure on whoever feeds `items`."""
        lanes = trio.CapacityLimiter(LANES if self.vault.part_size is not None else 1)

        async def transfer(aid: str, observed: plan.Observed) -> None:
            try:
                await self.run(aid, observed)
            finally:
                lanes.release_on_behalf_of(aid)

        async with trio.open_nursery() as nursery:
            async for aid, observed in items:
                await lanes.acquire_on_behalf_of(aid)
                nursery.start_soon(transfer, aid, observed)

    def _started(
        self, a: ArchiveState, key: str, upload_id: str = "", part_size: int = 0
    ) -> ev.UploadStarted:
        return ev.UploadStarted(
            at=time.time(), archive=a.id, vault=self.vault.ref, key=key,
            upload_id=upload_id, part_size=part_size,
        )  # fmt: skip

    def _adopt(self, a: ArchiveState, upload_id: str, parts: tuple[Part, ...]) -> None:
        if parts:
            self._record(*(self._part_event(a, upload_id, p) for p in parts))

    def _part_event(self, a: ArchiveState, upload_id: str, p: Part) -> ev.PartUploaded:
        return ev.PartUploaded(
            at=time.time(), archive=a.id, upload_id=upload_id, part=p.number, size=p.size,
            checksum=p.checksum, etag=p.etag,
        )  # fmt: skip

    def _uploaded(self, a: ArchiveState, key: str, r: Receipt) -> None:
        self._record(
            ev.ArchiveUploaded(
                at=time.time(), archive=a.id, vault=self.vault.ref, key=r.key or key,
                size=r.size, sha256=a.sha256, checksum=r.checksum, storage_class=r.storage_class,
            )
        )  # fmt: skip
        self._staged(a).unlink(missing_ok=True)  # only once the receipt is durable

    def _discard(self, a: ArchiveState, reason: str) -> None:
        self._record(ev.ArchiveDiscarded(at=time.time(), archive=a.id, reason=reason))
        if a.staged:
            self._staged(a).unlink(missing_ok=True)

    async def _send_parts(
        self,
        a: ArchiveState,
        key: str,
        upload_id: str,
        ranges: tuple[PartRange, ...],
        obs: plan.Observed,
    ) -> None:
        """Send `ranges`, `concurrency` at a time; each part is recorded and
        committed as the vault confirms it. Stops starting parts on a stop
        request; an UploadGone makes the plan list the parts again."""
        path = self._staged(a)
        slots = self._slots()
        gone = False

        async def one(r: PartRange) -> None:
            nonlocal gone
            try:
                if self.throttle is not None:
                    await self.throttle.take(r.length)
                part = await self._thread(
                    self.vault.send_part, key, upload_id, r.number, path, r.offset, r.length
                )
            except UploadGone:
                gone = True
                return
            finally:
                slots.release()
            self._record(self._part_event(a, upload_id, part))
            if obs.vault_parts is not None:
                obs.vault_parts.append(part)

        async with trio.open_nursery() as nursery:
            for r in ranges:
                await slots.acquire()
                if self.stop.is_set() or gone:
                    slots.release()
                    break
                nursery.start_soon(one, r)
        if gone:
            obs.parts = False  # list again: None then, and the upload is forgotten
