"""Restore: one read per archive, verified as it streams; nothing of a damaged
archive looks restored; thaws (S3 cold classes) and retrieval jobs (Glacier)
before reading; which URL opens each vault.

Real files on disk and a local (file://) vault throughout. The cold-storage
sequences use small fakes over a real local vault, because the cloud test
servers cannot show them: moto completes RestoreObject and retrieval jobs at
once, so an object is never seen "thawing" (the real-server tests are in
tests/test_s3_vault.py and tests/test_glacier_vault.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from eventbak import restore as restore_module
from eventbak.config import Compression
from eventbak.core.state import ArchiveState, State
from eventbak.errors import EventbakError, UsageError, VaultError, VaultUnreachable
from eventbak.restore import VaultResolver, restore
from eventbak.statedir import members, read_state
from eventbak.vaults import LocalVault
from eventbak.vaults.base import Held
from tests.treeutil import backup, describe

KiB = 1024
TEMP_MARK = ".eventbak-"


# -- a backup of three archives: small files in each, c.bin split across 2 and 3 --


def make_tree(src: Path) -> None:
    def put(rel: str, size: int) -> None:
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))

    for i in range(6):
        put(f"a/a{i}.bin", 9 * KiB)
    for i in range(3):
        put(f"b/b{i}.bin", 5 * KiB)
    put("c.bin", 84 * KiB)
    for i in range(3):
        put(f"d/d{i}.bin", 4 * KiB)
    (src / "e").mkdir()
    (src / "e" / "empty").write_bytes(b"")
    (src / "e" / "link").symlink_to("../a/a0.bin")
    os.link(src / "a" / "a0.bin", src / "e" / "hl")
    (src / "e" / "notes.txt").write_text("notes\n" * 50)
    os.chmod(src / "e" / "notes.txt", 0o640)
    os.utime(src / "e" / "notes.txt", ns=(10**18 + 7, 10**18 + 7))


@dataclass
class Backed:
    tmp: Path
    src: Path
    state_dir: Path
    vault: Path
    archives: list[ArchiveState]  # in order
    files: list[dict[str, Any]]  # per archive: relative path -> Member (regular files)
    split: str = "c.bin"

    def state(self) -> State:
        return read_state(self.state_dir)[0]

    def restored(self, to: Path, rel: str = "") -> Path:
        base = to / str(self.src).lstrip("/")
        return base / rel if rel else base

    def source_hash(self, rel: str) -> str:
        return sha256(self.src / rel)

    def holding(self, rel: str) -> list[int]:
        """Indexes of the archives holding (segments of) `rel`."""
        return [i for i, files in enumerate(self.files) if rel in files]

    def damage(self, index: int, how: str) -> ArchiveState:
        a = self.archives[index]
        stored = self.vault / a.key
        raw = bytearray(stored.read_bytes())
        if how == "flip":
            raw[len(raw) // 2] ^= 0x01
        else:  # cut short
            del raw[len(raw) * 2 // 3 :]
        stored.write_bytes(bytes(raw))
        return a


def backed_up(tmp: Path, compression: str = "none") -> Backed:
    src = tmp / "src"
    make_tree(src)
    outcome = backup(tmp / "state", tmp / "vault", [src], 64 * KiB, Compression(compression))
    assert outcome.state == "completed", outcome.error
    state, _ = read_state(tmp / "state")
    archives = [a for s in state.sessions.values() for a in state.archives_of(s.id)]
    files = []
    for a in archives:
        files.append(
            {
                os.path.relpath(m.path, os.fsencode(src)).decode(): m
                for m in members(tmp / "state", a)
                if m.kind == "file"
            }
        )
    b = Backed(tmp, src, tmp / "state", tmp / "vault", archives, files)
    # the shape the tests rely on: three archives, small files in each, the
    # split file in the second and third
    assert len(archives) == 3, [list(f) for f in files]
    assert b.holding("c.bin") == [1, 2]
    assert all(any(m.size < 10 * KiB for m in f.values()) for f in files)
    return b


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temps_below(root: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, names in os.walk(root)
        for n in dirs + names
        if TEMP_MARK in n
    ]


def cli_restore(b: Backed, *args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "eventbak", "--state-dir", str(b.state_dir), "restore"]
    return subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EVENTBAK_CONFIG": ""},
    )


@pytest.fixture(params=["none", "zstd"])
def compression(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- a real local vault that counts what is read from it --------------------------


class CountingFile:
    def __init__(self, inner: BinaryIO, vault: CountingVault) -> None:
        self.inner = inner
        self.vault = vault

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.vault.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self.inner.readinto(buffer)
        self.vault.bytes_read += n
        return n

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingVault:
    """A real LocalVault whose `open` calls and bytes read are counted."""

    def __init__(self, inner: LocalVault) -> None:
        self.inner = inner
        self.opens: list[str] = []
        self.bytes_read = 0
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open(self, key: str) -> CountingFile:
        self.opens.append(key)
        return CountingFile(self.inner.open(key), self)

    def close(self) -> None:
        self.closed = True


def test_each_archive_is_read_once_and_whole(tmp_path: Path, compression: str) -> None:
    b = backed_up(tmp_path, compression)
    vault = CountingVault(LocalVault(str(b.vault)))
    report = restore(b.state(), b.state_dir, [], tmp_path / "out", vault_for=lambda ref: vault)
    assert sorted(vault.opens) == sorted(a.key for a in b.archives)  # each once
    assert vault.bytes_read == sum(a.size for a in b.archives)
    assert report.archives == 3 and report.read_bytes == vault.bytes_read
    assert not vault.closed  # the caller's vaults are the caller's to close


def test_only_the_archives_of_the_selected_paths_are_read(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = CountingVault(LocalVault(str(b.vault)))
    # c.bin alone: archives 2 and 3, read to their ends although c.bin is
    # first in the third (the rest is read to check the digest)
    restore(
        b.state(), b.state_dir, [os.fsencode(b.src / "c.bin")], tmp_path / "out",
        vault_for=lambda ref: vault,
    )  # fmt: skip
    assert vault.opens == [b.archives[1].key, b.archives[2].key]
    assert vault.bytes_read == b.archives[1].size + b.archives[2].size
    assert sha256(b.restored(tmp_path / "out", "c.bin")) == b.source_hash("c.bin")


# -- damaged archives ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "cut"])
@pytest.mark.parametrize("bad_index", [1, 2])
def test_damaged_archive_leaves_nothing_of_it(
    tmp_path: Path, compression: str, how: str, bad_index: int
) -> None:
    """A flipped byte or a vault file cut short in archive 2 (or 3) of three:
    one line names it, and the restore goes on with the others; no file of
    the damaged archive is under its final name, no temporary file is left,
    the split file (in 2 and 3) does not exist at all, every other file is
    restored intact, and the exit code says the restore is incomplete."""
    b = backed_up(tmp_path, compression)
    bad = b.damage(bad_index, how)
    to = tmp_path / "out"
    run = cli_restore(b, "--to", to)
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2, run.stderr
    assert bad.id in lines[0] and "damaged" in lines[0] and str(b.vault) in lines[0]
    if how == "cut":
        assert f"expected {bad.size}" in lines[0]
    assert "1 archive could not be restored" in lines[1]
    for i, files in enumerate(b.files):
        for rel in files:
            dest = b.restored(to, rel)
            if rel == b.split or i == bad_index:
                assert not os.path.lexists(dest), rel
            else:
                assert sha256(dest) == b.source_hash(rel), rel
    link = os.fsencode(b.src / "e" / "link")
    in_bad = any(m.path == link for m in members(b.state_dir, bad))
    assert os.path.lexists(b.restored(to, "e/link")) != in_bad
    assert temps_below(to) == []


def test_damage_in_an_archive_not_needed_does_not_matter(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    b.damage(2, "flip")
    run = cli_restore(b, b.src / "a", "--to", tmp_path / "out")
    assert run.returncode == 0, run
    for rel in b.files[0]:
        assert sha256(b.restored(tmp_path / "out", rel)) == b.source_hash(rel)


def test_overwrite_with_a_damaged_archive_keeps_the_old_files(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    to = tmp_path / "out"
    assert cli_restore(b, "--to", to).returncode == 0
    old: dict[str, str] = {}
    for files in b.files:
        for rel in files:
            p = b.restored(to, rel)
            p.write_bytes(b"the old version of " + rel.encode())
            old[rel] = sha256(p)
    bad = b.damage(1, "flip")
    run = cli_restore(b, "--to", to, "--overwrite")
    assert run.returncode == 1 and bad.id in run.stderr, run
    for i, files in enumerate(b.files):
        for rel in files:
            got = sha256(b.restored(to, rel))
            if i != 1 and rel != b.split:  # the archives beside the damaged one
                assert got == b.source_hash(rel), rel
            else:
                assert got == old[rel], rel
    assert temps_below(to) == []


def test_overwrite_replaces_every_kind_of_entry(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    to = tmp_path / "out"
    base = b.restored(to)
    base.mkdir(parents=True)
    (base / "c.bin").symlink_to("/etc/hostname")  # replaced, never followed
    (base / "e").mkdir()
    (base / "e" / "link").write_text("a file where the symlink goes\n")
    (base / "e" / "hl").write_text("a file where the hard link goes\n")
    assert cli_restore(b, "--to", to, "--overwrite").returncode == 0
    assert describe(base) == describe(b.src)


def test_directory_in_the_way_is_one_line_naming_the_final_name(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    to = tmp_path / "out"
    blocker = b.restored(to, "b/b1.bin")
    (blocker / "inside").mkdir(parents=True)
    run = cli_restore(b, "--to", to, "--overwrite")
    assert run.returncode == 1, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert str(blocker) in lines[0] and "directory is in the way" in lines[0]
    assert TEMP_MARK not in lines[0]
    assert temps_below(to) == []
    assert (blocker / "inside").is_dir()


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_file_that_appears_meanwhile_is_not_replaced(
    tmp_path: Path, renameat2: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --overwrite, existing files are refused up front; one created
    after that (a thaw can take hours) is not replaced either, with or
    without renameat2 (the fallback checks right before its rename)."""
    if not renameat2:
        monkeypatch.setattr(restore_module, "_RENAMEAT2", None)
    b = backed_up(tmp_path)
    to = tmp_path / "out"
    late = b.restored(to, "b/b1.bin")
    inner = CountingVault(LocalVault(str(b.vault)))

    class Meanwhile(CountingVault):
        def open(self, key: str) -> CountingFile:
            if key == b.archives[1].key:
                late.parent.mkdir(parents=True, exist_ok=True)
                late.write_text("mine\n")
            return inner.open(key)

    with pytest.raises(EventbakError, match="appeared while restoring"):
        restore(b.state(), b.state_dir, [], to, vault_for=lambda ref: Meanwhile(inner.inner))
    assert late.read_text() == "mine\n"
    assert temps_below(to) == []
    for rel in b.files[0]:
        assert sha256(b.restored(to, rel)) == b.source_hash(rel)


