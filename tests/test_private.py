"""Private on disk, whatever the umask: the state dir, staging and the local
vault's directories are 0700; the event log, the lock, staged and stored
archives 0600. A real `eventbak backup` subprocess run with umask 000."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import crashutil as cu


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _backup(state: Path, vault: Path, src: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbak", "--state-dir", str(state), "backup", str(src),
         "--vault", f"file://{vault}", "--archive-size", "64KiB", *extra],
        capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0),
    )  # fmt: skip


def _vault_dirs(vault: Path) -> list[Path]:
    return [vault / "archives", *[p for p in (vault / "archives").rglob("*") if p.is_dir()]]


@pytest.mark.parametrize("where", ["same filesystem", "other filesystem"])
def test_backup_with_umask_000_leaves_nothing_readable_by_others(
    tmp_path: Path, where: str
) -> None:
    base = tmp_path
    if where == "other filesystem":  # staged archives are copied, not hard-linked
        shm = Path("/dev/shm")
        if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("no second filesystem at /dev/shm")
        base = shm / f"eventbak-private-{os.getpid()}"
        base.mkdir()
    src, state, vault = tmp_path / "src", tmp_path / "state", base / "vault"
    try:
        cu.make_tree(src, files=40)
        done = _backup(state, vault, src)  # to the end: archives are in the vault
        assert done.returncode == 0, done.stderr
        # a second session cut short leaves staged archives (on a slow enough run)
        more = tmp_path / "more"
        cu.make_tree(more, files=40)
        done = _backup(state, vault, more, "--max-duration", "0.3s", "--compression", "zstd:19")
        assert done.returncode == 0, done.stderr
        for d in (state, state / "staging", vault, *_vault_dirs(vault)):
            assert _mode(d) == 0o700, (d, oct(_mode(d)))
        for f in (state / "events.log", state / "lock", *(state / "staging").iterdir()):
            assert _mode(f) == 0o600, (f, oct(_mode(f)))
        stored = [p for p in (vault / "archives").rglob("*") if p.is_file()]
        assert stored
        for f in stored:
            assert _mode(f) == 0o600, (f, oct(_mode(f)))
    finally:
        if base != tmp_path:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


def test_an_older_world_readable_state_dir_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "staging").mkdir(parents=True)
    os.chmod(state, 0o755)
    os.chmod(state / "staging", 0o755)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    vault = tmp_path / "mine"
    vault.mkdir(mode=0o755)  # a directory the user made (a mount point): left as it is
    os.chmod(vault, 0o755)
    done = _backup(state, vault, src)
    assert done.returncode == 0, done.stderr
    assert _mode(state) == 0o700 and _mode(state / "staging") == 0o700
    assert _mode(vault) == 0o755 and _mode(vault / "archives") == 0o700
