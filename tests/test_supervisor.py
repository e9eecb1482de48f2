"""eventbak daemon under a real supervisord (PyPI `supervisor`), with the
program section of docs/supervisord.conf as written (only its paths, and
the user, changed for a temporary directory): `supervisorctl stop` pauses
the session (exit 0), `start` resumes it, `kill -9` of the daemon makes
supervisord start it again and it resumes; the backup completes and
restores byte for byte. The upload limit slows the session down so that
each of those lands in its middle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eventbak.core import events as ev
from eventbak.statedir import read_state
from tests import crashutil as cu
from tests.treeutil import describe, restore_all

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs" / "supervisord.conf"
BIN = Path(sys.executable).parent


def _supervisord_conf(tmp: Path, config: Path) -> Path:
    program = DOCS.read_text()
    program = program.replace(
        "/usr/local/bin/eventbak", f"{sys.executable} -m eventbak"
    ).replace("/etc/eventbak/eventbak.toml", str(config))
    program = program.replace("/var/log/eventbak", str(tmp / "logs"))
    program = "\n".join(
        line for line in program.splitlines() if not line.startswith("user=")
    )  # the test runs as whoever runs it
    (tmp / "logs").mkdir()
    conf = tmp / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={tmp / 'supervisor.sock'}\n\n"
        f"[supervisord]\nlogfile={tmp / 'logs' / 'supervisord.log'}\n"
        f"pidfile={tmp / 'supervisord.pid'}\nchildlogdir={tmp / 'logs'}\nnodaemon=true\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{tmp / 'supervisor.sock'}\n\n" + program + "\n"
    )
    return conf


def test_under_supervisord_stop_start_and_kill_9_and_the_backup_completes(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        (src / f"f{i:02d}.bin").write_bytes(os.urandom(200 * 1024))
    state = tmp_path / "state"
    config = tmp_path / "eventbak.toml"
    config.write_text(
        f'state_dir = "{state}"\n[vaults.v]\nurl = "file://{tmp_path / "vault"}"\n'
        'archive_size = "256KiB"\n'
        f'[[datasets]]\nname = "home"\npaths = ["{src}"]\n'
        '[schedule]\nwindows = "always"\nevery = "1h"\nupload_limit = "1MiB/s"\n'
    )
    conf = _supervisord_conf(tmp_path, config)
    supervisord = subprocess.Popen(
        [str(BIN / "supervisord"), "-c", str(conf), "-n"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(conf), *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def count(kind: type, **fields: object) -> object:
        def n_of(evs: list[ev.Event]) -> int:
            return sum(
                isinstance(e, kind) and all(getattr(e, k) == v for k, v in fields.items())
                for e in evs
            )

        return n_of

    def at_least(n: int, kind: type, **fields: object) -> object:
        n_of = count(kind, **fields)
        return lambda evs: n_of(evs) >= n  # type: ignore[operator]

    try:
        uploaded = at_least(2, ev.ArchiveUploaded)
        cu.wait_until(state, supervisord, uploaded, timeout=120)  # type: ignore[arg-type]
        stopped = ctl("stop", "eventbak")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
        st, _ = read_state(state)
        (s,) = st.sessions.values()
        assert s.state == "paused" and s.pauses == ["signal SIGTERM"]
        log = (tmp_path / "logs" / "supervisord.log").read_text()
        assert "stopped: eventbak (exit status 0)" in log

        assert ctl("start", "eventbak").returncode == 0
        resumed = at_least(1, ev.SessionResumed, after="paused")
        cu.wait_until(state, supervisord, resumed, timeout=120)  # type: ignore[arg-type]
        n_now = count(ev.ArchiveUploaded)(cu.events_now(state))  # type: ignore[operator]
        cu.wait_until(state, supervisord, at_least(n_now + 1, ev.ArchiveUploaded), timeout=120)  # type: ignore[arg-type]
        pid = int(ctl("pid", "eventbak").stdout.strip())
        os.kill(pid, signal.SIGKILL)
        crashed = at_least(1, ev.SessionResumed, after="crash")
        cu.wait_until(state, supervisord, crashed, timeout=120)  # type: ignore[arg-type]
        assert int(ctl("pid", "eventbak").stdout.strip()) != pid  # started again by supervisord
        done = at_least(1, ev.SessionCompleted)
        cu.wait_until(state, supervisord, done, timeout=120)  # type: ignore[arg-type]
        assert ctl("stop", "eventbak").returncode == 0
    finally:
        ctl("shutdown")
        supervisord.wait(timeout=60)
    st, _ = read_state(state)
    (s,) = st.sessions.values()
    assert s.state == "completed" and s.pauses == ["signal SIGTERM"] and s.crashes == 1
    back = tmp_path / "back"
    restore_all(state, back)
    assert describe(back / str(src).lstrip("/")) == describe(src)
