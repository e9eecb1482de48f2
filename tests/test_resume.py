"""Interrupted sessions resume exactly where they left off: real subprocesses,
real signals, the event log watched from outside the process."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from eventbak.core import events as ev
from eventbak.core.log import read_log
from eventbak.pipeline.coordinator import parse_duration, parse_until
from eventbak.statedir import log_path, members, read_state
from tests import crashutil as cu
from tests.treeutil import check_manifest_is_the_tree, describe, restore_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("tree") / "src"
    cu.make_tree(src)
    return src


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, source: Path) -> tuple[int, int]:
    """(events, stored bytes) of an uninterrupted run of the same backup."""
    tmp = tmp_path_factory.mktemp("reference")
    done = cu.run(tmp / "state", tmp / "vault", source)
    assert done.returncode == 0, done.stderr
    st, image = read_state(tmp / "state")
    stored = sum(a.size for a in st.archives.values() if a.state == "uploaded")
    assert len([a for a in st.archives.values()]) >= 24  # dozens of archives
    return len(image.records), stored


def _kill_points(total: int, count: int = 27) -> list[int]:
    """`count` points spread over the log of a whole run, the last one before
    its final commit."""
    return sorted({1 + i * (total - 3) // (count - 1) for i in range(count)})


def test_crash_matrix_sigkill_at_many_points_then_resume(
    tmp_path: Path, source: Path, reference: tuple[int, int]
) -> None:
    total, ref_stored = reference
    points = _kill_points(total)
    assert len(points) >= 25
    for n in points:
        state, vault = tmp_path / f"s{n}" / "state", tmp_path / f"s{n}" / "vault"
        assert cu.kill_after(state, vault, source, n), f"finished before event {n}"
        runs = cu.run_until_completed(state, vault, source)
        assert runs == 1, f"kill after event {n}: needed {runs} runs"
        cu.check_complete_backup(tmp_path, state, vault, source, kills=1)
        st, _ = read_state(state)
        first = next(iter(st.sessions))  # a kill after the last commit adds a second
        stored = sum(a.size for a in st.archives_of(first) if a.state == "uploaded")
        assert stored <= ref_stored + cu.ARCHIVE_SIZE, f"kill after event {n}"
        shutil.rmtree(tmp_path / f"s{n}")


def test_repeated_kills_of_one_session_converge(
    tmp_path: Path, source: Path, reference: tuple[int, int]
) -> None:
    total, _ = reference
    state, vault = tmp_path / "state", tmp_path / "vault"
    kills = 0
    n = 5
    while True:
        proc = cu.start(state, vault, source)
        reached = cu.wait_until(state, proc, cu.after_n_events(n))
        if proc.poll() is not None or not reached:
            proc.communicate()
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if any(isinstance(e, ev.SessionCompleted) for e in cu.events_now(state)):
            break  # the kill came after the final commit: nothing left to resume
        kills += 1
        n = len(cu.events_now(state)) + max(3, total // 12)
    assert kills >= 8
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    assert session.state == "completed"
    assert session.crashes == kills
    cu.check_complete_backup(tmp_path, state, vault, source, kills=kills)


def _last_session_event(state: Path) -> ev.Event:
    session_events = (
        ev.SessionOpened, ev.SessionResumed, ev.SessionPaused, ev.SessionCompleted,
        ev.SessionFailed, ev.SessionAbandoned,
    )  # fmt: skip
    return [e for e in cu.events_now(state) if isinstance(e, session_events)][-1]


@pytest.mark.parametrize(
    "phase",
    [
        ("scan", lambda es: any(isinstance(e, ev.SessionOpened) for e in es)),
        ("build", lambda es: sum(isinstance(e, ev.ArchiveSealed) for e in es) >= 3),
        ("upload", lambda es: sum(isinstance(e, ev.UploadStarted) for e in es) >= 6),
    ],
    ids=lambda p: p[0],
)
def test_sigterm_pauses_cleanly_and_resume_completes(
    tmp_path: Path, source: Path, phase: tuple[str, object]
) -> None:
    _, condition = phase
    state, vault = tmp_path / "state", tmp_path / "vault"
    proc = cu.start(state, vault, source, "--grace", "10")
    assert cu.wait_until(state, proc, condition)  # type: ignore[arg-type]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    if b" completed: " in out:
        pytest.skip("the backup finished before the signal arrived")
    assert proc.returncode == 0, err
    assert took < 10
    assert b"Traceback" not in err
    last = _last_session_event(state)
    assert isinstance(last, ev.SessionPaused) and last.reason == "signal SIGTERM"
    assert cu.run_until_completed(state, vault, source) == 1
    cu.check_complete_backup(tmp_path, state, vault, source, kills=1)
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    assert session.pauses == ["signal SIGTERM"]


def test_second_sigterm_cuts_the_grace_short_and_log_stays_consistent(
    tmp_path: Path, source: Path
) -> None:
    state, vault = tmp_path / "state", tmp_path / "vault"
    proc = cu.start(state, vault, source, "--grace", "60", "--compression", "zstd:19")
    assert cu.wait_until(state, proc, lambda es: any(isinstance(e, ev.ArchiveSealed) for e in es))
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    verify = subprocess.run(
        [*cu.backup_cmd(state, vault, source)[:5], "replay", "--verify"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert cu.run_until_completed(state, vault, source) == 1
    cu.check_complete_backup(tmp_path, state, vault, source, kills=1)


def test_max_duration_pauses_and_next_run_finishes(tmp_path: Path, source: Path) -> None:
    state, vault = tmp_path / "state", tmp_path / "vault"
    # zstd:19 makes the run take far longer than the one-second budget
    first = cu.run(state, vault, source, "--max-duration", "1s", "--compression", "zstd:19")
    assert first.returncode == 0, first.stderr
    assert "paused (deadline)" in first.stdout
    assert isinstance(_last_session_event(state), ev.SessionPaused)
    assert cu.run_until_completed(state, vault, source) == 1
    cu.check_complete_backup(tmp_path, state, vault, source, kills=1)


def test_deadline_parsing() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("15m") == 900
    with pytest.raises(ValueError):
        parse_duration("soon")
    now = time.mktime((2026, 11, 26, 21, 0, 0, 0, 0, -1))
    assert parse_until("22:00", now) - now == 3600
    assert parse_until("06:00", now) - now == 9 * 3600  # tomorrow morning
    with pytest.raises(ValueError):
        parse_until("25:00", now)


def test_torn_final_record_after_a_crash_is_cut_and_session_resumes(
    tmp_path: Path, source: Path
) -> None:
    state, vault = tmp_path / "state", tmp_path / "vault"
    assert cu.kill_after(state, vault, source, 20)
    log = log_path(state)
    good = read_log(log)
    with open(log, "ab") as f:  # what a crash in the middle of a write leaves
        f.write(b"\x40\x00\x00\x00\x12\x34\x56\x78partial-rec")
    assert read_log(log).torn is not None
    done = cu.run(state, vault, source)
    assert done.returncode == 0, done.stderr
    assert "torn record" in done.stderr
    image = read_log(log)
    assert image.torn is None
    assert [r.event for r in image.records[: len(good.records)]] == [r.event for r in good.records]
    assert any(isinstance(r.event, ev.LogTailTruncated) for r in image.records)
    cu.check_complete_backup(tmp_path, state, vault, source, kills=1)


def test_source_changes_between_interruption_and_resume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    cu.make_tree(src, files=200, seed=11)
    state, vault = tmp_path / "state", tmp_path / "vault"
    proc = cu.start(state, vault, src)
    cu.wait_until(state, proc, lambda es: sum(isinstance(e, ev.ArchiveUploaded) for e in es) >= 8)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    stored = [
        m.path for a in st.archives.values() if a.state == "uploaded" for m in members(state, a)
    ]
    stored_files = [
        p for p in dict.fromkeys(stored) if p.endswith((b".txt", b".bin")) and b"/dir" in p
    ]
    assert len(stored_files) > 10
    # change the part already stored, and the part not yet reached
    os.unlink(stored_files[0])
    with open(stored_files[3], "ab") as f:
        f.write(b"appended after the interruption")
    Path(os.fsdecode(stored_files[5])).write_bytes(b"rewritten")
    new_early = Path(os.fsdecode(os.path.dirname(stored_files[1]))) / "aaa-new.txt"
    new_early.write_text("added where the scan had already been")
    (src / "zzz-late.txt").write_text("added where the scan had not been yet")
    done = cu.run(state, vault, src)
    assert done.returncode == 0 and " completed: " in done.stdout, done.stderr
    back = tmp_path / "back"
    restore_all(state, back)
    assert describe(back / str(src).lstrip("/")) == describe(src)
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    assert stored_files[0] in session.deleted
    assert os.fsencode(new_early) in session.changed
    assert stored_files[3] in session.changed and stored_files[5] in session.changed
    # its manifest lists the tree as it is: the deleted file out, changed ones' last copies
    check_manifest_is_the_tree(state, session.id, [src])


def _limit_file_size(limit: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_in_state_dir_pauses_with_a_message_then_resumes(
    tmp_path: Path, source: Path
) -> None:
    state, vault = tmp_path / "state", tmp_path / "vault"
    # RLIMIT_FSIZE makes every write past 40 KiB fail (EFBIG) as a full disk
    # would (ENOSPC): staged archives hit it first. Python ignores SIGXFSZ.
    proc = subprocess.run(
        cu.backup_cmd(state, vault, source),
        capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size(40 * 1024),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "File too large" in proc.stderr and "paused" in proc.stderr
    image = read_log(log_path(state))
    assert image.torn is None
    assert isinstance(_last_session_event(state), ev.SessionPaused)
    assert cu.run_until_completed(state, vault, source) == 1
    cu.check_complete_backup(tmp_path, state, vault, source, kills=1)


def test_full_disk_while_writing_the_log_keeps_it_readable(tmp_path: Path, source: Path) -> None:
    state, vault = tmp_path / "state", tmp_path / "vault"
    assert cu.kill_after(state, vault, source, 30)
    size = log_path(state).stat().st_size
    # now the log itself cannot grow by more than a few records
    proc = subprocess.run(
        cu.backup_cmd(state, vault, source, "--archive-size", "1MiB"),
        capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size(size + 600),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "File too large" in proc.stderr
    assert read_log(log_path(state)).torn is None  # cut back to its last durable end
    assert cu.run_until_completed(state, vault, source) == 1
    cu.check_complete_backup(tmp_path, state, vault, source, kills=2)


def test_new_session_abandons_the_unfinished_one_but_keeps_its_archives(
    tmp_path: Path, source: Path
) -> None:
    state, vault = tmp_path / "state", tmp_path / "vault"
    proc = cu.start(state, vault, source)
    cu.wait_until(state, proc, lambda es: sum(isinstance(e, ev.ArchiveUploaded) for e in es) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = cu.run(state, vault, source, "--new-session")
    assert done.returncode == 0, done.stderr
    st, _ = read_state(state)
    first, second = st.sessions.values()
    assert first.state == "abandoned" and second.state == "completed"
    assert first.archives_uploaded >= 3
    assert not any((state / "staging").iterdir())
    # the abandoned session's uploaded archives are still listed and restorable
    back = tmp_path / "back"
    from eventbak.restore import restore

    report = restore(st, state, [], back, session=first.id)
    assert report.files > 0
    for a in st.archives_of(first.id):
        if a.state == "uploaded":
            assert (vault / a.key).exists()


def test_two_resumes_with_changes_before_each_restore_the_current_tree(tmp_path: Path) -> None:
    """A resumed run stores changed entries out of walk order; the next resume
    must still see what is stored (runs merged in walk order), not stale copies."""
    src = tmp_path / "src"
    cu.make_tree(src, files=120, seed=5)
    state, vault = tmp_path / "state", tmp_path / "vault"
    early = sorted((src / "dir0").rglob("*.txt"))[:6]
    for round_ in range(2):
        proc = cu.start(state, vault, src)
        seen = len(cu.events_now(state))
        cu.wait_until(
            state,
            proc,
            lambda es, seen=seen: sum(isinstance(e, ev.ArchiveUploaded) for e in es[seen:]) >= 6,
        )
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        for i, f in enumerate(early):  # change files the walk has passed already
            f.write_bytes(b"round %d, file %d\n" % (round_, i) * (round_ + 2))
    done = cu.run(state, vault, src)
    assert done.returncode == 0 and " completed: " in done.stdout, done.stderr
    back = tmp_path / "back"
    restore_all(state, back)
    assert describe(back / str(src).lstrip("/")) == describe(src)
    # nothing was deleted, so nothing may be recorded as deleted
    assert not [e for e in cu.events_now(state) if isinstance(e, ev.EntryDeleted)]
    st, _ = read_state(state)
    (session,) = st.sessions.values()
    assert session.crashes == 2
    check_manifest_is_the_tree(state, session.id, [src])
