"""The runner: the sessions of a set of datasets, one after the other, in one
process. `eventbak backup` calls it; the daemon will too.

What is process-wide lives here, not in a session:

* **One Trio run** for all the datasets (`run`), over one state dir.
* **Signals.** SIGTERM and SIGINT are remembered from the moment the runner
  starts (`EarlySignals`: before Trio runs, a signal would otherwise kill
  the process while the state dir opens), then watched by one task for the
  whole run (`Stopper.watch_signals`), which routes each to the session
  running. The handlers in place before the runner started are put back
  when it ends: nothing process-global is left behind.
* **Deadlines** are on Trio's clock: the wall-clock deadline of the options
  becomes a `trio.current_time()` once, when the run starts, so a test can
  drive it with `trio.testing.MockClock`.
* **The stop policy.** A signal or a deadline pauses the session running and
  stops the run: the datasets after it are not started. An error pauses only
  its own session; the next dataset runs.
* **The exit-code policy** (`exit_code`): the first failed session's
  error's code; else 3 if an entry could not be read (special files are
  skipped by design and do not count); else 0.

What to show is the caller's (`Hooks`): the CLI prints lines and a progress
bar, the daemon will log.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import trio

from eventbak.core.state import SessionState
from eventbak.errors import EXIT_PARTIAL, EventbakError
from eventbak.keys import has_passphrase_key, store_passphrase_keys
from eventbak.pipeline.coordinator import (
    BackupRequest,
    Outcome,
    Progress,
    RunOptions,
    Session,
    dated,
    find_unfinished,
    first_error,
    run_session,
)
from eventbak.statedir import StateDir
from eventbak.vaults import Vault, open_vault

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Why an entry was skipped by design (not a read failure: no exit 3).
SPECIAL_REASONS = frozenset({"fifo", "socket", "character device", "block device", "special file"})


def _nothing(*args: object) -> None:
    return None


@dataclass
class Hooks:
    """What the caller is told, on the Trio thread (all optional)."""

    #: before a dataset's session runs: its request and the unfinished session
    #: it continues (None: a new one)
    starting: Callable[[BackupRequest, SessionState | None], None] = _nothing
    #: a progress callback for the session about to run, or None
    progress: Callable[[BackupRequest], Callable[[Progress], None] | None] = lambda req: None
    #: after a dataset's session ran (completed or paused), with the state dir
    finished: Callable[[Outcome, StateDir], None] = _nothing


class Stopper:
    """Routes stop requests (signals) to the session running, and remembers
    one that comes before any session does (or between two)."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        self.session: Session | None = None
        #: set once a stop is requested (wakes a sleeping daemon)
        self.stopping = trio.Event()
        if reason:
            self.stopping.set()

    def attach(self, session: Session) -> None:
        self.session = session
        if self.reason:
            session.request_stop(self.reason)

    def detach(self) -> None:
        self.session = None

    def request(self, reason: str) -> None:
        if self.session is not None:
            self.session.request_stop(reason)
        if not self.reason:
            self.reason = reason  # the run stops: no dataset after this one starts
        self.stopping.set()

    async def watch_signals(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Drains signals for the whole run, so a second SIGTERM never reaches
        # the default handler (which would kill us mid-shutdown).
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self.request(f"signal {signal.Signals(signum).name}")


class EarlySignals:
    """From `with` on, SIGTERM/SIGINT are remembered instead of killing the
    process (in the main thread; elsewhere nothing is installed); the first
    one is `reason`. Signals in `ignore` (the daemon's SIGHUP) are ignored
    until Trio watches them. The handlers before are put back at the end."""

    def __init__(self, ignore: tuple[signal.Signals, ...] = ()) -> None:
        self.reason = ""
        self.ignore = ignore
        self._before: dict[int, Any] = {}

    def _remember(self, signum: int, frame: FrameType | None) -> None:
        if not self.reason:
            self.reason = f"signal {signal.Signals(signum).name}"

    def __enter__(self) -> EarlySignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._before[sig] = signal.signal(sig, self._remember)
            for sig in self.ignore:
                self._before[sig] = signal.signal(sig, signal.SIG_IGN)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before.clear()


@dataclass
class RunReport:
    outcomes: list[Outcome] = field(default_factory=list)
    #: why the run stopped before its last dataset ("" if it did not)
    stopped: str = ""


async def run_datasets(
    sd: StateDir,
    reqs: list[BackupRequest],
    options: RunOptions | None = None,
    hooks: Hooks | None = None,
    stopper: Stopper | None = None,
    vault_for: Callable[[BackupRequest], Vault] | None = None,
) -> RunReport:
    """Each dataset's session in turn (new or resumed) until one is stopped
    by a signal or the deadline. `vault_for` opens a request's vault (the
    caller's, for a vault it made; else `open_vault`, closed after)."""
    options = options or RunOptions()
    hooks = hooks or Hooks()
    stopper = stopper or Stopper()
    if options.deadline is not None and options.stop_at is None:
        left = max(0.0, options.deadline - time.time())
        options = replace(options, stop_at=trio.current_time() + left)
    report = RunReport()
    async with trio.open_nursery() as nursery:
        if options.signals and threading.current_thread() is threading.main_thread():
            await nursery.start(stopper.watch_signals)
        try:
            for req in reqs:
                req = dated(sd, req, datetime.now())
                # a signal before (or between) sessions pauses the next one at
                # once: it opens or resumes, then records why it stopped
                hooks.starting(req, find_unfinished(sd, req))
                outcome = await _one(sd, req, options, hooks, stopper, vault_for)
                report.outcomes.append(outcome)
                hooks.finished(outcome, sd)
                if outcome.paused_for and not outcome.error:
                    report.stopped = outcome.paused_for
                    break  # a signal or the deadline stops the run; an error, its dataset
        finally:
            nursery.cancel_scope.cancel()
    return report


async def _one(
    sd: StateDir,
    req: BackupRequest,
    options: RunOptions,
    hooks: Hooks,
    stopper: Stopper,
    vault_for: Callable[[BackupRequest], Vault] | None,
) -> Outcome:
    return await one_session(sd, req, options, stopper, hooks.progress(req), vault_for)


async def one_session(
    sd: StateDir,
    req: BackupRequest,
    options: RunOptions,
    stopper: Stopper,
    on_progress: Callable[[Progress], None] | None = None,
    vault_for: Callable[[BackupRequest], Vault] | None = None,
) -> Outcome:
    """One run of a request's session (new or resumed) in its vault, opened
    here unless `vault_for` gives it (then the caller's): passphrase keys go
    in first (a new vault is prepared for them)."""
    if vault_for is not None:
        vault = vault_for(req)
    else:
        vault = open_vault(req.vault_url, req.vault_options)
    try:
        if has_passphrase_key(sd.root, req.recipients):
            await trio.to_thread.run_sync(vault.prepare)  # a new vault before its first key
            await trio.to_thread.run_sync(store_passphrase_keys, sd.root, req.recipients, vault)
        return await run_session(sd, req, vault, on_progress, options, stopper)
    finally:
        stopper.detach()
        if vault_for is None:
            vault.close()


def run(
    state_dir: Path,
    reqs: list[BackupRequest],
    options: RunOptions | None = None,
    hooks: Hooks | None = None,
    opened: Callable[[StateDir], None] = _nothing,
) -> RunReport:
    """The whole run in this process: signals remembered from now on, the
    state dir opened (`opened` is told, e.g. of a torn tail cut), one Trio
    run over the datasets."""
    with EarlySignals() as early:
        sd = StateDir.open(state_dir)
        try:
            opened(sd)
            stopper = Stopper(early.reason)
            return trio.run(_unwrapped, run_datasets, sd, reqs, options, hooks, stopper)
        finally:
            sd.close()


async def _unwrapped(fn: Callable[..., Awaitable[RunReport]], *args: Any) -> RunReport:
    """`fn(*args)`, with a user-facing error out of the nurseries' groups."""
    try:
        return await fn(*args)
    except BaseExceptionGroup as group:
        first = first_error(group)
        if isinstance(first, EventbakError):
            raise first from None
        raise


async def run_backup(
    sd: StateDir,
    req: BackupRequest,
    vault: Vault,
    on_progress: Callable[[Progress], None] | None = None,
    options: RunOptions | None = None,
) -> Outcome:
    """One dataset's session in a Trio run of the caller's (tests, tools):
    signals watched while it runs, in the main thread."""
    hooks = Hooks(progress=lambda req: on_progress)
    report = await _unwrapped(
        run_datasets, sd, [req], options, hooks, Stopper(), lambda r: vault
    )
    return report.outcomes[0]


def exit_code(outcomes: list[Outcome]) -> int:
    """The run's exit code: the first failed session's error's; else 3 if an
    entry could not be read (special files are skipped by design); else 0."""
    failed = [o for o in outcomes if o.error]
    if failed:
        return failed[0].exit_code
    for o in outcomes:
        if any(reason not in SPECIAL_REASONS for reason in o.session.skipped.values()):
            return EXIT_PARTIAL
    return 0