def test_whole_tree_without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore_module, "_RENAMEAT2", None)
    b = backed_up(tmp_path)
    restore(b.state(), b.state_dir, [], tmp_path / "out")
    assert describe(b.restored(tmp_path / "out")) == describe(b.src)


# -- the whole tree --------------------------------------------------------------------


def test_whole_tree_equals_the_source(tmp_path: Path, compression: str) -> None:
    b = backed_up(tmp_path, compression)
    to = tmp_path / "out"
    run = cli_restore(b, "--to", to)
    assert run.returncode == 0, run
    assert run.stderr == ""
    # every entry: kind, mode, mtime, size, sha256, link target, hard-link
    # groups; no temporary name is left (describe lists dot files too)
    assert describe(b.restored(to)) == describe(b.src)


def test_split_file_with_a_missing_segment_is_left_out(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    state = b.state()
    state.archives[b.archives[2].id].state = "sealed"  # its upload never happened
    to = tmp_path / "out"
    report = restore(state, b.state_dir, [], to)
    assert not os.path.lexists(b.restored(to, "c.bin"))
    assert any("c.bin" in w and "not restored" in w for w in report.warnings)
    for rel in b.files[1]:
        if rel != "c.bin":
            assert sha256(b.restored(to, rel)) == b.source_hash(rel)
    assert temps_below(to) == []


def test_links_whose_first_link_is_not_selected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "y").mkdir()
    (src / "x" / "f").write_bytes(os.urandom(3000))
    os.link(src / "x" / "f", src / "y" / "g")
    os.link(src / "x" / "f", src / "y" / "h")
    backup(tmp_path / "state", tmp_path / "vault", [src])
    state, _ = read_state(tmp_path / "state")
    to = tmp_path / "out"
    restore(state, tmp_path / "state", [os.fsencode(src / "y")], to)
    y = to / str(src / "y").lstrip("/")
    assert sha256(y / "g") == sha256(y / "h") == sha256(src / "x" / "f")
    assert os.stat(y / "g").st_ino == os.stat(y / "h").st_ino
    assert not (to / str(src / "x").lstrip("/") / "f").exists()


