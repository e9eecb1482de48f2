"""The daemon's loop (eventbak/daemon/service.py) on Trio's clock, driven by
pytest-trio's autojump clock: hours pass in a moment while the daemon
sleeps, the backups are real. (The clock jumps only when every task waits
on a timer: no task here polls, so a session's own time is real time, and
the log's timestamps, which are wall-clock, agree with the daemon's.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from eventbak.config import Compression
from eventbak.core import events as ev
from eventbak.core.log import read_log
from eventbak.daemon import service
from eventbak.daemon.schedule import parse_every, parse_timezone, parse_windows
from eventbak.pipeline.coordinator import BackupRequest
from eventbak.pipeline.scanner import normalize_roots
from eventbak.runner import Stopper
from eventbak.statedir import StateDir, log_path, read_state
from tests import crashutil as cu
from tests.treeutil import describe, restore_all


def _req(src: Path, vault: Path) -> BackupRequest:
    return BackupRequest(
        dataset="home", paths=normalize_roots([os.fsencode(src)]),
        vault_url=f"file://{vault}", archive_size=1024 * 1024,
        compression=Compression("auto"), exclude=[],
    )  # fmt: skip


def _plan(src: Path, vault: Path, windows: str, every: str) -> service.Plan:
    return service.Plan(
        [_req(src, vault)], parse_windows(windows), parse_timezone("UTC"), parse_every(every)
    )


def _stop_after(n: int, event: str, stopper: Stopper, lines: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    """A `say` that keeps the daemon's lines and stops it (as SIGTERM would)
    once `n` lines of `event` came: right after that, before it decides again."""

    def say(line: dict[str, object]) -> None:
        lines.append(line)
        if sum(x.get("event") == event for x in lines) >= n:
            stopper.request("signal SIGTERM")

    return say


async def test_a_new_session_every_hour_each_building_on_the_last(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    sd = StateDir.open(tmp_path / "state")
    lines: list[dict[str, object]] = []
    try:
        stopper = Stopper()
        clock = service.WallClock()
        start = clock.now()
        plan = _plan(src, tmp_path / "vault", "always", "1h")
        await service.serve(sd, plan, stopper, clock, _stop_after(3, "session", stopper, lines))
        sessions = list(sd.state.sessions.values())
        assert clock.now() - start >= dt.timedelta(hours=2)  # two hours of virtual time
    finally:
        sd.close()
    assert [s.state for s in sessions] == ["completed"] * 3
    assert [s.base for s in sessions] == ["", sessions[0].id, sessions[1].id]
    decided = [r.event for r in read_log(log_path(tmp_path / "state")).records]
    actions = [e.action for e in decided if isinstance(e, ev.ScheduleDecided)]
    assert actions[:3] == ["start", "sleep", "start"]
    assert any(line.get("event") == "session" for line in lines)


async def test_outside_its_window_the_daemon_sleeps_then_works_at_the_opening(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A window two hours from now: the daemon sleeps until it opens, then
    starts the session with the window's end as its deadline. (Under the
    autojump clock the deadline comes as soon as every task waits on a
    thread, so the session may pause at once: then a daemon whose window is
    always open resumes it, and the backup restores identical.)"""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    sd = StateDir.open(tmp_path / "state")
    try:
        clock = service.WallClock()
        opens = (clock.now() + dt.timedelta(hours=2)).replace(microsecond=0)
        closes = opens + dt.timedelta(hours=1)
        plan = _plan(src, tmp_path / "vault", f"{opens:%H:%M:%S}-{closes:%H:%M:%S}", "daily")
        stopper = Stopper()
        lines: list[dict[str, object]] = []
        await service.serve(sd, plan, stopper, clock, _stop_after(1, "session", stopper, lines))
        (s,) = sd.state.sessions.values()
        assert s.state == "completed" or s.pauses == ["deadline"]
        stopper = Stopper()
        always = _plan(src, tmp_path / "vault", "always", "daily")
        await service.serve(sd, always, stopper, clock, _stop_after(1, "session", stopper, []))
        (s,) = sd.state.sessions.values()
    finally:
        sd.close()
    assert s.state == "completed"
    events = [r.event for r in read_log(log_path(tmp_path / "state")).records]
    decisions = [e for e in events if isinstance(e, ev.ScheduleDecided)]
    assert (decisions[0].action, decisions[0].until) == ("sleep", opens.timestamp())
    assert (decisions[1].action, decisions[1].until) == ("start", closes.timestamp())
    opened = next(i for i, e in enumerate(events) if isinstance(e, ev.SessionOpened))
    assert events.index(decisions[1]) < opened
    back = tmp_path / "back"
    restore_all(tmp_path / "state", back)
    assert describe(back / str(src).lstrip("/")) == describe(src)


