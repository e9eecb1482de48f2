"""`eventbak daemon`: the datasets' sessions, inside the backup windows, for
months, in one process that never loses its place.

The loop, on Trio's clock (a `WallClock` maps it to wall time, so tests
drive the daemon with `trio.testing.MockClock`):

1. For each dataset, `schedule.decide` says, from the log (its unfinished
   session, when its last session completed) and the clock alone: resume,
   start, or sleep until when. A decision that differs from the last one
   recorded for the dataset is recorded (`ScheduleDecided`, with why).
2. The first dataset to resume or start runs its session through the
   runner's `run_session`, with the window's end as its deadline: at the
   end of the window it pauses as on SIGTERM, and resumes in the next one.
3. Otherwise the daemon sleeps until the earliest wake-up, or until a
   signal.

A session that pauses on an error is tried again after `RETRY` (or at its
window's next opening); after `max_failures` error pauses in a row it is
failed (`SessionFailed`, with the last error) and the next session of the
dataset starts afresh when due. SIGTERM and SIGINT stop the daemon: the
session running pauses as for `backup` (grace period, `SessionPaused`) and
the daemon returns, exit 0. One daemon per state dir: it holds the state
dir's lock for its whole life (`status`, `restore`, `inspect` only read).
"""

from __future__ import annotations

import datetime as dt
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import trio

from eventbak.core import events as ev
from eventbak.core.state import SessionState
from eventbak.daemon import metrics
from eventbak.daemon.schedule import Decision, Windows, decide
from eventbak.errors import EventbakError
from eventbak.pipeline.coordinator import (
    BackupRequest,
    Outcome,
    RunOptions,
    dated,
    find_unfinished,
)
from eventbak.runner import EarlySignals, Stopper, one_session
from eventbak.statedir import StateDir
from eventbak.vaults import Vault

#: How long after an error a session is tried again (if its window is still open).
RETRY = dt.timedelta(minutes=5)


class WallClock:
    """Wall time on Trio's clock: what `time.time()` said when it was made,
    plus the Trio time since. Under a MockClock both jump together."""

    def __init__(self, wall: float | None = None) -> None:
        self._wall0 = time.time() if wall is None else wall
        self._trio0 = trio.current_time()

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(
            self._wall0 + trio.current_time() - self._trio0, dt.UTC
        )

    def trio_time(self, at: dt.datetime) -> float:
        return self._trio0 + at.timestamp() - self._wall0


@dataclass
class Plan:
    """What the daemon runs: the datasets and the schedule (from the config)."""

    reqs: list[BackupRequest]
    windows: Windows
    tz: dt.tzinfo
    every: dt.timedelta
    max_failures: int = 3
    options: RunOptions = field(default_factory=RunOptions)
    #: rewritten (atomically) each time the daemon decides or a session ends
    metrics_file: Path | None = None
    #: dataset -> (before, after) commands around each run of its sessions
    hooks: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)


def _last_completed(sd: StateDir, req: BackupRequest) -> dt.datetime | None:
    """When the latest completed session of the request's lineage completed."""
    last: SessionState | None = None
    for s in sd.state.sessions.values():
        if s.dataset == req.dataset and s.paths == req.paths and s.state == "completed":
            last = s
    return None if last is None else dt.datetime.fromtimestamp(last.updated_at, dt.UTC)


def _error_streak(s: SessionState) -> int:
    """Error pauses at the end of the session's pauses (in a row)."""
    n = 0
    for reason in reversed(s.pauses):
        if not reason.startswith("error"):
            break
        n += 1
    return n


class Reload:
    """SIGHUP: the config read again, taken at the daemon's next decision (a
    session running goes on with the old one). `load` returns the new plan
    or raises an EventbakError saying why it cannot (the old plan stays)."""

    def __init__(self, load: Callable[[], Plan]) -> None:
        self.load = load
        self.requested = trio.Event()

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                self.requested.set()