# -- thaws: a fake cold vault over a real local one ---------------------------------


class ColdVault:
    """S3 cold storage as the restore sees it, over a real LocalVault: every
    object is frozen until a thaw is requested, then "thawing" for `polls`
    heads, then "thawed"; reading a frozen object fails. A fake because moto
    restores at once, so the thawing state cannot be observed there."""

    def __init__(self, inner: LocalVault, polls: int = 2) -> None:
        self.inner = inner
        self.polls = polls
        self.calls: list[tuple[Any, ...]] = []
        self.left: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _state(self, key: str) -> str:
        if key not in self.left:
            return "frozen"
        return "thawing" if self.left[key] > 0 else "thawed"

    def head(self, key: str) -> Held | None:
        self.calls.append(("head", key))
        state = self._state(key)
        if state == "thawing":
            self.left[key] -= 1
        size = (self.inner.root / key).stat().st_size
        return Held(size, "", "DEEP_ARCHIVE", state)  # type: ignore[arg-type]

    def request_thaw(self, key: str, tier: str, days: int) -> None:
        self.calls.append(("thaw", key, tier, days))
        self.left.setdefault(key, self.polls)

    def open(self, key: str) -> BinaryIO:
        self.calls.append(("open", key, self._state(key)))
        if self._state(key) != "thawed":
            raise VaultError(f"{key} is frozen")
        return self.inner.open(key)

    def ops(self, op: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == op]


