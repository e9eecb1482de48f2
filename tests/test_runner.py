"""The runner (eventbak/runner.py): datasets in one Trio run, the stop and
exit-code policies, deadlines on Trio's clock, signal handlers put back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import trio
import trio.testing

from eventbak import runner
from eventbak.config import Compression
from eventbak.core.state import SessionState
from eventbak.errors import EXIT_PARTIAL, EXIT_VAULT_UNREACHABLE
from eventbak.pipeline.coordinator import BackupRequest, Outcome, RunOptions
from eventbak.pipeline.scanner import normalize_roots
from eventbak.statedir import StateDir
from tests.crashutil import make_tree
from tests.treeutil import describe, restore_all


def _request(dataset: str, src: Path, vault: Path) -> BackupRequest:
    return BackupRequest(
        dataset=dataset, paths=normalize_roots([os.fsencode(src)]),
        vault_url=f"file://{vault}", archive_size=64 * 1024,
        compression=Compression("auto"), exclude=[],
    )  # fmt: skip


async def test_a_deadline_on_trios_clock_pauses_the_run_and_the_next_run_finishes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An hour's deadline, with the clock jumping whenever every task waits:
    the first dataset's session pauses for the deadline (without an hour
    passing) and the second dataset is not started; a run without a
    deadline resumes the first, starts the second, and both restore."""
    one, two, vault = tmp_path / "one", tmp_path / "two", tmp_path / "vault"
    make_tree(one, files=200)
    make_tree(two, files=20, seed=3)
    reqs = [_request("one", one, vault), _request("two", two, vault)]
    sd = StateDir.open(tmp_path / "state")
    try:
        options = RunOptions(deadline=time.time() + 3600, grace=5)
        report = await runner.run_datasets(sd, reqs, options)
        assert [o.session.dataset for o in report.outcomes] == ["one"]
        assert report.outcomes[0].paused_for == "deadline" == report.stopped
        assert trio.current_time() >= 3600  # the clock jumped; the wall clock did not
        again = await runner.run_datasets(sd, reqs, RunOptions())
    finally:
        sd.close()
    assert [(o.session.dataset, o.state, o.resumed) for o in again.outcomes] == [
        ("one", "completed", True),
        ("two", "completed", False),
    ]
    assert again.stopped == ""
    for src in (one, two):
        back = tmp_path / f"back-{src.name}"
        restore_all(tmp_path / "state", back, [os.fsencode(src)])
        assert describe(back / str(src).lstrip("/")) == describe(src)


def test_the_signal_handlers_are_put_back_after_a_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, files=5)

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, mine)
    try:
        report = runner.run(tmp_path / "state", [_request("d", src, tmp_path / "v")])
        assert report.outcomes[0].state == "completed"
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_signal_before_the_first_session_pauses_it_at_once(tmp_path: Path) -> None:
    """SIGTERM while the state dir opens (before Trio runs) is remembered:
    the session opens and pauses for it; nothing is packed."""
    src = tmp_path / "src"
    make_tree(src, files=5)

    def opened(sd: StateDir) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the early handler

    report = runner.run(
        tmp_path / "state", [_request("d", src, tmp_path / "v")], opened=opened
    )
    (outcome,) = report.outcomes
    assert outcome.paused_for == "signal SIGTERM" and outcome.run_files == 0


def _outcome(skipped: dict[bytes, str], error: str = "", code: int = 0) -> Outcome:
    s = SessionState(
        id="s", dataset="d", vault="file:///v", paths=[b"/x"], exclude=[], archive_size=1,
        compression="auto", opened_at=0.0, skipped=skipped,
    )  # fmt: skip
    return Outcome(s, 0.0, error=error, exit_code=code)


def test_the_exit_code_is_the_first_errors_then_unreadable_entries() -> None:
    assert runner.exit_code([]) == 0
    assert runner.exit_code([_outcome({b"/x/fifo": "fifo"})]) == 0  # skipped by design
    assert runner.exit_code([_outcome({b"/x/f": "unreadable: Permission denied"})]) == EXIT_PARTIAL
    failed = _outcome({}, "vault gone", EXIT_VAULT_UNREACHABLE)
    assert runner.exit_code([_outcome({b"/x/f": "vanished"}), failed]) == EXIT_VAULT_UNREACHABLE