async def serve(
    sd: StateDir,
    plan: Plan,
    stopper: Stopper,
    clock: WallClock | None = None,
    say: Callable[[dict[str, Any]], None] = lambda line: None,
    vault_for: Callable[[BackupRequest], Vault] | None = None,
    reload: Reload | None = None,
) -> None:
    """Run until `stopper` stops (a signal): decide, run or sleep, again."""
    clock = clock or WallClock()
    retry_at: dict[str, dt.datetime] = {}
    # when this daemon saw each dataset's session complete, on its own clock
    # (the log's stamps are wall-clock: the same in production, behind a
    # test's MockClock, which only this clock follows)
    seen_done: dict[str, dt.datetime] = {}
    while not stopper.reason:
        if reload is not None and reload.requested.is_set():
            reload.requested = trio.Event()
            plan = _reloaded(plan, reload, say)
        _write_metrics(sd, plan, clock, say)
        now = clock.now()
        chosen: tuple[BackupRequest, Decision] | None = None
        wake: dt.datetime | None = None
        for req in plan.reqs:
            req = dated(sd, req, now.astimezone(plan.tz))
            unfinished = find_unfinished(sd, req)
            if _fail_if_stuck(sd, unfinished, plan.max_failures, say):
                unfinished = None  # failed: the dataset starts afresh when due
            done = _last_completed(sd, req)
            if req.dataset in seen_done and (done is None or seen_done[req.dataset] > done):
                done = seen_done[req.dataset]
            d = decide(
                now, plan.windows, plan.tz, plan.every, unfinished.id if unfinished else None, done
            )
            if d.action != "sleep" and retry_at.get(req.dataset, now) > now:
                until = retry_at[req.dataset]
                d = Decision("sleep", until, f"retrying after an error at {until:%H:%M:%S} UTC")
            _record(sd, req.dataset, d, say, unfinished.id if unfinished else "")
            if d.action != "sleep" and chosen is None:
                chosen = (req, d)
            elif d.action == "sleep" and d.until is not None:
                wake = d.until if wake is None else min(wake, d.until)
        if chosen is not None:
            req, d = chosen
            try:
                outcome = await _run(sd, plan, req, d, stopper, clock, vault_for)
            except EventbakError as exc:  # before a session ran: the vault, the base...
                say({"event": "error", "dataset": req.dataset, "error": str(exc)})
                retry_at[req.dataset] = clock.now() + RETRY
                continue
            say({"event": "session", "dataset": req.dataset, "session": outcome.session.id,
                 "state": outcome.state, "paused_for": outcome.paused_for})  # fmt: skip
            sd.checkpoint()  # status and a restart fold only what follows
            if outcome.error:
                retry_at[req.dataset] = clock.now() + RETRY
            elif outcome.state == "completed":
                seen_done[req.dataset] = clock.now()
            continue
        await _sleep(stopper, clock.trio_time(wake) if wake is not None else None, reload)


def _reloaded(plan: Plan, reload: Reload, say: Callable[[dict[str, Any]], None]) -> Plan:
    try:
        new = reload.load()
    except EventbakError as exc:
        say({"event": "reload", "ok": False, "error": str(exc), "kept": "the old config"})
        return plan
    say({"event": "reload", "ok": True, "datasets": [r.dataset for r in new.reqs]})
    return new


def _write_metrics(
    sd: StateDir, plan: Plan, clock: WallClock, say: Callable[[dict[str, Any]], None]
) -> None:
    if plan.metrics_file is None:
        return
    windows = None if plan.windows.always else plan.windows
    reg = metrics.registry(sd.state, clock.now(), windows, plan.tz)
    try:
        metrics.write_file(plan.metrics_file, reg)
    except OSError as exc:  # the metrics are not worth stopping the backups for
        say({"event": "error", "error": f"metrics_file {plan.metrics_file}: {exc.strerror}"})


def _fail_if_stuck(
    sd: StateDir, s: SessionState | None, max_failures: int, say: Callable[[dict[str, Any]], None]
) -> bool:
    """Mark `s` failed if its last `max_failures` pauses were errors (True then)."""
    if s is None or s.state != "paused" or _error_streak(s) < max_failures:
        return False
    error = s.pauses[-1].removeprefix("error: ")
    why = f"{max_failures} errors in a row, the last: {error}"
    sd.record(ev.SessionFailed(at=time.time(), session=s.id, error=why))
    sd.commit()
    say({"event": "failed", "dataset": s.dataset, "session": s.id, "error": why})
    return True