async def test_a_session_failing_again_and_again_is_failed_and_the_daemon_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A vault that refuses every write: each try pauses the session on the
    error; after max_failures in a row it is failed, with the error."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    vault = tmp_path / "vault"
    vault.mkdir()
    sd = StateDir.open(tmp_path / "state")

    class Refusing:  # the local vault, whose put always fails (a full disk, say)
        def __init__(self) -> None:
            from eventbak.vaults import open_vault

            self.inner = open_vault(f"file://{vault}")

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def put(self, *args: object) -> object:
            from eventbak.errors import VaultError

            raise VaultError("vault: No space left on device")

    try:
        stopper = Stopper()
        plan = _plan(src, vault, "always", "1h")
        plan.max_failures = 2
        say = _stop_after(1, "failed", stopper, [])
        refusing = Refusing()
        await service.serve(
            sd, plan, stopper, service.WallClock(), say, vault_for=lambda r: refusing  # type: ignore[arg-type,return-value]
        )
        s = next(iter(sd.state.sessions.values()))
    finally:
        sd.close()
    assert s.state == "failed" and "No space left on device" in s.error and "2 errors" in s.error
    assert [p.startswith("error") for p in s.pauses] == [True, True]


# -- `eventbak daemon` as a process: real signals -----------------------------------


def _config(tmp: Path, src: Path, windows: str = "always", every: str = "1h") -> Path:
    config = tmp / "eventbak.toml"
    config.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        f'[vaults.v]\nurl = "file://{tmp / "vault"}"\narchive_size = "64KiB"\n'
        f'[[datasets]]\nname = "home"\npaths = ["{src}"]\n'
        f'[schedule]\nwindows = "{windows}"\nevery = "{every}"\n'
        f'metrics_file = "{tmp / "metrics.prom"}"\n'
    )
    return config


