"""Incremental sessions: a session stores only what changed since its base
(the last completed session of the dataset), and still restores as a whole
point in time: the tree as it was when that session ran."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbak.core import events as ev
from eventbak.pipeline.scanner import key as walk_key
from eventbak.statedir import read_state
from tests import crashutil as cu
from tests.treeutil import backup, check_manifest_is_the_tree, describe, restore_all

KiB = 1024


Tree = dict[bytes, tuple[object, ...]]


def _restored(state: Path, to: Path, src: Path, session: str | None = None) -> Tree:
    restore_all(state, to, session=session)
    return describe(to / str(src).lstrip("/"))


def _small_tree(src: Path) -> None:
    (src / "docs" / "deep" / "deeper").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("alpha\n" * 50)
    (src / "docs" / "deep" / "b.bin").write_bytes(os.urandom(5000))
    (src / "docs" / "deep" / "deeper" / "c.txt").write_text("gamma")
    (src / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(700 * KiB))  # split at 128 KiB archives
    os.symlink("docs/a.txt", src / "link")
    os.link(src / "docs" / "a.txt", src / "hard.txt")


def test_an_unchanged_second_session_stores_nothing_and_restores_the_tree(tmp_path: Path) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    _small_tree(src)
    first = backup(state, vault, [src], archive_size=128 * KiB)
    assert first.state == "completed" and first.session.base == ""
    assert len(first.session.archives) >= 6  # the big file is split
    second = backup(state, vault, [src], archive_size=128 * KiB)
    assert second.state == "completed"
    assert second.session.base == first.session.id
    assert second.session.archives == [] and second.session.files == 0
    want = describe(src)
    assert _restored(state, tmp_path / "latest", src) == want
    assert _restored(state, tmp_path / "by-id", src, second.session.id) == want
    assert _restored(state, tmp_path / "first", src, first.session.id) == want
    check_manifest_is_the_tree(state, second.session.id, [src])
    check_manifest_is_the_tree(state, first.session.id, [src])


# -- generated histories --------------------------------------------------------

_FREE = ["a", "b", "c", "e f", "d1/e", "d1/f", "d1/d2/g", "d1/d2/h"]
_OPS = [
    "add", "same_size", "resize", "delete", "rename", "chmod", "to_dir", "to_file",
    "symlink", "unlink_symlink", "touch", "hardlink", "copy",
]  # fmt: skip


class _Clock:
    """Distinct mtimes for explicit os.utime calls (never the wall clock)."""

    def __init__(self) -> None:
        self.ns = 1_700_000_000 * 10**9

    def next(self) -> int:
        self.ns += 1_000_000_007
        return self.ns


def _entries(src: Path) -> tuple[list[str], list[str], list[str]]:
    """Regular files, symlinks and directories made from a file (relative)."""
    files, links, dirs = [], [], []
    for p in sorted(src.rglob("*")):
        rel = str(p.relative_to(src))
        if p.is_symlink():
            links.append(rel)
        elif p.is_file():
            files.append(rel)
        elif rel not in ("d1", "d1/d2"):
            dirs.append(rel)
    return files, links, dirs


def _apply(src: Path, op: str, data: st.DataObject, clock: _Clock) -> None:
    files, links, dirs = _entries(src)
    free = [n for n in _FREE if not os.path.lexists(src / n) and (src / n).parent.is_dir()]

    def pick(names: list[str]) -> str:
        return data.draw(st.sampled_from(names))

    def content() -> bytes:
        return data.draw(st.binary(min_size=1, max_size=3000))

    needs = {"add": [free], "symlink": [free], "to_file": [dirs], "unlink_symlink": [links],
             "rename": [files, free], "hardlink": [files, free],
             "copy": [files, free]}  # fmt: skip
    feasible = [o for o in (op, "add", "touch", "to_file") if all(needs.get(o, [files]))]
    op = feasible[0] if feasible else "unlink_symlink"  # every name a symlink
    if op == "add":
        (src / pick(free)).write_bytes(content())
    elif op == "symlink":
        os.symlink(pick(["a", "../x", "d1/e", "nowhere"]), src / pick(free))
    elif op == "unlink_symlink":
        os.unlink(src / pick(links))
    elif op == "to_file":
        d = src / pick(dirs)
        shutil.rmtree(d)
        d.write_bytes(content())
    else:
        f = src / pick(files)
        if op == "same_size":
            old = f.read_bytes()
            f.write_bytes(bytes(b ^ 0x5A for b in old) if old else b"")
            t = clock.next()
            os.utime(f, ns=(t, t))  # a distinct mtime: no timestamp granularity involved
        elif op == "resize":
            with open(f, "ab") as out:
                out.write(content())
        elif op == "delete":
            f.unlink()
        elif op == "rename":
            os.rename(f, src / pick(free))
        elif op == "chmod":
            f.chmod(data.draw(st.sampled_from([0o600, 0o640, 0o755])))
        elif op == "to_dir":
            f.unlink()
            f.mkdir()
            (f / "inner").write_bytes(content())
        elif op == "touch":
            t = clock.next()
            os.utime(f, ns=(t, t))
        elif op == "hardlink":
            os.link(f, src / pick(free))
        elif op == "copy":  # same content at a new path: dedup (at least 16 KiB)
            shutil.copy2(f, src / pick(free))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sessions=st.lists(
        st.lists(st.sampled_from(_OPS), min_size=1, max_size=5), min_size=2, max_size=4
    ),
    data=st.data(),
)
def test_each_session_restores_the_tree_as_it_was(
    sessions: list[list[str]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        src, state, vault = tmp / "src", tmp / "state", tmp / "vault"
        (src / "d1" / "d2").mkdir(parents=True)
        (src / "a").write_bytes(b"first file\n" * 20)
        (src / "d1" / "e").write_bytes(os.urandom(40 * KiB))  # large enough for dedup
        clock = _Clock()
        snapshots: list[tuple[str, Tree]] = []
        for ops in [[], *sessions]:  # the first session is a full one
            for op in ops:
                _apply(src, op, data, clock)
            out = backup(state, vault, [src], archive_size=4 * KiB)
            assert out.state == "completed", out.error
            assert out.session.base == (snapshots[-1][0] if snapshots else "")
            snapshots.append((out.session.id, describe(src)))
            check_manifest_is_the_tree(state, out.session.id, [src])
        for i, (sid, want) in enumerate(snapshots):
            assert _restored(state, tmp / f"r{i}", src, sid) == want, f"session {i}"


def test_same_size_change_with_old_mtime_is_found_by_ctime_not_when_ctime_ignored(
    tmp_path: Path,
) -> None:
    """Same size, mtime put back: only the ctime tells. Ignoring ctimes (and
    inodes) misses such a change: the documented weakness of those options."""
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    f = src / "f.txt"
    f.write_bytes(b"version one\n")
    (src / "other.txt").write_bytes(b"never changes\n")
    backup(state, vault, [src])

    def rewrite(content: bytes) -> None:
        old = f.stat().st_mtime_ns
        f.write_bytes(content)
        os.utime(f, ns=(old, old))

    rewrite(b"version two\n")
    strict = backup(state, vault, [src])
    assert strict.session.files == 1
    assert _restored(state, tmp_path / "strict", src) == describe(src)

    rewrite(b"version 3!!\n")
    lax = backup(state, vault, [src], ignore_inode=True, ignore_ctime=True)
    assert lax.session.base == strict.session.id
    assert lax.session.files == 0  # not stored: its restore has the old content
    restore_all(state, tmp_path / "lax")
    assert (tmp_path / "lax" / str(f).lstrip("/")).read_bytes() == b"version two\n"


def test_deleted_files_are_gone_from_the_next_point_in_time_but_not_from_the_earlier(
    tmp_path: Path,
) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    _small_tree(src)
    before = describe(src)
    first = backup(state, vault, [src], archive_size=128 * KiB)
    gone = [src / "docs" / "deep" / "b.bin", src / "big.bin", src / "link"]
    for p in gone:
        p.unlink()
    shutil.rmtree(src / "docs" / "deep" / "deeper")
    second = backup(state, vault, [src], archive_size=128 * KiB)
    assert second.session.base == first.session.id
    st_, _ = read_state(state)
    deleted = set(st_.sessions[second.session.id].deleted)
    assert {os.fsencode(p) for p in gone} | {os.fsencode(src / "docs/deep/deeper")} <= deleted
    after = _restored(state, tmp_path / "second", src, second.session.id)
    assert after == describe(src)
    assert not {b"big.bin", b"link", b"docs/deep/deeper/c.txt"} & set(after)
    assert _restored(state, tmp_path / "first", src, first.session.id) == before
    check_manifest_is_the_tree(state, second.session.id, [src])


def _copy_in_place(src: Path) -> None:
    """Every file replaced by a copy of itself: same path, size, mode and
    mtime; a new inode and ctime. Directory mtimes are put back too."""
    dirs: dict[Path, int] = {}
    for d in [src, *(p for p in src.rglob("*") if p.is_dir())]:
        dirs[d] = d.stat().st_mtime_ns
    for f in [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]:
        old = f.stat()
        tmp = f.with_name(f.name + ".tmp")
        shutil.copyfile(f, tmp)
        tmp.chmod(old.st_mode & 0o7777)
        os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.replace(tmp, f)
        assert f.stat().st_ino != old.st_ino
    for d, mtime in dirs.items():
        os.utime(d, ns=(mtime, mtime))


def _files_tree(src: Path) -> None:
    _small_tree(src)
    os.unlink(src / "hard.txt")  # a copy in place would split the link in two


def test_a_tree_copied_with_new_inodes_is_stored_again_unless_inode_and_ctime_are_ignored(
    tmp_path: Path,
) -> None:
    for rule in ("strict", "lax"):
        lax = rule == "lax"
        src, state, vault = (tmp_path / rule / d for d in ("src", "state", "vault"))
        src.mkdir(parents=True)
        _files_tree(src)
        n_files = sum(1 for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        first = backup(state, vault, [src], ignore_inode=lax, ignore_ctime=lax)
        _copy_in_place(src)
        second = backup(state, vault, [src], ignore_inode=lax, ignore_ctime=lax)
        assert second.session.base == first.session.id
        assert second.session.files == (0 if lax else n_files), rule
        if lax:
            assert second.session.archives == []
        assert _restored(state, tmp_path / rule / "back", src) == describe(src)


def test_full_stores_everything_again(tmp_path: Path) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    _small_tree(src)
    first = backup(state, vault, [src], archive_size=128 * KiB)
    again = backup(state, vault, [src], archive_size=128 * KiB, full=True)
    assert again.session.base == ""
    assert again.session.files == first.session.files > 0
    assert again.session.bytes == first.session.bytes
    assert _restored(state, tmp_path / "back", src) == describe(src)
    # the session after a full one builds on it
    third = backup(state, vault, [src], archive_size=128 * KiB)
    assert third.session.base == again.session.id and third.session.files == 0


@pytest.mark.slow
def test_sigkill_during_an_incremental_session_resumes_and_restores_identically(
    tmp_path: Path,
) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    cu.make_tree(src, files=300)
    done = cu.run(state, vault, src)
    assert done.returncode == 0, done.stderr
    before = describe(src)
    st_, _ = read_state(state)
    (first,) = st_.sessions
    files = sorted(p for p in src.rglob("f*.*") if p.is_file())
    for i, f in enumerate(files):
        if i % 3 == 0:
            f.write_bytes(b"changed %d\n" % i * (i % 50 + 1))
        elif i % 47 == 1:
            f.unlink()
    for i in range(20):
        (src / f"dir{i % 9}" / f"new{i}.txt").write_bytes(os.urandom(3000 + i))
    proc = cu.start(state, vault, src)
    seen = len(cu.events_now(state))

    def sealed_in_the_new_session(events: list[ev.Event]) -> bool:
        return any(isinstance(e, ev.ArchiveSealed) for e in events[seen:])

    assert cu.wait_until(state, proc, sealed_in_the_new_session)
    assert proc.poll() is None, "the session finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert cu.run_until_completed(state, vault, src) == 1
    st_, _ = read_state(state)
    _, second = st_.sessions.values()
    assert second.state == "completed" and second.crashes == 1
    assert second.base == first
    assert second.deleted  # the unlinked files
    stored = sum(a.bytes for a in st_.archives_of(second.id) if a.state == "uploaded")
    tree = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert stored < tree / 2, (stored, tree)  # unchanged files were not stored again
    assert _restored(state, tmp_path / "latest", src) == describe(src)
    assert _restored(state, tmp_path / "first", src, first) == before
    check_manifest_is_the_tree(state, second.id, [src])


@pytest.mark.slow
def test_a_damaged_local_manifest_is_a_clear_error(tmp_path: Path) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    cu.make_tree(src, files=40)
    done = cu.run(state, vault, src)
    assert done.returncode == 0, done.stderr
    st_, _ = read_state(state)
    (first,) = st_.sessions
    manifest = state / "catalog" / f"{first}.mf.zst"
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    manifest.write_bytes(bytes(data))
    (src / "new.txt").write_text("a change to store")
    again = cu.run(state, vault, src)
    assert again.returncode != 0
    assert "Traceback" not in again.stderr, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and str(manifest) in lines[0], again.stderr
    assert "--full" in lines[0]  # and what to do about it
    st_, _ = read_state(state)
    assert list(st_.sessions) == [first]  # no session builds on the damaged manifest
    full = cu.run(state, vault, src, "--full")
    assert full.returncode == 0 and " completed: " in full.stdout, full.stderr
    assert _restored(state, tmp_path / "back", src) == describe(src)


# -- hard links -------------------------------------------------------------------


def test_a_new_hard_link_to_an_unchanged_file_is_restored_as_a_link(tmp_path: Path) -> None:
    """With --ignore-ctime the existing name is unchanged (its ctime moved
    only), so it is not stored again: the new name must still be a link."""
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    (src / "a").write_bytes(b"data")
    backup(state, vault, [src], ignore_ctime=True)
    os.link(src / "a", src / "z")
    second = backup(state, vault, [src], ignore_ctime=True)
    assert second.session.files == 1
    assert _restored(state, tmp_path / "back", src) == describe(src)


@pytest.mark.slow
def test_a_hard_link_whose_first_name_was_stored_before_a_kill_stays_a_link(
    tmp_path: Path,
) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    cu.make_tree(src, files=200)
    first_name = src / "dir0" / "sub0" / "f0000.txt"
    os.link(first_name, src / "zzz-link.txt")  # the last file of the walk
    proc = cu.start(state, vault, src)

    def past_the_first_name(events: list[ev.Event]) -> bool:
        return any(
            isinstance(e, ev.ArchiveSealed) and e.last is not None
            and walk_key(e.last.path) > walk_key(os.fsencode(first_name))
            for e in events
        )  # fmt: skip

    assert cu.wait_until(state, proc, past_the_first_name)
    assert proc.poll() is None, "the session finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert cu.run_until_completed(state, vault, src) == 1
    assert _restored(state, tmp_path / "back", src) == describe(src)


# -- dedup ----------------------------------------------------------------------


def test_a_renamed_and_a_copied_file_add_no_archive_bytes(tmp_path: Path) -> None:
    """Content the base's point in time holds (a file moved, a file copied,
    one split over archives) is referred to, not stored again; both points
    in time restore byte for byte."""
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    (src / "d").mkdir(parents=True)
    (src / "d" / "photo.jpg").write_bytes(os.urandom(200 * 1024))
    (src / "d" / "video.mp4").write_bytes(os.urandom(700 * 1024))  # split at 128 KiB
    (src / "small.txt").write_bytes(b"tiny")
    first = backup(state, vault, [src], archive_size=128 * 1024)
    before = describe(src)
    os.rename(src / "d" / "photo.jpg", src / "moved.jpg")
    shutil.copy2(src / "d" / "video.mp4", src / "copy.mp4")
    second = backup(state, vault, [src], archive_size=128 * 1024)
    assert second.session.base == first.session.id
    assert second.session.files == 2  # moved.jpg and copy.mp4, both reused
    assert second.session.bytes == 0  # no file data went into an archive
    assert _restored(state, tmp_path / "now", src) == describe(src)
    assert _restored(state, tmp_path / "then", src, first.session.id) == before
    check_manifest_is_the_tree(state, second.session.id, [src])


def test_a_damaged_content_index_turns_dedup_off_and_is_built_again(tmp_path: Path) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(64 * 1024))
    first = backup(state, vault, [src])
    shutil.copy2(src / "a.bin", src / "b.bin")
    index = state / "catalog" / f"{first.session.id}.idx"
    index.write_bytes(b"not a database")
    second = backup(state, vault, [src])
    assert second.session.bytes == 64 * 1024  # stored: dedup was off for this session
    assert not index.exists()  # the damaged index is gone; a session builds it anew
    assert _restored(state, tmp_path / "back", src) == describe(src)
    shutil.copy2(src / "a.bin", src / "c.bin")
    third = backup(state, vault, [src])
    assert third.session.bytes == 0


# -- what starts a full session, and what refuses ----------------------------------


def test_a_change_of_recipients_starts_a_full_session(tmp_path: Path) -> None:
    """Turning encryption on stores every file again, encrypted: no point in
    time of the encrypted dataset refers to archives made without the key."""
    import trio

    from eventbak.archive import age
    from eventbak.config import Compression
    from eventbak.pipeline.coordinator import BackupRequest
    from eventbak.pipeline.scanner import normalize_roots
    from eventbak.runner import run_backup
    from eventbak.statedir import StateDir
    from eventbak.vaults import open_vault

    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    _small_tree(src)
    plain = backup(state, vault, [src])
    _, recipient = age.generate()
    req = BackupRequest(
        dataset="test", paths=normalize_roots([os.fsencode(src)]),
        vault_url=f"file://{vault}", archive_size=128 * 1024 * 1024,
        compression=Compression("auto"), exclude=[], recipients=(recipient,),
    )  # fmt: skip
    sd = StateDir.open(state)
    try:
        encrypted = trio.run(run_backup, sd, req, open_vault(req.vault_url), None)
    finally:
        sd.close()
    assert encrypted.session.base == ""
    assert encrypted.session.files == plain.session.files
    st_, _ = read_state(state)
    assert all("age" in a.layers for a in st_.archives_of(encrypted.session.id))


@pytest.mark.slow
def test_full_while_a_session_is_unfinished_is_refused(tmp_path: Path) -> None:
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    cu.make_tree(src)
    assert cu.kill_after(state, vault, src, 3), "the session finished before the kill"
    refused = cu.run(state, vault, src, "--full")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "--new-session" in refused.stderr
    assert "Traceback" not in refused.stderr
    full = cu.run(state, vault, src, "--full", "--new-session")
    assert full.returncode == 0 and "(a full session)" in full.stdout, full.stdout


def test_restore_in_place_with_to_slash(tmp_path: Path) -> None:
    """`restore --to /` puts entries back where they were (here below tmp_path)."""
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    _small_tree(src)
    backup(state, vault, [src])
    want = describe(src)
    shutil.rmtree(src)
    restore_all(state, Path("/"))
    assert describe(src) == want


def test_older_manifests_are_read_from_the_vault_once_pruned(tmp_path: Path) -> None:
    """The state dir keeps the manifest of the latest session of a lineage
    (the next one's base); older points in time are read from the vault,
    checked against the log; gone from both, the restore names it."""
    from eventbak.errors import EventbakError

    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    _small_tree(src)
    first = backup(state, vault, [src]).session.id
    before = describe(src)
    (src / "docs" / "a.txt").write_text("changed\n")
    second = backup(state, vault, [src]).session.id
    assert sorted(p.name for p in (state / "catalog").iterdir()) == [f"{second}.mf.zst"]
    assert _restored(state, tmp_path / "then", src, first) == before
    assert _restored(state, tmp_path / "now", src) == describe(src)
    (vault / "catalog" / f"{first}.mf.zst").unlink()
    with pytest.raises(EventbakError, match=rf"manifest of session {first} .* neither"):
        restore_all(state, tmp_path / "again", session=first)
    (state / "catalog" / f"{second}.mf.zst").write_bytes(b"damaged")
    with pytest.raises(EventbakError, match=rf"manifest of session {second} .* cannot be read"):
        restore_all(state, tmp_path / "latest")


@pytest.mark.slow
def test_an_older_encrypted_manifest_needs_the_identity_to_be_read_from_the_vault(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from eventbak.archive import age

    secret, recipient = age.generate()
    identity = tmp_path / "id.txt"
    identity.write_text(secret + "\n")
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    _small_tree(src)
    first = cu.run(state, vault, src, "--recipient", recipient)
    assert first.returncode == 0, first.stderr
    before = describe(src)
    (src / "docs" / "a.txt").write_text("changed\n")
    assert cu.run(state, vault, src, "--recipient", recipient).returncode == 0
    sessions = list(read_state(state)[0].sessions)

    def restore(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "eventbak", "--state-dir", str(state), "restore",
             "--session", sessions[0], *extra],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    without = restore("--to", str(tmp_path / "no"))
    assert without.returncode == 6 and "--identity" in without.stderr, without.stderr
    done = restore("--to", str(tmp_path / "yes"), "--identity", str(identity))
    assert done.returncode == 0, done.stderr
    assert describe(tmp_path / "yes" / str(src).lstrip("/")) == before