def cold_state(b: Backed, storage_class: str = "DEEP_ARCHIVE") -> State:
    state = b.state()
    for a in state.archives.values():
        a.storage_class = storage_class
    return state


class Sleeps:
    """Stands in for time.sleep: records, never sleeps."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_frozen_archives_are_thawed_once_waited_for_then_read(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = ColdVault(LocalVault(str(b.vault)), polls=2)
    lines: list[str] = []
    sleeps = Sleeps()
    to = tmp_path / "out"
    report = restore(
        cold_state(b), b.state_dir, [], to, vault_for=lambda ref: vault,
        tier="Bulk", thaw_days=3, poll=0.25, report=lines.append, sleep=sleeps,
    )  # fmt: skip
    keys = [a.key for a in b.archives]
    assert vault.ops("thaw") == [("thaw", k, "Bulk", 3) for k in keys]  # one each
    assert vault.ops("open") == [("open", k, "thawed") for k in keys]  # after the wait
    assert sleeps.calls == [0.25] * 3  # thawing, thawing, thawed
    assert describe(b.restored(to)) == describe(b.src)
    assert report.pending == 0
    assert any("requested a thaw of 3 archives" in s and "Bulk" in s for s in lines), lines
    assert any("3 days" in s for s in lines)
    assert lines[-1].startswith("3 of 3 archives ready"), lines


def test_only_the_archives_of_the_selected_paths_are_thawed(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = ColdVault(LocalVault(str(b.vault)), polls=1)
    restore(
        cold_state(b), b.state_dir, [os.fsencode(b.src / "a")], tmp_path / "out",
        vault_for=lambda ref: vault, sleep=Sleeps(), report=lambda s: None,
    )  # fmt: skip
    first = b.archives[0].key
    assert {c[1] for c in vault.calls} == {first}
    assert vault.ops("thaw") == [("thaw", first, "Standard", 7)]  # the defaults


def test_expedited_is_refused_for_deep_archive_before_anything(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    asked: list[str] = []
    with pytest.raises(UsageError, match=r"Expedited.*DEEP_ARCHIVE.*Standard or Bulk"):
        restore(
            cold_state(b), b.state_dir, [], tmp_path / "out",
            vault_for=lambda ref: asked.append(ref),  # type: ignore[arg-type,func-returns-value]
            tier="Expedited",
        )  # fmt: skip
    assert asked == []
    assert not (tmp_path / "out").exists()


def test_expedited_is_fine_for_glacier_class(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = ColdVault(LocalVault(str(b.vault)), polls=0)
    restore(
        cold_state(b, "GLACIER"), b.state_dir, [os.fsencode(b.src / "a")], tmp_path / "out",
        vault_for=lambda ref: vault, tier="Expedited", sleep=Sleeps(),
    )  # fmt: skip
    assert [c[2] for c in vault.ops("thaw")] == ["Expedited"]


def test_no_wait_requests_then_a_later_run_restores(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = ColdVault(LocalVault(str(b.vault)), polls=1)
    to = tmp_path / "out"

    def run() -> tuple[Any, list[str]]:
        lines: list[str] = []
        report = restore(
            cold_state(b), b.state_dir, [], to, vault_for=lambda ref: vault,
            wait=False, report=lines.append, sleep=Sleeps(),
        )  # fmt: skip
        return report, lines

    report, lines = run()
    assert report.pending == 3 and report.files == 0
    assert len(vault.ops("thaw")) == 3 and vault.ops("open") == []
    assert any("run the same restore again later" in s for s in lines), lines
    assert list(to.iterdir()) == []  # nothing restored, not even directories
    report, lines = run()  # still thawing: waited for, not requested again
    assert report.pending == 3 and len(vault.ops("thaw")) == 3
    assert any("3 archives thawing already" in s for s in lines), lines
    report, _ = run()  # thawed now
    assert report.pending == 0 and len(vault.ops("thaw")) == 3
    assert describe(b.restored(to)) == describe(b.src)


def test_refrozen_object_is_requested_again(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = ColdVault(LocalVault(str(b.vault)), polls=1)
    sleeps = Sleeps()
    first = b.archives[0].key

    def forget(seconds: float) -> None:  # the thaw expires while we wait
        sleeps(seconds)
        if len(sleeps.calls) == 1:
            vault.left.pop(first)

    lines: list[str] = []
    restore(
        cold_state(b), b.state_dir, [os.fsencode(b.src / "a")], tmp_path / "out",
        vault_for=lambda ref: vault, sleep=forget, report=lines.append,
    )  # fmt: skip
    assert len(vault.ops("thaw")) == 2
    assert any("frozen again" in s for s in lines)


class FlakyColdVault(ColdVault):
    """A cold vault that does not answer `head` `fail` times while one waits."""

    def __init__(self, inner: LocalVault, fail: int) -> None:
        super().__init__(inner, polls=1)
        self.fail = fail

    def head(self, key: str) -> Held | None:
        if self.left and self.fail > 0:  # once a thaw was requested
            self.fail -= 1
            raise VaultUnreachable("vault fake: connection refused")
        return super().head(key)


def test_waiting_outlives_a_few_unanswered_polls(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = FlakyColdVault(LocalVault(str(b.vault)), fail=3)
    lines: list[str] = []
    restore(
        cold_state(b), b.state_dir, [os.fsencode(b.src / "a")], tmp_path / "out",
        vault_for=lambda ref: vault, sleep=Sleeps(), report=lines.append,
    )  # fmt: skip
    assert sum("will try again" in s for s in lines) == 3
    assert len(vault.ops("thaw")) == 1
    assert sha256(b.restored(tmp_path / "out", "a/a0.bin")) == b.source_hash("a/a0.bin")


def test_waiting_gives_up_on_a_vault_that_stays_unreachable(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = FlakyColdVault(LocalVault(str(b.vault)), fail=100)
    with pytest.raises(VaultUnreachable, match="connection refused"):
        restore(
            cold_state(b), b.state_dir, [os.fsencode(b.src / "a")], tmp_path / "out",
            vault_for=lambda ref: vault, sleep=Sleeps(), report=lambda s: None,
        )  # fmt: skip
    assert vault.ops("open") == []


# -- Glacier vaults: retrieval jobs ---------------------------------------------------


class FakeGlacier:
    """The retrieval steps of a Glacier vault over a real local one: each job
    is "InProgress" for `polls` status calls, then `final`."""

    ref = "glacier://fake"
    url = ref

    def __init__(self, inner: LocalVault, polls: int = 1, final: str = "Succeeded") -> None:
        self.inner = inner
        self.polls = polls
        self.final = final
        self.calls: list[tuple[Any, ...]] = []
        self.jobs: dict[str, list[Any]] = {}

    def start_retrieval(self, archive_id: str, tier: str) -> str:
        self.calls.append(("start", archive_id, tier))
        job = f"job-{len(self.jobs) + 1}"
        self.jobs[job] = [archive_id, self.polls]
        return job

    def job_status(self, job_id: str) -> str:
        self.calls.append(("status", job_id))
        entry = self.jobs[job_id]
        if entry[1] > 0:
            entry[1] -= 1
            return "InProgress"
        return self.final

    def open_job_output(self, job_id: str) -> BinaryIO:
        self.calls.append(("output", job_id))
        assert self.jobs[job_id][1] == 0
        return self.inner.open(self.jobs[job_id][0])

    def head(self, key: str) -> Held | None:
        raise AssertionError("Glacier archives are not headed")

    def open(self, key: str) -> BinaryIO:
        raise AssertionError("Glacier archives are read through jobs")

    def request_thaw(self, key: str, tier: str, days: int) -> None:
        raise AssertionError("Glacier archives are not thawed")

    def close(self) -> None:
        pass


def glacier_state(b: Backed) -> State:
    state = b.state()
    for a in state.archives.values():
        a.vault = FakeGlacier.ref
    return state


def test_glacier_archives_are_read_through_one_job_each(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = FakeGlacier(LocalVault(str(b.vault)), polls=2)
    lines: list[str] = []
    sleeps = Sleeps()
    to = tmp_path / "out"
    restore(
        glacier_state(b), b.state_dir, [], to, vault_for=lambda ref: vault,
        tier="Expedited", poll=5, report=lines.append, sleep=sleeps,
    )  # fmt: skip
    starts = [c for c in vault.calls if c[0] == "start"]
    assert starts == [("start", a.key, "Expedited") for a in b.archives]
    assert [c for c in vault.calls if c[0] == "output"] == [("output", j) for j in vault.jobs]
    assert sleeps.calls == [5, 5, 5]
    for job in vault.jobs:
        assert any(job in s for s in lines), lines
    assert describe(b.restored(to)) == describe(b.src)


def test_glacier_failed_job_stops_before_anything_is_read(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = FakeGlacier(LocalVault(str(b.vault)), polls=0, final="Failed")
    with pytest.raises(VaultError, match=r"job-1 .* failed"):
        restore(
            glacier_state(b), b.state_dir, [], tmp_path / "out",
            vault_for=lambda ref: vault, sleep=Sleeps(),
        )  # fmt: skip
    assert not any(c[0] == "output" for c in vault.calls)


def test_glacier_no_wait_says_the_jobs_are_not_resumed(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    vault = FakeGlacier(LocalVault(str(b.vault)))
    lines: list[str] = []
    report = restore(
        glacier_state(b), b.state_dir, [os.fsencode(b.src / "a")], tmp_path / "out",
        vault_for=lambda ref: vault, wait=False, report=lines.append,
    )  # fmt: skip
    assert report.pending == 1
    assert any("job-1" in s for s in lines)
    assert any("new jobs" in s for s in lines), lines


# -- which URL opens a vault -------------------------------------------------------------


class Opener:
    def __init__(self) -> None:
        self.opened: list[tuple[str, dict[str, object]]] = []

    def __call__(self, url: str, options: Any) -> Any:
        self.opened.append((url, dict(options)))
        return CountingVault(LocalVault("/nonexistent"))


def test_resolver_prefers_vault_option_then_config_then_log_then_ref(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    state = b.state()
    ref = f"file://{b.vault}"
    s3 = "s3://bkt/host?endpoint_url=http://127.0.0.1:9"
    session = next(iter(state.sessions.values()))
    assert VaultResolver(state).url_for(ref) == (session.vault_url, {})
    configured = [("s3://other", {}), (f"file://{b.vault}/", {})]
    assert VaultResolver(state, None, configured).url_for(ref) == (f"file://{b.vault}/", {})
    given = f"file://{b.vault}"
    assert VaultResolver(state, given, configured).url_for(ref) == (given, {})
    # the latest run's URL keeps its options
    session.vault, session.vault_url = "s3://bkt/host", s3
    assert VaultResolver(state).url_for("s3://bkt/host") == (s3, {})
    cfg = [("s3://bkt/host", {"region": "eu-west-1", "endpoint_url": "http://x:1"})]
    assert VaultResolver(state, None, cfg).url_for("s3://bkt/host") == cfg[0]
    assert VaultResolver(state).url_for("glacier://v") == ("glacier://v", {})


def test_resolver_opens_each_vault_once_and_closes_them(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    opener = Opener()
    with VaultResolver(b.state(), opener=opener) as resolve:
        v1 = resolve(f"file://{b.vault}")
        assert resolve(f"file://{b.vault}") is v1
    assert len(opener.opened) == 1 and v1.closed


def test_vault_option_naming_another_vault_is_a_usage_error(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    other = tmp_path / "elsewhere"
    run = cli_restore(b, "--to", tmp_path / "out", "--vault", f"file://{other}")
    assert run.returncode == 2, run
    line = run.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"file://{other}" in line and f"file://{b.vault}" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_vault_option_naming_the_vault_is_used(tmp_path: Path) -> None:
    b = backed_up(tmp_path)
    run = cli_restore(b, "--to", tmp_path / "out", "--vault", f"file://{b.vault}/")
    assert run.returncode == 0, run
    assert describe(b.restored(tmp_path / "out")) == describe(b.src)


@pytest.mark.parametrize(
    "args",
    [["--tier", "Fast"], ["--thaw-days", "0"], ["--poll", "0"], ["--poll", "-1"]],
    ids=["tier", "days", "poll0", "poll-neg"],
)
def test_bad_thaw_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    b = backed_up(tmp_path)
    run = cli_restore(b, "--to", tmp_path / "out", *args)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run
    assert args[0] in run.stderr


def test_thaw_options_with_a_local_vault_restore_at_once(tmp_path: Path) -> None:
    """Nothing is cold in a file vault: --no-wait has nothing to wait for."""
    b = backed_up(tmp_path)
    to = tmp_path / "out"
    args = ["--tier", "Bulk", "--thaw-days", "2", "--poll", "0.01", "--no-wait"]
    run = cli_restore(b, "--to", to, *args)
    assert run.returncode == 0 and run.stderr == "", run
    assert describe(b.restored(to)) == describe(b.src)


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    import threading

    before = set(threading.enumerate())
    yield
    stray = [t for t in threading.enumerate() if t not in before and t.name.startswith("restore")]
    assert stray == []