def _start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventbak", "--config", str(config), "daemon", "--grace", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow
def test_the_daemon_process_backs_up_then_stops_on_sigterm_and_resumes_a_paused_session(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    cu.make_tree(src)
    config = _config(tmp_path, src)
    state = tmp_path / "state"
    # SIGTERM in the middle of the first session: it pauses, the daemon exits 0
    proc = _start(config)
    cu.wait_until(state, proc, lambda evs: any(isinstance(e, ev.ArchiveSealed) for e in evs))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in err.decode().splitlines()]  # JSON: stderr is a pipe
    assert lines[0]["event"] == "started" and lines[-1]["event"] == "stopped"
    (s,) = read_state(state)[0].sessions.values()
    assert s.state in ("paused", "completed")
    # started again: it resumes (or, if it had completed, sleeps: not due for an hour)
    proc = _start(config)
    cu.wait_until(
        state, proc, lambda evs: any(isinstance(e, ev.SessionCompleted) for e in evs)
    )
    sleeping = lambda evs: isinstance(evs[-1], ev.ScheduleDecided) and evs[-1].action == "sleep"  # noqa: E731
    cu.wait_until(state, proc, sleeping)
    # one daemon per state dir: a second one is refused, in one line
    second = subprocess.run(
        [sys.executable, "-m", "eventbak", "--config", str(config), "daemon"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1 and f"in use by another eventbak process (pid {proc.pid})" in (
        second.stderr
    ), second.stderr
    assert (state / "checkpoint").exists()  # written after each session, not only at exit
    # beside the running daemon: status reads (no lock), and names it
    status = subprocess.run(
        [sys.executable, "-m", "eventbak", "--config", str(config), "status"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert f"eventbak process running: pid {proc.pid}" in status.stdout
    assert "daemon, dataset home: sleep until" in status.stdout
    assert (tmp_path / "metrics.prom").read_text().count("eventbak_session_state") > 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    st, _ = read_state(state)
    assert [x.state for x in st.sessions.values()] == ["completed"]
    back = tmp_path / "back"
    restore_all(state, back)
    assert describe(back / str(src).lstrip("/")) == describe(src)


async def test_hooks_run_around_each_run_and_a_failing_before_skips_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """`before` fails: no session opens, `after` runs all the same, both are
    in the log with their output; fixed, the next try backs up."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    flag, trace = tmp_path / "ok", tmp_path / "trace"
    before = f"sh -c 'echo snapshot; test -e {flag}'"
    after = f"sh -c 'echo released >> {trace}'"
    sd = StateDir.open(tmp_path / "state")
    try:
        plan = _plan(src, tmp_path / "vault", "always", "1h")
        plan.hooks = {"home": ([before], [after])}
        for until in ("error", "session"):  # the first try fails its hook, the next works
            if until == "session":
                assert not sd.state.sessions
                flag.touch()
            stopper = Stopper()
            say = _stop_after(1, until, stopper, [])
            await service.serve(sd, plan, stopper, service.WallClock(), say)
        (s,) = sd.state.sessions.values()
    finally:
        sd.close()
    assert s.state == "completed"
    hooks = [r.event for r in read_log(log_path(tmp_path / "state")).records
             if isinstance(r.event, ev.HookRan)]  # fmt: skip
    assert [(h.when, h.exit_code) for h in hooks] == [
        ("before", 1), ("after", 0), ("before", 0), ("after", 0)
    ]
    assert hooks[0].output == "snapshot\n" and hooks[0].command == before
    assert trace.read_text() == "released\nreleased\n"


@pytest.mark.slow
def test_sighup_reads_the_config_again_and_keeps_the_old_one_if_it_is_bad(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    config = _config(tmp_path, src, every="1h")
    state = tmp_path / "state"
    proc = _start(config)

    def sleeping(evs: list[ev.Event]) -> bool:
        return isinstance(evs[-1], ev.ScheduleDecided) and evs[-1].action == "sleep"

    def sessions(n: int) -> object:
        return lambda evs: sum(isinstance(e, ev.SessionCompleted) for e in evs) >= n

    cu.wait_until(state, proc, sessions(1))
    cu.wait_until(state, proc, sleeping)
    good = config.read_text()
    config.write_text(good.replace('windows = "always"', 'windows = "25:00-06:00"'))
    proc.send_signal(signal.SIGHUP)
    config_fixed = good.replace('every = "1h"', 'every = "1s"')
    # the bad config is refused (logged), the daemon sleeps on; then a good one
    # whose cadence makes a session due at once: a second session follows
    refused = b'"ok": false'
    out = b""
    assert proc.stderr is not None
    while refused not in out:
        line = proc.stderr.readline()
        assert line, "the daemon ended"
        out += line
    assert b"schedule.windows" in out
    config.write_text(config_fixed)
    proc.send_signal(signal.SIGHUP)
    cu.wait_until(state, proc, sessions(2))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    st, _ = read_state(state)
    first, second = st.sessions.values()
    assert second.base == first.id and second.state == "completed"


@pytest.mark.slow
def test_a_session_spanning_three_short_windows_completes_and_restores(tmp_path: Path) -> None:
    """Five windows of 3 s, 2 s apart, and 8 MiB to upload at 1MiB/s: the
    session cannot fit in fewer than three windows (the limit bounds it from
    above), pauses at each window's end, resumes in the next, and completes."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(32):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(256 * 1024))
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    windows = []
    for k in range(5):
        opens = start + dt.timedelta(seconds=5 * k)
        windows.append(f"{opens:%H:%M:%S}-{opens + dt.timedelta(seconds=3):%H:%M:%S}")
    config = _config(tmp_path, src, windows="X", every="1h")
    config.write_text(
        config.read_text()
        .replace('windows = "X"', "windows = [" + ", ".join(f'"{w}"' for w in windows) + "]")
        .replace("[schedule]\n", '[schedule]\ntimezone = "UTC"\nupload_limit = "1MiB/s"\n')
    )
    state = tmp_path / "state"
    proc = _start(config)
    try:
        done = lambda evs: any(isinstance(e, ev.SessionCompleted) for e in evs)  # noqa: E731
        cu.wait_until(state, proc, done, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    st, _ = read_state(state)
    (s,) = st.sessions.values()
    assert s.state == "completed"
    assert len(s.pauses) >= 2 and set(s.pauses) == {"deadline"}, s.pauses
    events = [r.event for r in read_log(log_path(state)).records]
    sleeps = [e for e in events if isinstance(e, ev.ScheduleDecided) and e.action == "sleep"]
    assert len(sleeps) >= 3  # before the first window, and between the windows
    back = tmp_path / "back"
    restore_all(state, back)
    assert describe(back / str(src).lstrip("/")) == describe(src)


async def test_an_unexpected_exception_pauses_the_session_with_it_and_ends_the_daemon(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A bug (here: a vault step raising RuntimeError) is not an error to
    retry: the session is paused with it in the log, and the exception ends
    the daemon (exit non-zero, for the supervisor to restart it)."""

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    vault = tmp_path / "vault"

    class Buggy:
        def __init__(self) -> None:
            from eventbak.vaults import open_vault

            self.inner = open_vault(f"file://{vault}")

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def put(self, *args: object) -> object:
            raise RuntimeError("a bug in the vault")

    sd = StateDir.open(tmp_path / "state")
    try:
        buggy = Buggy()
        with pytest.raises(BaseException) as info:
            await service.serve(
                sd, _plan(src, vault, "always", "1h"), Stopper(), service.WallClock(),
                vault_for=lambda r: buggy,  # type: ignore[arg-type,return-value]
            )  # fmt: skip
        assert "a bug in the vault" in repr(info.value) or any(
            "a bug in the vault" in str(e) for e in getattr(info.value, "exceptions", [])
        )
        (s,) = sd.state.sessions.values()
    finally:
        sd.close()
    assert s.state == "paused"
    assert s.pauses == ["error: unexpected RuntimeError: a bug in the vault"]


def test_status_gives_the_last_completed_session_and_what_the_last_one_stored(
    tmp_path: Path,
) -> None:
    from tests.treeutil import backup

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    first = backup(tmp_path / "state", tmp_path / "vault", [src])
    (src / "b.bin").write_bytes(os.urandom(20_000))
    second = backup(tmp_path / "state", tmp_path / "vault", [src])
    done = subprocess.run(
        [sys.executable, "-m", "eventbak", "--state-dir", str(tmp_path / "state"), "status",
         "--json"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert st["session"] == second.session.id
    assert st["last_completed"]["session"] == second.session.id
    assert st["bytes_expected"] == first.session.bytes == 50_000
    assert st["bytes_remaining"] == 50_000 - 20_000
    assert st["running_pid"] is None and st["daemon"] == {}


@pytest.mark.slow
@pytest.mark.parametrize("s3_server", ["moto"], indirect=True)
def test_windows_shorter_than_an_archive_still_make_progress_part_by_part(
    tmp_path: Path, s3_bucket: object
) -> None:
    """One 20 MiB archive in 5 MiB parts at 4MiB/s (5 s of upload) through
    windows of 2 s: every window records the parts the vault confirmed, the
    next one sends only the others (no part number twice), and the archive
    completes across windows and restores identical."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(19 * 1024 * 1024))
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    windows = [
        f"{start + dt.timedelta(seconds=4 * k):%H:%M:%S}-"
        f"{start + dt.timedelta(seconds=4 * k + 2):%H:%M:%S}"
        for k in range(8)
    ]
    url = s3_bucket.url(part_size="5MiB", concurrency=1)  # type: ignore[attr-defined]
    state = tmp_path / "state"
    config = tmp_path / "eventbak.toml"
    config.write_text(
        f'state_dir = "{state}"\n[vaults.v]\nurl = "{url}"\narchive_size = "32MiB"\n'
        f'[[datasets]]\nname = "home"\npaths = ["{src}"]\ncompression = "none"\n'
        '[schedule]\ntimezone = "UTC"\nupload_limit = "4MiB/s"\nevery = "1h"\n'
        "windows = [" + ", ".join(f'"{w}"' for w in windows) + "]\n"
    )
    proc = _start(config)
    try:
        done = lambda evs: any(isinstance(e, ev.SessionCompleted) for e in evs)  # noqa: E731
        cu.wait_until(state, proc, done, timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    events = [r.event for r in read_log(log_path(state)).records]
    parts = [e.part for e in events if isinstance(e, ev.PartUploaded)]
    assert sorted(parts) == [1, 2, 3, 4] == sorted(set(parts))  # each part sent once
    runs: list[list[int]] = [[]]
    for e in events:
        if isinstance(e, ev.SessionPaused):
            runs.append([])
        elif isinstance(e, ev.PartUploaded):
            runs[-1].append(e.part)
    assert sum(1 for r in runs if r) >= 2, runs  # the parts went out over two windows or more
    back = tmp_path / "back"
    restore_all(state, back)
    assert describe(back / str(src).lstrip("/")) == describe(src)
