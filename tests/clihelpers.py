"""Helpers for the CLI tests: run eventbak in-process or as a real process,
build a source tree, take comparable snapshots of trees, hold the state lock.

Owned by tests/test_cli.py; nothing here knows eventbak's internals except
`hold_lock`, which takes the state-dir lock the way a running backup does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from eventbak.cli import main

#: How the CLI is run: in-process through click's CliRunner, or as
#: `python -m eventbak` in a child process.
MODES = ("runner", "subprocess")

#: Generous: a hung child (a FIFO opened by mistake...) must fail, not stall.
TIMEOUT = 60


@dataclass
class Run:
    args: list[str]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    def __str__(self) -> str:
        return (
            f"eventbak {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout ---\n{self.out}--- stderr ---\n{self.err}"
        )


def base_env(tmp: Path) -> dict[str, str | None]:
    """Keep every default location inside `tmp`; no config from the caller's env."""
    return {
        "EVENTBAK_STATE_DIR": str(tmp / "state"),
        "EVENTBAK_CONFIG": None,
        "XDG_STATE_HOME": str(tmp / "xdg-state"),
        "XDG_DATA_HOME": str(tmp / "xdg-data"),
    }


def child_env(overrides: Mapping[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class Cli:
    """`cli("backup", path, "--json")` -> Run, in the chosen mode."""

    def __init__(self, mode: str, env: dict[str, str | None], cwd: Path) -> None:
        assert mode in (*MODES, "script")
        self.mode = mode
        self.env = env
        self.cwd = cwd

    def __call__(
        self,
        *args: str | os.PathLike[str],
        env: Mapping[str, str | None] | None = None,
        prefix: list[str] | None = None,
        timeout: float = TIMEOUT,
    ) -> Run:
        argv = [os.fspath(a) for a in args]
        merged = {**self.env, **(env or {})}
        if self.mode == "runner" and prefix is None:
            return self._in_process(argv, merged)
        if self.mode == "script":
            cmd = [str(console_script())]
        else:
            cmd = [sys.executable, "-m", "eventbak"]
        proc = subprocess.run(
            [*(prefix or []), *cmd, *argv],
            env=child_env(merged),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return Run(argv, proc.returncode, proc.stdout, proc.stderr)

    def _in_process(self, argv: list[str], env: dict[str, str | None]) -> Run:
        old = os.getcwd()
        os.chdir(self.cwd)
        try:
            result = CliRunner().invoke(main, argv, env=env, catch_exceptions=True)
        finally:
            os.chdir(old)
        err = result.stderr
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            # what a user would have seen: a traceback
            err += "".join(traceback.format_exception(exc))
        return Run(argv, result.exit_code, result.stdout, err)


def console_script() -> Path:
    return Path(sys.executable).parent / "eventbak"


# -- assertions ---------------------------------------------------------------


def assert_ok(run: Run) -> Run:
    assert run.code == 0, run
    assert "Traceback" not in run.out + run.err, run
    return run


def assert_error(run: Run, code: int | None, *needles: str) -> str:
    """Exit `code` (None: any non-zero), exactly one `eventbak: error:` line on
    stderr containing every needle, no traceback anywhere. Returns the line."""
    if code is None:
        assert run.code != 0, run
    else:
        assert run.code == code, run
    assert "Traceback" not in run.out + run.err, run
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run
    line = lines[0]
    assert line.startswith("eventbak: error: "), run
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}\n{run}"
    return line


# -- trees ----------------------------------------------------------------------

#: non-UTF-8 file name: must survive the round trip byte for byte
RAW_NAME = b"raw-\xff\xfe.dat"


def make_tree(src: Path) -> Path:
    """A tree with what a backup must keep: modes, symlinks (dangling too), a
    hard link, an empty file, a non-UTF-8 name, nested dirs, and a file big
    enough to be split across 64KiB archives."""
    (src / "d" / "e").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "b.txt").write_text("bravo\n")
    (src / "c.bin").write_bytes(os.urandom(200_000))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "empty").write_bytes(b"")
    (src / "d" / "e" / "deep.md").write_text("deep\n")
    (src / "d" / "e" / "notes.txt").write_text("nested notes\n")
    (src / "d" / "dup.txt").write_text("x" * 5000)
    with open(os.path.join(os.fsencode(src), RAW_NAME), "wb") as f:
        f.write(b"bytes under a non-UTF-8 name")
    os.link(src / "d" / "e" / "deep.md", src / "hl")
    os.symlink("a.txt", src / "link")
    os.symlink("/nonexistent/eventbak-target", src / "dangling")
    os.symlink("d/e", src / "dirlink")
    os.chmod(src / "b.txt", 0o600)
    os.chmod(src / "c.bin", 0o640)
    os.chmod(src / "run.sh", 0o755)
    os.chmod(src / "d", 0o750)
    # fixed, distinct mtimes (ns precision) so restore must really set them
    t = 1_600_000_000_123_456_789
    for i, p in enumerate(sorted(src.rglob("*"), key=lambda p: len(p.parts), reverse=True)):
        os.utime(p, ns=(t + i * 1_000_001, t + i * 1_000_001), follow_symlinks=False)
    os.utime(src, ns=(t, t))
    return src


def sha256(path: bytes | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Relative path -> (kind, mode, content sha256 or link target, mtime_ns)."""
    rootb = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}

    def one(p: bytes) -> None:
        st = os.lstat(p)
        mode = stat.S_IMODE(st.st_mode)
        rel = os.path.relpath(p, rootb)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(p), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode, st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", mode, sha256(p), st.st_mtime_ns)
        else:
            out[rel] = ("special", stat.S_IFMT(st.st_mode))

    one(rootb)
    for dirpath, dirnames, filenames in os.walk(rootb):
        for name in dirnames + filenames:
            one(os.path.join(dirpath, name))
    return out


def files_below(root: Path) -> set[str]:
    """Relative paths of the non-directories below `root` (as text)."""
    return {os.fsdecode(k) for k, v in snapshot(root).items() if v[0] != "dir"}


def restored(to: Path, original: Path) -> Path:
    """Where `original` (absolute) lands in a restore into `to`."""
    return to / str(original).lstrip("/")


# -- processes --------------------------------------------------------------------


@contextmanager
def hold_lock(state_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the state dir's lock until the block ends.
    Synchronised on the child's "locked" line, never on time."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from eventbak.statedir import StateDir\n"
        "sd = StateDir.open(Path(sys.argv[1]))\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "sd.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.strip() == "locked", f"lock holder said {line!r}"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=TIMEOUT)
        proc.stdout.close()


NOBODY = 65534


def unprivileged_prefix() -> list[str] | None:
    """argv prefix that runs a command without root's power to read anything
    (None if that is impossible here)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "nobody", "--"]
    return None
