"""Run `eventbak backup` as a real subprocess, watch its event log from outside,
interrupt it with real signals, and check what the vault ends up holding."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from eventbak.core import events as ev
from eventbak.core.log import read_log
from eventbak.statedir import log_path, read_state
from tests.treeutil import describe, restore_all

ARCHIVE_SIZE = 64 * 1024


def make_tree(root: Path, files: int = 300, seed: int = 7) -> None:
    """A few hundred files (text and random), nested, plus one split file."""
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"dir{i % 9}" / f"sub{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(0, 24 * 1024)
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = (b"row %d of file %d, " % (i, i) * (size // 16 + 1))[:size]
        (d / f"f{i:04d}.{'bin' if i % 2 else 'txt'}").write_bytes(data)
    (root / "big.bin").write_bytes(rng.randbytes(300 * 1024))
    (root / "empty-dir").mkdir()
    os.symlink("dir0", root / "link")


def backup_cmd(state: Path, vault: Path, src: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "eventbak", "--state-dir", str(state), "backup", str(src),
        "--vault", f"file://{vault}", "--archive-size", str(ARCHIVE_SIZE), *extra,
    ]  # fmt: skip


def start(state: Path, vault: Path, src: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        backup_cmd(state, vault, src, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def events_now(state: Path) -> list[ev.Event]:
    try:
        return [r.event for r in read_log(log_path(state), full=True).records]
    except Exception:  # a record being written right now: read again later
        return []


def wait_until(
    state: Path,
    proc: subprocess.Popen[bytes],
    condition: Callable[[list[ev.Event]], bool],
    timeout: float = 60.0,
) -> bool:
    """Poll the log (from outside the process) until `condition` holds.
    False if the process exited first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition(events_now(state)):
            return True
        if proc.poll() is not None:
            return condition(events_now(state))
        time.sleep(0.002)  # polling interval of the watcher, not synchronisation
    raise TimeoutError("condition not reached")


def after_n_events(n: int) -> Callable[[list[ev.Event]], bool]:
    return lambda events: len(events) >= n


def kill_after(state: Path, vault: Path, src: Path, n: int, sig: int = signal.SIGKILL) -> bool:
    """Start a backup, send `sig` once the log holds n events. False if the
    backup had finished before that point."""
    proc = start(state, vault, src)
    wait_until(state, proc, after_n_events(n))
    killed = proc.poll() is None
    if killed:
        proc.send_signal(sig)
    proc.communicate(timeout=60)
    return killed


def run(state: Path, vault: Path, src: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        backup_cmd(state, vault, src, *extra), capture_output=True, text=True, timeout=120
    )


def run_until_completed(state: Path, vault: Path, src: Path, limit: int = 10) -> int:
    """Start the backup again until its session completes; returns how many runs."""
    for attempt in range(1, limit + 1):
        done = run(state, vault, src)
        assert done.returncode == 0, done.stderr
        if " completed: " in done.stdout:
            return attempt
    raise AssertionError("session never completed")


def check_complete_backup(tmp: Path, state: Path, vault: Path, src: Path, kills: int) -> None:
    """Restore is identical; staging empty; the vault holds exactly the uploaded
    archives; bytes sent at most what is stored plus one archive per interruption."""
    back = tmp / f"restored-{time.monotonic_ns()}"
    restore_all(state, back)
    assert describe(back / str(src).lstrip("/")) == describe(src)
    assert sorted(p.name for p in (state / "staging").iterdir()) == []
    st, image = read_state(state)
    assert image.torn is None
    uploaded = {a.key: a for a in st.archives.values() if a.state == "uploaded"}
    in_vault = {str(p.relative_to(vault)) for p in (vault / "archives").rglob("*") if p.is_file()}
    assert in_vault == set(uploaded), "vault holds files the log does not account for"
    sizes = {a.id: a.size for a in st.archives.values()}
    attempts = [r.event for r in image.records if isinstance(r.event, ev.UploadStarted)]
    sent = sum(sizes[e.archive] for e in attempts)
    stored = sum(a.size for a in uploaded.values())
    assert sent <= stored + kills * ARCHIVE_SIZE
    # a kill just after the final commit leaves a completed session; the next
    # run then makes a second, complete one
    assert {s.state for s in st.sessions.values()} == {"completed"}