def _record(
    sd: StateDir,
    dataset: str,
    d: Decision,
    say: Callable[[dict[str, Any]], None],
    session: str = "",
) -> None:
    last = sd.state.decisions.get(dataset)
    until = d.until.timestamp() if d.until is not None else 0.0
    if last is not None and (last.action, last.until, last.why) == (d.action, until, d.why):
        return
    sd.record(
        ev.ScheduleDecided(at=time.time(), dataset=dataset, action=d.action, until=until, why=d.why)
    )
    sd.commit()
    line = {"event": "decided", "dataset": dataset, "action": d.action, "why": d.why}
    say({**line, "session": session} if session else line)


async def _run(
    sd: StateDir,
    plan: Plan,
    req: BackupRequest,
    d: Decision,
    stopper: Stopper,
    clock: WallClock,
    vault_for: Callable[[BackupRequest], Vault] | None,
) -> Outcome:
    before, after = plan.hooks.get(req.dataset, ([], []))
    try:
        for command in before:
            if await _hook(sd, req.dataset, "before", command) != 0:
                raise EventbakError(f"before hook {command!r} failed: the run is skipped")
        stop_at = clock.trio_time(d.until) if d.until is not None else None
        options = replace(plan.options, stop_at=stop_at, deadline=None, signals=False)
        return await one_session(sd, req, options, stopper, None, vault_for)
    finally:
        for command in after:  # always, whatever happened before
            with trio.CancelScope(shield=True):
                await _hook(sd, req.dataset, "after", command)


#: The most a hook may take, and the most of its output kept.
HOOK_TIMEOUT = 3600.0
HOOK_OUTPUT = 4096


async def _hook(sd: StateDir, dataset: str, when: Literal["before", "after"], command: str) -> int:
    """Run one hook (split like a shell line, run without a shell) in a
    thread; record it (`HookRan`) with the end of its output."""
    code, output = await trio.to_thread.run_sync(_run_hook, command)
    sd.record(
        ev.HookRan(
            at=time.time(), dataset=dataset, when=when, command=command, exit_code=code,
            output=output,
        )
    )  # fmt: skip
    sd.commit()
    return code


def _run_hook(command: str) -> tuple[int, str]:
    try:
        done = subprocess.run(
            shlex.split(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=HOOK_TIMEOUT, check=False,
        )  # fmt: skip
    except FileNotFoundError as exc:
        return 127, f"{exc.strerror}: {exc.filename}"
    except subprocess.TimeoutExpired:
        return -9, f"killed after {HOOK_TIMEOUT:.0f} s"
    except (OSError, ValueError) as exc:
        return 126, str(exc)
    return done.returncode, done.stdout[-HOOK_OUTPUT:].decode(errors="replace")


async def _sleep(stopper: Stopper, until: float | None, reload: Reload | None = None) -> None:
    """Until the Trio time `until` (None: for ever), a stop request or SIGHUP."""
    with trio.move_on_at(until if until is not None else float("inf")) as scope:
        async with trio.open_nursery() as nursery:

            async def wake_on(event: trio.Event) -> None:
                await event.wait()
                scope.cancel()

            nursery.start_soon(wake_on, stopper.stopping)
            if reload is not None:
                nursery.start_soon(wake_on, reload.requested)


def run(
    state_dir: Path,
    plan: Plan,
    say: Callable[[dict[str, Any]], None],
    load: Callable[[], Plan] | None = None,
) -> None:
    """`eventbak daemon`: the state dir held (its lock) for the daemon's life,
    signals watched from the start (the runner's `EarlySignals`, then one
    Trio watcher), `serve` until SIGTERM or SIGINT."""
    with EarlySignals(ignore=(signal.SIGHUP,)) as early:
        sd = StateDir.open(state_dir)
        try:
            say({"event": "started", "state_dir": str(state_dir),
                 "datasets": [r.dataset for r in plan.reqs]})  # fmt: skip
            reload = Reload(load) if load is not None else None
            trio.run(_watched, sd, plan, Stopper(early.reason), say, reload)
        finally:
            sd.close()
    say({"event": "stopped"})


async def _watched(
    sd: StateDir,
    plan: Plan,
    stopper: Stopper,
    say: Callable[[dict[str, Any]], None],
    reload: Reload | None,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(stopper.watch_signals)
        if reload is not None:
            await nursery.start(reload.watch)
        await serve(sd, plan, stopper, None, say, reload=reload)
        nursery.cancel_scope.cancel()
