"""Metrics (eventbak/daemon/metrics.py, `status --prometheus`): Prometheus'
text format, parsed back with prometheus_client's own parser."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from eventbak.core import events as ev
from eventbak.daemon import metrics
from eventbak.daemon.schedule import parse_timezone, parse_windows
from eventbak.statedir import read_state
from tests.eventsamples import opened
from tests.treeutil import backup


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_say_what_the_log_says(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n" * 100)
    done = backup(tmp_path / "state", tmp_path / "vault", [src])
    state, _ = read_state(tmp_path / "state")
    s = state.sessions[done.session.id]
    # a second dataset whose session paused on an error
    from eventbak.core.state import apply

    apply(state, opened("s-err", dataset="photos"))
    apply(state, ev.SessionPaused(at=time.time(), session="s-err", reason="error: vault gone"))
    got = _samples(metrics.text(metrics.registry(state, datetime.now(UTC))).decode())
    test = (("dataset", "test"),)
    assert got[("eventbak_last_success_timestamp_seconds", test)] == s.updated_at
    assert got[("eventbak_uploaded_bytes", test)] == s.bytes_uploaded > 0
    assert got[("eventbak_uploaded_archives", test)] == 1
    assert got[("eventbak_point_in_time_files", test)] == 1
    assert got[("eventbak_session_state", (("dataset", "test"), ("state", "completed")))] == 1
    assert got[("eventbak_session_state", (("dataset", "test"), ("state", "paused")))] == 0
    photos = (("dataset", "photos"),)
    assert got[("eventbak_errors", photos)] == 1
    assert got[("eventbak_session_state", (("dataset", "photos"), ("state", "paused")))] == 1
    assert ("eventbak_last_success_timestamp_seconds", photos) not in got
    assert not any(name == "eventbak_next_window_start_timestamp_seconds" for name, _ in got)


def test_the_next_window_and_an_atomic_metrics_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    backup(tmp_path / "state", tmp_path / "vault", [src])
    state, _ = read_state(tmp_path / "state")
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    reg = metrics.registry(state, now, parse_windows("22:00-06:00"), parse_timezone("UTC"))
    path = tmp_path / "eventbak.prom"
    metrics.write_file(path, reg)
    got = _samples(path.read_text())
    opens = datetime(2026, 12, 6, 22, 0, tzinfo=UTC).timestamp()
    assert got[("eventbak_next_window_start_timestamp_seconds", ())] == opens
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("eventbak.prom")) == [
        "eventbak.prom"  # no temporary file left
    ]


def test_status_prometheus_from_the_command_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    backup(tmp_path / "state", tmp_path / "vault", [src])
    config = tmp_path / "c.toml"
    config.write_text('[schedule]\nwindows = ["22:00-06:00"]\ntimezone = "Europe/Berlin"\n')
    done = subprocess.run(
        [sys.executable, "-m", "eventbak", "--config", str(config), "--state-dir",
         str(tmp_path / "state"), "status", "--prometheus"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = _samples(done.stdout)
    assert got[("eventbak_next_window_start_timestamp_seconds", ())] > time.time() - 1
    assert got[("eventbak_session_state", (("dataset", "test"), ("state", "completed")))] == 1
