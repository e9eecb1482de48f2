"""Metrics in Prometheus' text format, from the folded state (and the
schedule, for the next window): `eventbak status --prometheus`, and the
`metrics_file` the daemon rewrites for node_exporter's textfile collector.

Built with `prometheus_client` (its registry, gauges and `write_to_textfile`,
which writes a temporary file and renames it, so a scrape never reads half
a file). Everything is a gauge of what the log says now: counts over all
of a dataset's sessions, so a counter's reset never happens and restarts
need no memory. Labels: `dataset` (and `state` for the session state, one
series per state, 1 for the current one).
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest, write_to_textfile

from eventbak.core.state import SESSION_STATES, SessionState, State
from eventbak.daemon.schedule import Windows, next_opening

PREFIX = "eventbak"


def registry(
    state: State, now: datetime, windows: Windows | None = None, tz: tzinfo | None = None
) -> CollectorRegistry:
    """The metrics of `state` at `now`; with `windows` (and `tz`), the next
    window's start too."""
    reg = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ("dataset",)) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, labels, registry=reg)

    last_success = gauge(
        "last_success_timestamp_seconds", "When the dataset's latest completed session completed."
    )
    session_state = gauge(
        "session_state", "The state of the dataset's latest session (1 for it).",
        ("dataset", "state"),
    )  # fmt: skip
    uploaded_bytes = gauge("uploaded_bytes", "Archive bytes uploaded, over all sessions.")
    uploaded_archives = gauge("uploaded_archives", "Archives uploaded, over all sessions.")
    errors = gauge(
        "errors", "Pauses for an error and failed sessions, over all sessions."
    )  # fmt: skip
    files = gauge("point_in_time_files", "Files of the latest completed point in time.")
    data = gauge("point_in_time_bytes", "File bytes of the latest completed point in time.")
    latest: dict[str, SessionState] = {}
    for s in state.sessions.values():
        latest[s.dataset] = s
        uploaded_bytes.labels(s.dataset).inc(s.bytes_uploaded)
        uploaded_archives.labels(s.dataset).inc(s.archives_uploaded)
        failures = sum(p.startswith("error") for p in s.pauses) + (s.state == "failed")
        errors.labels(s.dataset).inc(failures)
        if s.state == "completed":
            last_success.labels(s.dataset).set(s.updated_at)
            if s.catalog is not None:
                files.labels(s.dataset).set(s.catalog.files)
                data.labels(s.dataset).set(s.catalog.bytes)
    for dataset, s in latest.items():
        for name in SESSION_STATES[1:]:  # "new" is never a session's state in the log
            session_state.labels(dataset, name).set(1 if s.state == name else 0)
    if windows is not None and tz is not None:
        nxt = gauge("next_window_start_timestamp_seconds", "When the next backup window opens.", ())
        nxt.set(next_opening(windows, tz, now).timestamp())
    return reg


def text(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)


def write_file(path: Path, reg: CollectorRegistry) -> None:
    """Rewrite `path` atomically (a temporary file renamed over it)."""
    write_to_textfile(str(path), reg)
