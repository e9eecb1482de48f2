"""A vault URL with a date tag (`{date}`, `{date:%Y-%m}`): each new session
goes to the vault of its day; a session keeps its vault for its whole life."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from pathlib import Path

import pytest

from eventbak.config import Compression
from eventbak.core import events as ev
from eventbak.errors import UsageError
from eventbak.pipeline.coordinator import BackupRequest, dated
from eventbak.pipeline.scanner import normalize_roots
from eventbak.statedir import StateDir
from eventbak.vaults.url import expand_date
from tests.treeutil import describe, restore_all

DAY = dt.datetime(2026, 12, 6, 10, 0)


def _req(src: Path, url: str) -> BackupRequest:
    return BackupRequest(
        dataset="photos", paths=normalize_roots([os.fsencode(src)]), vault_url=url,
        archive_size=1024 * 1024, compression=Compression("auto"), exclude=[],
    )  # fmt: skip


def test_the_tag_is_filled_in_and_bad_formats_are_refused() -> None:
    assert expand_date("s3://b/photos-{date}", DAY) == "s3://b/photos-2026-12-06"
    assert expand_date("glacier://photos-{date:%Y-%m}", DAY) == "glacier://photos-2026-12"
    assert expand_date("file:///v/{date:%Y}/{date:%m}", DAY) == "file:///v/2026/12"
    with pytest.raises(UsageError, match="date format"):
        expand_date("s3://b/{date:%Y/../x}", DAY)


def test_a_session_keeps_the_vault_of_the_day_it_opened(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    template = f"file://{tmp_path}/photos-{{date:%Y-%m-%d}}"
    req = _req(src, template)
    sd = StateDir.open(tmp_path / "state")
    try:
        today = dated(sd, req, DAY)
        assert today.vault_url == f"file://{tmp_path}/photos-2026-12-06"
        assert today.vault_template == template
        # a session opened that day, unfinished: the next day still resumes into it
        sd.record(
            ev.SessionOpened(
                at=0.0, session="s1", dataset="photos", vault=today.vault_url,
                vault_url=today.vault_url, paths=req.paths, archive_size=1024 * 1024,
                compression="auto", vault_template=template,
            )
        )  # fmt: skip
        later = dated(sd, req, DAY + dt.timedelta(days=1))
        assert later.vault_url == today.vault_url
        sd.record(ev.SessionAbandoned(at=0.0, session="s1", reason="test"))
        fresh = dated(sd, req, DAY + dt.timedelta(days=1))
        assert fresh.vault_url == f"file://{tmp_path}/photos-2026-12-07"
        assert dated(sd, replace(req, vault_url=f"file://{tmp_path}/v"), DAY).vault_url == (
            f"file://{tmp_path}/v"  # no tag: as it is
        )
    finally:
        sd.close()


def test_a_backup_into_a_dated_vault_lands_there_and_restores(tmp_path: Path) -> None:
    import trio

    from eventbak import runner

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(10_000))
    req = _req(src, f"file://{tmp_path}/photos-{{date:%Y}}")
    sd = StateDir.open(tmp_path / "state")
    try:
        report = trio.run(runner.run_datasets, sd, [req])
        (s,) = sd.state.sessions.values()
    finally:
        sd.close()
    year = dt.datetime.now().year
    assert report.outcomes[0].state == "completed"
    assert s.vault == f"file://{tmp_path}/photos-{year}"
    assert s.vault_template == req.vault_url
    assert (tmp_path / f"photos-{year}" / "archives").is_dir()
    back = tmp_path / "back"
    restore_all(tmp_path / "state", back)
    assert describe(back / str(src).lstrip("/")) == describe(src)
