"""Benchmark eventbak against its physical reference and its peers.

    scripts/bench                          # scale 1.0 (a ~3 GB tree), 3 runs of each case
    scripts/bench --scale 0.003 --runs 1   # seconds: the smoke test (tests/test_bench.py)
    scripts/bench --only eventbak,restic   # some tools only (also: replay-1M, s3)
    scripts/bench --only s3                # the S3 upload case alone (no tree needed)
    scripts/bench --only encrypted,incompressible,compressible   # the policy cases
    scripts/bench --only million --runs 1  # 1,000,000 one-byte files (not run by default)

The tree comes from bench/gentree.py (--scale, --seed) and is reused while the
scale and seed stay the same. Cases, each run --runs times with a warm page
cache, median reported:

  full         the whole tree into a fresh location: eventbak (local vault,
               default settings), tar | zstd -3 -T0 | split -b 128m, restic, borg
  text-subset  tar | xz -6 | split -b 128m on a subset of the text files
               (~20 MB at scale 1; xz does ~2 MB/s)
  small        the tree's small/ directory alone (files/s)
  second       an unchanged second backup right after the first (incremental cost)
  restore      the whole tree back, from the second run's output
  replay       `eventbak replay --verify` of the log the full and second runs wrote
  replay-1M    the same on a synthetic, format-exact log of 1,000,000 files
  encrypted    the whole tree: eventbak backup --recipient AGE1... (default
               compression, auto) into a fresh local vault against
               tar | zstd -3 -T2 | age -r AGE1... > one file (no split)
  incompressible  the tree's media/ (random bytes named .jpg/.mp4/.png):
               eventbak --compression auto against tar | cat > one file
  compressible the tree's src/ (text): eventbak --compression auto against
               tar | zstd -3 -T2 > one file; the compression ratio is the target
  s3-upload    (`s3`) eventbak's S3 upload of staged archives (8 x 128 MiB of random
               bytes at scale 1) to a local SeaweedFS against boto3's upload_file
               (s3transfer), same part size and concurrency (--s3-part-size,
               --s3-concurrency: 16 MiB, 4); bench/s3upload.py
  million      (`--only million`; heavy, so only when named) a tree of
               --million-files one-byte files (1,000,000 in 1,000 directories,
               WORKDIR/million/tree, generated once and reused): million-first and
               million-second (unchanged) for eventbak and restic, each run from a
               fresh vault and repo; million-one-changed (eventbak: one file rewritten
               with 2 bytes, then backed up: the files and bytes it stored);
               million-replay (`replay --verify`) and million-status (`status`) of
               the state those three sessions leave. `ok`: what each backup says it
               stored, and one directory (the changed file's) restored and compared

Every output is restored outside the timed region and compared with the
source, file by file (sha256, symlink targets): the `ok` column. Peak RSS is
summed over the whole process tree (sampled every 20 ms). eventbak runs from a
copy of its source taken at the start (WORKDIR/eventbak-snapshot), so that
edits to the checkout during a long run do not mix versions.

Results: a table on stdout and a JSON file (--json, default WORKDIR/results.json).
Standard library only (eventbak itself writes the synthetic log), except the
s3-upload case: bench/s3upload.py uses boto3 and tests/servers.py (SeaweedFS).
The encrypted case needs `age` (Debian package age; installed as root unless
--no-install, else skipped with the reason).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GENTREE = HERE / "gentree.py"
MB = 1e6
MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
ARCHIVE_MEMBERS = 32_000  # members per archive in the synthetic log
TOOLS = ("eventbak", "tar-zstd", "tar-xz", "restic", "borg")
#: cases selected by their own name (--only), each eventbak against one reference
POLICY_CASES = ("encrypted", "incompressible", "compressible")
#: cases run only when --only names them (heavy: minutes, a million files on disk)
OPT_IN = ("million",)
SELECTABLE = (*TOOLS, "replay-1M", "s3", *POLICY_CASES, *OPT_IN)
#: the million case's rows, in table order
MILLION_CASES = (
    "million-first", "million-second", "million-one-changed", "million-replay", "million-status",
)  # fmt: skip
MILLION_PER_DIR = 1000  # files per directory of the million tree
MILLION_TREE_VERSION = 1  # of make_million_tree's layout and contents (the marker)
#: the s3-upload case's two sides, in the order of its first round
S3_TOOLS = ("eventbak", "boto3")
#: each policy case's reference (the row's tool name)
POLICY_REFS = {
    "encrypted": "tar-zstd-age",
    "incompressible": "tar-cat",
    "compressible": "tar-zstd-T2",
}
ROW_TOOLS = (*TOOLS, *POLICY_REFS.values(), "boto3")
#: command -> Debian package, per tool
NEEDS: dict[str, dict[str, str]] = {
    "eventbak": {},
    "tar-zstd": {"tar": "tar", "zstd": "zstd", "split": "coreutils", "bash": "bash"},
    "tar-xz": {"tar": "tar", "xz": "xz-utils", "split": "coreutils", "bash": "bash"},
    "restic": {"restic": "restic"},
    "borg": {"borg": "borgbackup"},
    "encrypted": {"tar": "tar", "zstd": "zstd", "age": "age", "bash": "bash"},
    "incompressible": {"tar": "tar", "cat": "coreutils", "bash": "bash"},
    "compressible": {"tar": "tar", "zstd": "zstd", "bash": "bash"},
    "million": {"restic": "restic"},  # its restic rows; eventbak's run without it
}
CASE_ORDER = (
    "full", "text-subset", "small", "second", "restore", "replay", "replay-1M",
    *MILLION_CASES, *POLICY_CASES, "s3-upload",
)  # fmt: skip


class CmdFailed(Exception):
    pass


# -- measuring ---------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields follow the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants (0 once they are gone)."""
    kids = _children_map()
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(kids.get(pid, ()))
    return total


class RssSampler(threading.Thread):
    """Keeps the maximum of `tree_rss(pid)`, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self.pid))
            if self._done.wait(self.interval):
                return

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


@dataclass
class Sample:
    seconds: float
    peak_rss: int  # bytes
    user: float  # CPU seconds of the process tree (reaped descendants included)
    system: float
    stdout: str = ""
    #: the process's wall time when `seconds` is a time the process measured itself
    process_seconds: float | None = None
    #: the time the process reported for its own work (eventbak's summary `elapsed`:
    #: no interpreter start, imports, state dir set-up), when known
    inner_seconds: float | None = None


@dataclass
class Cmd:
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None


def _tail(path: Path, n: int = 600) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


def run_timed(cmd: Cmd, log_dir: Path, tag: str, capture: bool = False) -> Sample:
    """Run `cmd` once, timed with perf_counter, peak RSS of its process tree
    sampled alongside; a non-zero exit raises CmdFailed. Untimed before it:
    `sync`, so that earlier writes are not flushed during this run."""
    os.sync()
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path = log_dir / f"{tag}.out"
    err_path = log_dir / f"{tag}.err"
    with open(out_path if capture else os.devnull, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd.argv, stdout=out, stderr=err, env=cmd.env, cwd=cmd.cwd)
        sampler = RssSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        peak = sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Not ru_maxrss as a floor: Linux charges the pre-exec address space (this
    # harness, after fork/vfork) to the child's maxrss, so it is this process's size.
    if proc.returncode != 0:
        raise CmdFailed(
            f"{shlex.join(cmd.argv)}: exit {proc.returncode}: {_tail(err_path) or _tail(out_path)}"
        )
    stdout = out_path.read_text(errors="replace") if capture else ""
    return Sample(seconds, peak, usage.ru_utime, usage.ru_stime, stdout)


def run_quiet(cmd: Cmd, what: str) -> str:
    """An untimed helper command; its stdout, or CmdFailed."""
    p = subprocess.run(cmd.argv, env=cmd.env, cwd=cmd.cwd, capture_output=True, check=False)
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).decode(errors="replace").strip()[-600:]
        raise CmdFailed(f"{what}: exit {p.returncode}: {msg}")
    return p.stdout.decode(errors="replace")


def warm(paths: Iterable[Path]) -> None:
    """Read every file below `paths` so that the page cache holds them."""
    buf = bytearray(1 << 20)
    for top in paths:
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                full = os.path.join(dirpath, name)
                try:
                    with open(full, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass
                except OSError:
                    pass  # symlinks to nowhere, sockets


def du(paths: Iterable[Path]) -> int:
    """Apparent size of the regular files below `paths`."""
    total = 0
    for top in paths:
        if top.is_file():
            total += top.stat().st_size
            continue
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if not os.path.islink(os.path.join(dirpath, name)):
                    total += st.st_size
    return total


def rm(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# -- comparing trees -----------------------------------------------------------


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def describe(root: Path, only: set[str] | None = None) -> dict[str, tuple[str, ...]]:
    """relative path -> ("file", size, sha256) | ("link", target) | ("dir",);
    with `only`, just those relative paths (files), nothing else."""
    out: dict[str, tuple[str, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if only is not None and rel not in only:
                continue
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir",)
            elif os.path.isfile(full):
                out[rel] = ("file", str(os.path.getsize(full)), _sha256(full))
            else:
                out[rel] = ("other",)
    return out


def compare(expected: dict[str, tuple[str, ...]], root: Path, only: set[str] | None) -> str:
    """'' when the tree at `root` matches `expected`, else what differs."""
    if not root.is_dir():
        return f"{root} was not restored"
    got = describe(root, only)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or extra or differ):
        return ""
    parts = []
    for label, items in (("missing", missing), ("extra", extra), ("different", differ)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    return f"{root}: " + "; ".join(parts)


# -- the tools -----------------------------------------------------------------


class Tool:
    """One backup program: how to prepare an output location, back up into it
    (`label` names the run: a1 first, a2 second), restore from it, and where a
    restored `src` lands below the target directory."""

    name = ""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        self.out = out
        self.env = env

    def reset(self) -> None:
        rm(self.out)
        self.out.mkdir(parents=True)

    def backup(self, src: Path, label: str) -> Cmd:
        raise NotImplementedError

    def backed_up(self, label: str, stdout: str) -> None:
        """Called with the backup's stdout (to learn snapshot ids)."""

    def restore(self, label: str, target: Path) -> Cmd:
        raise NotImplementedError

    def landing(self, target: Path, src: Path) -> Path:
        return target / str(src).lstrip("/")

    def outputs(self) -> list[Path]:
        return [self.out]

    def stored(self) -> list[Path]:
        """What holds the backup itself (for eventbak: the vault, not the state dir)."""
        return self.outputs()


class Eventbak(Tool):
    name = "eventbak"

    def __init__(
        self,
        out: Path,
        env: dict[str, str],
        exe: list[str],
        backup_args: Sequence[str] = (),
        restore_args: Sequence[str] = (),
    ) -> None:
        super().__init__(out, env)
        self.exe = exe
        self.backup_args = list(backup_args)  # after the defaults: --recipient, --compression
        self.restore_args = list(restore_args)  # --identity
        self.sessions: dict[str, str] = {}
        self.files: dict[str, int] = {}
        self.elapsed: dict[str, float] = {}

    @property
    def state(self) -> Path:
        return self.out / "state"

    @property
    def vault(self) -> Path:
        return self.out / "vault"

    def reset(self) -> None:
        super().reset()
        self.sessions.clear()
        self.files.clear()
        self.elapsed.clear()

    def backup(self, src: Path, label: str) -> Cmd:
        argv = [*self.exe, "--state-dir", str(self.state), "backup", str(src)]
        argv += ["--vault", f"file://{self.vault}", "--json", *self.backup_args]
        return Cmd(argv, self.env)

    def backed_up(self, label: str, stdout: str) -> None:
        try:
            summary = json.loads(stdout)
        except ValueError:
            raise CmdFailed(f"eventbak backup --json printed no JSON: {stdout[-300:]!r}") from None
        if summary.get("state") != "completed":
            raise CmdFailed(f"eventbak session {summary.get('session')}: {summary.get('state')}")
        self.sessions[label] = summary["session"]
        self.files[label] = summary["files"]
        self.elapsed[label] = float(summary.get("elapsed") or 0)

    def restore(self, label: str, target: Path) -> Cmd:
        argv = [*self.exe, "--state-dir", str(self.state), "restore", "--to", str(target)]
        return Cmd([*argv, "--session", self.sessions[label], *self.restore_args], self.env)

    def replay(self, state: Path, as_json: bool = False) -> Cmd:
        argv = [*self.exe, "--state-dir", str(state), "replay", "--verify"]
        return Cmd(argv + (["--json"] if as_json else []), self.env)

    def outputs(self) -> list[Path]:
        return [self.vault, self.state]

    def stored(self) -> list[Path]:
        return [self.vault]


class Restic(Tool):
    name = "restic"

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        env = {**env, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(out / "cache")}
        super().__init__(out, env)
        self.snapshots: dict[str, str] = {}

    @property
    def repo(self) -> Path:
        return self.out / "repo"

    def reset(self) -> None:
        super().reset()
        self.snapshots.clear()
        run_quiet(Cmd(["restic", "init", "--repo", str(self.repo)], self.env), "restic init")

    def backup(self, src: Path, label: str) -> Cmd:
        return Cmd(["restic", "backup", "--repo", str(self.repo), str(src)], self.env)

    def backed_up(self, label: str, stdout: str) -> None:
        m = re.search(r"snapshot ([0-9a-f]+) saved", stdout)
        self.snapshots[label] = m.group(1) if m else "latest"

    def restore(self, label: str, target: Path) -> Cmd:
        snap = self.snapshots.get(label, "latest")
        argv = ["restic", "restore", snap, "--repo", str(self.repo), "--target", str(target)]
        return Cmd(argv, self.env)

    def outputs(self) -> list[Path]:
        return [self.repo]


class Borg(Tool):
    name = "borg"

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        env = {
            **env,
            "BORG_BASE_DIR": str(out / "base"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }
        super().__init__(out, env)

    @property
    def repo(self) -> Path:
        return self.out / "repo"

    def reset(self) -> None:
        super().reset()
        argv = ["borg", "init", "--encryption=none", str(self.repo)]
        run_quiet(Cmd(argv, self.env), "borg init")

    def backup(self, src: Path, label: str) -> Cmd:
        argv = ["borg", "create", "--compression", "auto,zstd,3", f"{self.repo}::{label}"]
        return Cmd([*argv, str(src)], self.env)

    def restore(self, label: str, target: Path) -> Cmd:
        target.mkdir(parents=True, exist_ok=True)
        return Cmd(["borg", "extract", f"{self.repo}::{label}"], self.env, cwd=target)

    def outputs(self) -> list[Path]:
        return [self.repo]


class TarPipe(Tool):
    """tar | COMPRESSOR | split -b 128m: each run writes OUT/<label>/part.*."""

    def __init__(
        self,
        name: str,
        out: Path,
        env: dict[str, str],
        pack: str,
        unpack: str,
        file_list: Path | None = None,
    ) -> None:
        super().__init__(out, env)
        self.name = name
        self.pack = pack
        self.unpack = unpack
        self.file_list = file_list  # members relative to src, else src itself

    def _sh(self, script: str, cwd: Path | None = None) -> Cmd:
        return Cmd(["bash", "-c", "set -euo pipefail; " + script], self.env, cwd)

    def backup(self, src: Path, label: str) -> Cmd:
        parts = self.out / label
        parts.mkdir(parents=True, exist_ok=True)  # untimed: this runs before the timer
        q = shlex.quote
        if self.file_list is not None:
            tar = f"tar cf - -C {q(str(src))} -T {q(str(self.file_list))}"
        else:
            tar = f"tar cf - -C {q(str(src.parent))} {q(src.name)}"
        return self._sh(f"{tar} | {self.pack} | split -b 128m - {q(str(parts))}/part.")

    def restore(self, label: str, target: Path) -> Cmd:
        target.mkdir(parents=True, exist_ok=True)
        parts = shlex.quote(str(self.out / label))
        return self._sh(
            f"cat {parts}/part.* | {self.unpack} | tar xf - -C {shlex.quote(str(target))}"
        )

    def landing(self, target: Path, src: Path) -> Path:
        return target if self.file_list is not None else target / src.name


class TarStream(Tool):
    """tar cf - -C PARENT NAME | STAGE | ... > OUT/<label>/FILE: one file, no
    split; restored by `cat FILE | UNSTAGE | ... | tar xf -`."""

    def __init__(
        self,
        name: str,
        out: Path,
        env: dict[str, str],
        stages: Sequence[str],
        unstages: Sequence[str],
        filename: str,
    ) -> None:
        super().__init__(out, env)
        self.name = name
        self.stages = list(stages)
        self.unstages = list(unstages)
        self.filename = filename

    def _sh(self, script: str) -> Cmd:
        return Cmd(["bash", "-c", "set -euo pipefail; " + script], self.env)

    def file(self, label: str) -> Path:
        return self.out / label / self.filename

    def pipeline(self, src: Path) -> str:
        """The timed command, as a shell pipeline (the file name left out)."""
        q = shlex.quote
        return " | ".join([f"tar cf - -C {q(str(src.parent))} {q(src.name)}", *self.stages])

    def backup(self, src: Path, label: str) -> Cmd:
        self.file(label).parent.mkdir(parents=True, exist_ok=True)  # untimed: before the timer
        return self._sh(f"{self.pipeline(src)} > {shlex.quote(str(self.file(label)))}")

    def restore(self, label: str, target: Path) -> Cmd:
        target.mkdir(parents=True, exist_ok=True)
        q = shlex.quote
        stages = [
            f"cat {q(str(self.file(label)))}",
            *self.unstages,
            f"tar xf - -C {q(str(target))}",
        ]
        return self._sh(" | ".join(stages))

    def landing(self, target: Path, src: Path) -> Path:
        return target / src.name


# -- results -----------------------------------------------------------------


@dataclass
class Row:
    case: str
    tool: str
    samples: list[Sample] = field(default_factory=list)
    input_bytes: int = 0
    input_files: int = 0
    output_bytes: int | None = None
    #: the backup itself: eventbak's vault (output_bytes adds its state dir)
    stored_bytes: int | None = None
    ok: bool | None = None
    error: str = ""
    note: str = ""
    load1: float = 0.0

    @property
    def median(self) -> float | None:
        return statistics.median(s.seconds for s in self.samples) if self.samples else None

    def rate(self, amount: int) -> float | None:
        m = self.median
        return amount / m if m and amount else None

    def as_dict(self) -> dict[str, Any]:
        mb = self.rate(self.input_bytes)
        fps = self.rate(self.input_files)
        peak = max((s.peak_rss for s in self.samples), default=0)
        return {
            "case": self.case,
            "tool": self.tool,
            "median_s": _round(self.median, 4),
            "mb_per_s": _round(mb / MB if mb else None, 1),
            "files_per_s": _round(fps, 0),
            "peak_rss_mib": _round(peak / MIB if peak else None, 1),
            "output_mib": _round(
                self.output_bytes / MIB if self.output_bytes is not None else None, 2
            ),
            "ok": self.ok,
            "error": self.error,
            "note": self.note,
            "input_bytes": self.input_bytes,
            "input_files": self.input_files,
            "output_bytes": self.output_bytes,
            "stored_bytes": self.stored_bytes,
            "ratio": (
                round(self.input_bytes / self.stored_bytes, 4)
                if self.stored_bytes and self.input_bytes
                else None
            ),
            "load1_at_start": self.load1,
            "runs": [
                {
                    "s": round(s.seconds, 4),
                    "peak_rss_mib": round(s.peak_rss / MIB, 1),
                    "user_s": round(s.user, 3),
                    "sys_s": round(s.system, 3),
                    **(
                        {"process_s": round(s.process_seconds, 4)}
                        if s.process_seconds is not None
                        else {}
                    ),
                    **(
                        {"inner_s": round(s.inner_seconds, 4)}
                        if s.inner_seconds is not None
                        else {}
                    ),
                }
                for s in self.samples
            ],
        }


def _round(x: float | None, nd: int) -> float | None:
    if x is None:
        return None
    return round(x, nd) if nd else float(round(x))


def _load1() -> float:
    return os.getloadavg()[0]


# -- the bench -----------------------------------------------------------------


@dataclass
class TreeInfo:
    root: Path
    files: int
    bytes: int
    small_files: int
    small_bytes: int
    subset: list[str]
    subset_bytes: int


def _count(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full) and os.path.isfile(full):
                files += 1
                size += os.path.getsize(full)
    return files, size


def prepare_tree(work: Path, scale: float, seed: int) -> TreeInfo:
    """Generate the tree (or reuse the one already there for this scale and seed)."""
    root = (work / "tree").absolute()
    marker = work / "tree.json"
    want = {
        "scale": scale,
        "seed": seed,
        "gentree_sha256": hashlib.sha256(GENTREE.read_bytes()).hexdigest(),
    }
    have = _marker(marker, root)
    if have is None or any(have.get(k) != v for k, v in want.items()):
        rm(marker)
        rm(root)
        print(f"generating the tree (scale {scale}, seed {seed}) in {root} ...", flush=True)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(GENTREE), str(root), "--scale", str(scale), "--seed", str(seed)],
            check=True,
        )
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
        marker.write_text(json.dumps(want))
    else:
        print(f"reusing the tree in {root} (scale {scale}, seed {seed})", flush=True)
    files, size = _count(root)
    small_files, small_bytes = _count(root / "small")
    # the xz subset: text files in path order, ~20 MB at scale 1 (scaled down below 1)
    budget = 20e6 * min(scale, 1.0)
    texts = sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in (root / "src").rglob("*.py")
    )
    subset: list[str] = []
    total = 0
    for rel, sz in texts:
        if total + sz <= budget:
            subset.append(rel)
            total += sz
    if not subset and texts:
        rel, sz = min(texts, key=lambda t: t[1])
        subset, total = [rel], sz
    return TreeInfo(root, files, size, small_files, small_bytes, subset, total)


@dataclass
class MillionTree:
    root: Path
    files: int
    generated_s: float | None  # None: an existing tree was reused

    @property
    def dirs(self) -> int:
        return math.ceil(self.files / MILLION_PER_DIR)

    @property
    def changed_index(self) -> int:
        """The file million-one-changed rewrites (the middle one)."""
        return self.files // 2

    def path(self, i: int) -> Path:
        return self.root / f"d{i // MILLION_PER_DIR:04d}" / f"f{i:07d}"


def million_content(i: int) -> bytes:
    """File i's one byte (a to z in turn)."""
    return bytes((97 + i % 26,))


def make_million_tree(root: Path, n: int) -> None:
    """`n` one-byte files, MILLION_PER_DIR per directory (d0000/f0000000, ...),
    written into ROOT.partial and renamed at the end (an interrupted run
    leaves no half tree under ROOT). ~1 minute for a million."""
    tmp = root.with_name(root.name + ".partial")
    rm(tmp)
    tmp.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    contents = [million_content(k) for k in range(26)]
    for d in range(math.ceil(n / MILLION_PER_DIR)):
        dpath = os.path.join(tmp, f"d{d:04d}")
        os.mkdir(dpath)
        for i in range(d * MILLION_PER_DIR, min(n, (d + 1) * MILLION_PER_DIR)):
            fd = os.open(f"{dpath}/f{i:07d}", flags, 0o644)
            try:
                os.write(fd, contents[i % 26])
            finally:
                os.close(fd)
    os.rename(tmp, root)


def _marker(marker: Path, root: Path) -> dict[str, Any] | None:
    """What a generated tree's marker says it holds (None: no tree, no marker)."""
    if not (marker.exists() and root.is_dir()):
        return None
    try:
        found = json.loads(marker.read_text())
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def prepare_million_tree(work: Path, n: int) -> MillionTree:
    """WORKDIR/million/tree: generated, or reused while it holds the same `n` files."""
    base = work / "million"
    root = (base / "tree").absolute()
    marker = base / "tree.json"
    want = {"files": n, "per_dir": MILLION_PER_DIR, "version": MILLION_TREE_VERSION}
    have = _marker(marker, root)
    took: float | None = None
    if have != want:
        rm(marker)
        if root.exists():
            print(f"removing the million tree of another size in {root} ...", flush=True)
            rm(root)
        print(f"generating {n:,} one-byte files in {root} ...", flush=True)
        t0 = time.perf_counter()
        make_million_tree(root, n)
        took = time.perf_counter() - t0
        print(f"  generated in {took:.1f} s", flush=True)
        marker.write_text(json.dumps(want))
    else:
        print(f"reusing the million tree in {root} ({n:,} files)", flush=True)
    tree = MillionTree(root, n, took)
    # the changed file back to its byte, should an earlier run have stopped before that
    i = tree.changed_index
    if tree.path(i).read_bytes() != million_content(i):
        tree.path(i).write_bytes(million_content(i))
    return tree


def _million_check(tool: str, stage: str, stdout: str, n: int) -> tuple[str, dict[str, Any]]:
    """('' or what is wrong, eventbak's JSON summary) for one backup of the
    million tree: what the tool says it stored against what `stage` should store."""
    if tool == "restic":
        m = re.search(r"Files:\s+(\d+) new,\s+(\d+) changed,\s+(\d+) unmodified", stdout)
        if m is None:
            return "restic printed no `Files:` line", {}
        new, changed, same = map(int, m.groups())
        want = (n, 0, 0) if stage == "first" else (0, 0, n)
        if (new, changed, same) != want:
            return f"restic: {new} new, {changed} changed, {same} unmodified (want {want})", {}
        return "", {}
    summary = json.loads(stdout)
    stored = {"first": n, "second": 0, "one-changed": 1}[stage]
    pit = (summary.get("point_in_time") or {}).get("files")
    if summary.get("files") != stored or pit != n:
        return (
            f"eventbak {stage}: stored {summary.get('files')} files (want {stored}), "
            f"point in time {pit} (want {n})"
        ), summary
    if stage == "one-changed" and summary.get("bytes") != 2:
        return f"eventbak one-changed: stored {summary.get('bytes')} bytes (want 2)", summary
    return "", summary


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.workdir.absolute()
        self.runs: int = args.runs
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.logs = self.work / "logs"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBAK_")}
        exe = Path(sys.executable).parent / "eventbak"
        self.eventbak_exe = [str(exe)] if exe.exists() else [sys.executable, "-P", "-m", "eventbak"]
        self.tree: TreeInfo
        self.expected: dict[str, dict[str, tuple[str, ...]]] = {}

    # -- helpers -------------------------------------------------------------

    def row(self, case: str, tool: str, files: int, size: int, note: str = "") -> Row:
        r = Row(case, tool, input_files=files, input_bytes=size, note=note, load1=_load1())
        self.rows.append(r)
        return r

    def timed(
        self, cmd: Cmd, tag: str, warm_paths: Sequence[Path], capture: bool = False
    ) -> Sample:
        warm(warm_paths)
        s = run_timed(cmd, self.logs, tag, capture)
        print(
            f"  {tag:<24} {s.seconds:9.3f} s  peak {s.peak_rss / MIB:7.1f} MiB"
            f"  cpu {s.user:7.2f}+{s.system:.2f} s  load {_load1():.2f}",
            flush=True,
        )
        return s

    def expect(self, key: str, root: Path, only: set[str] | None = None) -> dict[str, Any]:
        if key not in self.expected:
            self.expected[key] = describe(root, only)
        return self.expected[key]

    def verify(
        self, tool: Tool, label: str, src: Path, key: str, only: set[str] | None = None
    ) -> str:
        """Restore `label` (untimed) into a fresh directory and compare with `src`."""
        target = self.work / "restore"
        rm(target)
        target.mkdir(parents=True)
        try:
            run_quiet(tool.restore(label, target), f"{tool.name} restore")
            return compare(self.expect(key, src, only), tool.landing(target, src), only)
        finally:
            rm(target)

    # -- cases -----------------------------------------------------------------

    def backup_tools(self, tools: list[Tool]) -> None:
        """full, second, restore and small for every tool, in rounds: run i of
        a case is taken for each tool back to back, so that the slow drift of
        a shared machine (its load, the state of its page cache and file
        system) falls on every tool alike instead of on whichever ran last."""
        t = self.tree
        rows: dict[str, list[Row]] = {}
        for tool in tools:
            note = _SECOND_NOTES.get(tool.name, "")
            rows[tool.name] = [
                self.row("full", tool.name, t.files, t.bytes),
                self.row("second", tool.name, t.files, t.bytes, note),
                self.row("restore", tool.name, t.files, t.bytes),
            ]
        failed: set[str] = set()

        def live() -> list[Tool]:
            return [tool for tool in tools if tool.name not in failed]

        def fail(tool: Tool, exc: CmdFailed) -> None:
            failed.add(tool.name)
            for r in rows[tool.name]:
                if r.ok is None:
                    r.ok, r.error = False, str(exc)
            print(f"   {tool.name} FAILED: {exc}", flush=True)

        for i in range(self.runs):
            for tool in live():
                full, second, _ = rows[tool.name]
                try:
                    tool.reset()
                    s = self.timed(
                        tool.backup(t.root, "a1"), f"{tool.name}-full-{i}", [t.root], True
                    )
                    tool.backed_up("a1", s.stdout)
                    full.samples.append(s)
                    size1 = du(tool.outputs())
                    full.output_bytes = size1
                    s = self.timed(
                        tool.backup(t.root, "a2"), f"{tool.name}-second-{i}", [t.root], True
                    )
                    tool.backed_up("a2", s.stdout)
                    second.samples.append(s)
                    second.output_bytes = du(tool.outputs()) - size1
                except CmdFailed as exc:
                    fail(tool, exc)
        for tool in live():
            full = rows[tool.name][0]
            try:
                why = self.verify(tool, "a1", t.root, "tree")
            except CmdFailed as exc:
                fail(tool, exc)
                continue
            full.ok, full.error = not why, why
        oks: dict[str, list[str]] = {tool.name: [] for tool in tools}
        for i in range(self.runs):
            for tool in live():
                restore = rows[tool.name][2]
                target = self.work / "restore"
                rm(target)
                try:
                    s = self.timed(
                        tool.restore("a2", target), f"{tool.name}-restore-{i}", tool.outputs()
                    )
                except CmdFailed as exc:
                    fail(tool, exc)
                    continue
                restore.samples.append(s)
                oks[tool.name].append(
                    compare(self.expect("tree", t.root), tool.landing(target, t.root), None)
                )
                rm(target)
        for tool in live():
            _, second, restore = rows[tool.name]
            second.ok, second.error = not oks[tool.name][0], oks[tool.name][0]
            bad = [w for w in oks[tool.name] if w]
            restore.ok, restore.error = not bad, (bad[0] if bad else "")
            if isinstance(tool, Eventbak):
                self.replay_case(tool)
        for tool in tools:
            rm(tool.out)
        self.small_cases(tools)

    def small_cases(self, tools: list[Tool]) -> None:
        """The small/ directory alone, in rounds like the other cases."""
        t = self.tree
        self.pair_case("small", t.root / "small", "small", t.small_files, t.small_bytes, tools, {})

    def replay_case(self, tool: Eventbak) -> None:
        files = sum(tool.files.values())
        log = tool.state / "events.log"
        r = self.row(
            "replay",
            "eventbak",
            files,
            log.stat().st_size,
            f"log of the full and second runs: {len(tool.sessions)} sessions, {files} files",
        )
        try:
            for i in range(self.runs):
                r.samples.append(self.timed(tool.replay(tool.state), f"replay-{i}", [log]))
            r.ok, r.error = _replay_ok(tool, tool.state, len(tool.sessions), files)
        except CmdFailed as exc:
            r.ok, r.error = False, str(exc)

    def xz_case(self, tool: TarPipe) -> None:
        t = self.tree
        r = self.row(
            "text-subset",
            tool.name,
            len(t.subset),
            t.subset_bytes,
            f"{len(t.subset)} text files of src/, {t.subset_bytes / MB:.1f} MB",
        )
        only = set(t.subset)
        paths = [t.root / p for p in t.subset]
        try:
            for i in range(self.runs):
                tool.reset()
                r.samples.append(self.timed(tool.backup(t.root, "a1"), f"xz-{i}", paths))
                r.output_bytes = du(tool.outputs())
            why = self.verify(tool, "a1", t.root, "subset", only)
            r.ok, r.error = not why, why
        except CmdFailed as exc:
            r.ok, r.error = False, str(exc)
            print(f"   FAILED: {exc}", flush=True)
        rm(tool.out)

    def policy_cases(self, cases: Sequence[str]) -> dict[str, dict[str, Any]]:
        """encrypted, incompressible, compressible: eventbak against one
        reference each (see the module's docstring). Returns each case's
        parameters (its input, both commands) for the JSON."""
        t = self.tree
        base = self.work / "out" / "policy"
        q = shlex.quote
        info: dict[str, dict[str, Any]] = {}
        for case in cases:
            out = base / case
            rm(out)
            if case == "encrypted":
                src = t.root
                ident = out / "age-identity.txt"
                out.mkdir(parents=True)
                try:
                    said = run_quiet(
                        Cmd([*self.eventbak_exe, "key", "generate", "-o", str(ident)], self.env),
                        "eventbak key generate",
                    )
                except CmdFailed as exc:
                    r = self.row(case, "eventbak", t.files, t.bytes)
                    r.ok, r.error = False, str(exc)
                    continue
                m = re.search(r"\bage1[0-9a-z]{20,}\b", said)
                if m is None:
                    r = self.row(case, "eventbak", t.files, t.bytes)
                    r.ok, r.error = False, f"eventbak key generate printed no recipient: {said!r}"
                    continue
                recipient = m.group(0)
                eb = Eventbak(
                    out / "eventbak", self.env, self.eventbak_exe,
                    ["--recipient", recipient], ["--identity", str(ident)],
                )  # fmt: skip
                ref = TarStream(
                    POLICY_REFS[case], out / "ref", self.env,
                    ["zstd -q -3 -T2", f"age -r {q(recipient)}"],
                    [f"age -d -i {q(str(ident))}", "zstd -q -dc"], "tree.tar.zst.age",
                )  # fmt: skip
                key = "tree"
                files, size = t.files, t.bytes
                notes = {
                    "eventbak": "--recipient (one X25519 key), default compression (auto)",
                    ref.name: "one file, not split (the reference needs no 128 MiB pieces)",
                }
            else:
                sub = "media" if case == "incompressible" else "src"
                src = t.root / sub
                files, size = _count(src)
                eb = Eventbak(
                    out / "eventbak", self.env, self.eventbak_exe, ["--compression", "auto"]
                )
                if case == "incompressible":
                    ref = TarStream(
                        POLICY_REFS[case], out / "ref", self.env, ["cat"], [], "media.tar"
                    )
                else:
                    ref = TarStream(
                        POLICY_REFS[case], out / "ref", self.env,
                        ["zstd -q -3 -T2"], ["zstd -q -dc"], "src.tar.zst",
                    )  # fmt: skip
                key = sub
                what = "random bytes" if sub == "media" else "text"
                notes = {
                    "eventbak": f"--compression auto on {sub}/ ({what})",
                    ref.name: f"{sub}/ into one file, not split",
                }
            masks = {str(src.parent): "PARENT", str(eb.state): "S", f"file://{eb.vault}": "V"}
            if case == "encrypted":
                masks.update({recipient: "AGE1...", str(ident): "IDENTITY"})

            def shown(text: str, masks: dict[str, str] = masks) -> str:
                for secret in sorted(masks, key=len, reverse=True):  # the longest first
                    text = text.replace(secret, masks[secret])
                return text

            eb_argv = eb.backup(src, "a1").argv[len(self.eventbak_exe) :]
            info[case] = {
                "input": str(src),
                "input_files": files,
                "input_bytes": size,
                "eventbak": shown(shlex.join(["eventbak", *eb_argv])),
                "reference": shown(f"{ref.pipeline(src)} > OUT"),
                "reference_restore": shown(" | ".join(["cat OUT", *ref.unstages, "tar xf - -C T"])),
            }
            print(
                f"== {case}: {src} ({files} files, {size / MB:.1f} MB): "
                f"{info[case]['eventbak']} vs {info[case]['reference']}",
                flush=True,
            )
            self.pair_case(case, src, key, files, size, [eb, ref], notes)
            rm(out)
        return info

    def pair_case(
        self,
        case: str,
        src: Path,
        key: str,
        files: int,
        size: int,
        tools: list[Tool],
        notes: dict[str, str],
    ) -> None:
        """One backup of `src` per tool and run, in rounds whose order
        alternates (run 1: eventbak first; run 2: the reference first; ...);
        the last run's output restored (untimed) and compared."""
        rows = {
            tool.name: self.row(case, tool.name, files, size, notes.get(tool.name, ""))
            for tool in tools
        }
        for i in range(self.runs):
            for tool in tools if i % 2 == 0 else tools[::-1]:
                r = rows[tool.name]
                if r.ok is False:
                    continue
                try:
                    tool.reset()
                    s = self.timed(tool.backup(src, "a1"), f"{case}-{tool.name}-{i}", [src], True)
                    tool.backed_up("a1", s.stdout)
                    if isinstance(tool, Eventbak) and tool.elapsed.get("a1"):
                        s.inner_seconds = tool.elapsed["a1"]
                        print(f"    (eventbak's own elapsed {s.inner_seconds:.3f} s)", flush=True)
                    r.samples.append(s)
                    r.output_bytes = du(tool.outputs())
                    r.stored_bytes = du(tool.stored())
                except CmdFailed as exc:
                    r.ok, r.error = False, str(exc)
                    print(f"   {tool.name} FAILED: {exc}", flush=True)
        for tool in tools:
            r = rows[tool.name]
            if r.ok is None:
                try:
                    why = self.verify(tool, "a1", src, key)
                    r.ok, r.error = not why, why
                except CmdFailed as exc:
                    r.ok, r.error = False, str(exc)
            rm(tool.out)

    def replay_1m_case(self, n: int) -> None:
        state = self.work / "replay-1M" / "state"
        rm(state.parent)
        print(f"writing a synthetic log of {n} files ...", flush=True)
        t0 = time.perf_counter()
        archives = write_synthetic_log(state / "events.log", n)
        log = state / "events.log"
        size = log.stat().st_size
        print(f"  {size / MB:.1f} MB, {archives} archives in {time.perf_counter() - t0:.1f} s")
        r = self.row(
            "replay-1M",
            "eventbak",
            n,
            size,
            f"SYNTHETIC log written with eventbak's API: {n} file members in {archives} "
            f"archives ({size / MB:.1f} MB), not from a real backup",
        )
        r.output_bytes = None
        tool = Eventbak(state.parent, self.env, self.eventbak_exe)
        try:
            for i in range(self.runs):
                r.samples.append(self.timed(tool.replay(state), f"replay-1M-{i}", [log]))
            r.ok, r.error = _replay_ok(tool, state, 1, n)
        except CmdFailed as exc:
            r.ok, r.error = False, str(exc)
        rm(state.parent)

    def million_case(self, n: int, restic_skipped: str) -> dict[str, Any]:
        """The million case (see the module's docstring), in rounds: run i
        takes each tool's first and second backup back to back (the order
        alternates between runs), then eventbak's one-changed, replay and
        status. Returns the case's parameters and what one-changed stored."""
        t = prepare_million_tree(self.work, n)
        base = self.work / "million" / "out"
        rm(base)
        eb = Eventbak(base / "eventbak", self.env, self.eventbak_exe)
        tools: list[Tool] = [eb]
        if not restic_skipped:
            tools.append(Restic(base / "restic", self.env))
        changed = t.path(t.changed_index)
        rel = str(changed.relative_to(t.root))
        info: dict[str, Any] = {
            "tree": str(t.root), "files": n, "dirs": t.dirs, "per_dir": MILLION_PER_DIR,
            "generated_s": None if t.generated_s is None else round(t.generated_s, 1),
            "changed_file": rel, "restic_skipped": restic_skipped, "one_changed": [],
        }  # fmt: skip
        rows: dict[tuple[str, str], Row] = {}
        for tool in tools:
            rows["million-first", tool.name] = self.row("million-first", tool.name, n, n)
            rows["million-second", tool.name] = self.row(
                "million-second", tool.name, n, n, _SECOND_NOTES[tool.name]
            )
        one = rows["million-one-changed", "eventbak"] = self.row(
            "million-one-changed", "eventbak", n, n,
            f"{rel} rewritten with 2 bytes, then an incremental backup",
        )  # fmt: skip
        replay = rows["million-replay", "eventbak"] = self.row(
            "million-replay", "eventbak", n + 1, 0,
            "replay --verify of the log of million-first, -second and -one-changed",
        )  # fmt: skip
        status = rows["million-status", "eventbak"] = self.row(
            "million-status", "eventbak", 0, 0, "eventbak status after million-one-changed"
        )
        failed: set[str] = set()

        def fail(tool: str, exc: Exception) -> None:
            failed.add(tool)
            for (_case, name), r in rows.items():
                if name == tool and r.ok is None:
                    r.ok, r.error = False, str(exc)
            print(f"   {tool} FAILED: {exc}", flush=True)

        def check(r: Row, why: str) -> None:
            if why and not r.error:
                r.error = why
                print(f"   {r.case} / {r.tool}: {why}", flush=True)

        print(
            f"== million: {n:,} one-byte files in {t.dirs:,} directories; "
            f"{', '.join(tool.name for tool in tools)}",
            flush=True,
        )
        before = describe(changed.parent)  # the changed file's directory, untouched
        after: dict[str, tuple[str, ...]] = {}
        warm([t.root])  # once: every later run follows backups that walked the whole tree
        for i in range(self.runs):
            for tool in tools if i % 2 == 0 else tools[::-1]:
                if tool.name in failed:
                    continue
                try:
                    tool.reset()
                    size0 = 0
                    for label, stage in (("m1", "first"), ("m2", "second")):
                        r = rows[f"million-{stage}", tool.name]
                        tag = f"million-{stage}-{tool.name}-{i}"
                        s = self.timed(tool.backup(t.root, label), tag, [], True)
                        tool.backed_up(label, s.stdout)
                        if isinstance(tool, Eventbak) and tool.elapsed.get(label):
                            s.inner_seconds = tool.elapsed[label]
                        r.samples.append(s)
                        check(r, _million_check(tool.name, stage, s.stdout, n)[0])
                        size = du(tool.outputs())
                        r.output_bytes = size - size0
                        size0 = size
                except (CmdFailed, ValueError) as exc:
                    fail(tool.name, exc)
            if "eventbak" in failed:
                continue
            try:
                vault0, size0 = du([eb.vault]), du(eb.outputs())
                changed.write_bytes(b"zz")
                try:
                    if not after:
                        after = describe(changed.parent)
                    s = self.timed(eb.backup(t.root, "m3"), f"million-one-changed-{i}", [], True)
                finally:
                    changed.write_bytes(million_content(t.changed_index))
                eb.backed_up("m3", s.stdout)
                s.inner_seconds = eb.elapsed.get("m3") or None
                one.samples.append(s)
                why, summary = _million_check("eventbak", "one-changed", s.stdout, n)
                check(one, why)
                grew = du([eb.vault]) - vault0
                one.output_bytes, one.stored_bytes = du(eb.outputs()) - size0, grew
                stored = {
                    k: summary.get(k) for k in ("files", "bytes", "bytes_uploaded", "archives")
                }
                info["one_changed"].append({**stored, "vault_growth": grew, "s": s.seconds})
                print(
                    f"    stored {stored['files']} file(s), {stored['bytes']} B; uploaded "
                    f"{stored['bytes_uploaded']:,} B; the vault grew by {grew:,} B "
                    "(archive + manifest)",
                    flush=True,
                )
                log = eb.state / "events.log"
                replay.input_bytes = log.stat().st_size
                replay.samples.append(self.timed(eb.replay(eb.state), f"million-replay-{i}", []))
                argv = [*self.eventbak_exe, "--state-dir", str(eb.state), "status"]
                s = self.timed(Cmd(argv, self.env), f"million-status-{i}", [], True)
                status.samples.append(s)
                head = s.stdout.strip().splitlines()[:1]
                if not head or eb.sessions["m3"] not in head[0] or "completed" not in head[0]:
                    check(status, f"eventbak status: {head[0] if head else s.stdout!r}")
                if i == self.runs - 1:
                    _ok, why = _replay_ok(eb, eb.state, 3, n + 1)
                    check(replay, why)
            except (CmdFailed, ValueError, KeyError) as exc:
                fail("eventbak", exc)
        # untimed: the changed file's directory restored from every session and
        # snapshot of the last run, compared file by file (not the whole million)
        restored = [
            ("million-first", "m1", before),
            ("million-second", "m2", before),
            ("million-one-changed", "m3", after),
        ]
        for tool in tools:
            if tool.name in failed:
                continue
            for case, label, expected in restored:
                if (case, tool.name) not in rows or rows[case, tool.name].ok is not None:
                    continue
                r = rows[case, tool.name]
                target = self.work / "restore"
                rm(target)
                target.mkdir(parents=True)
                cmd = tool.restore(label, target)
                what = str(changed.parent)
                cmd.argv += ["--include", what] if tool.name == "restic" else [what]
                try:
                    run_quiet(cmd, f"{tool.name} restore {changed.parent}")
                    check(r, compare(expected, tool.landing(target, changed.parent), None))
                except CmdFailed as exc:
                    check(r, str(exc))
                rm(target)
        for r in rows.values():
            if r.ok is None:
                r.ok = not r.error and bool(r.samples)
                if not r.samples and not r.error:
                    r.error = "not run"
        rm(base)
        return info

    def s3_case(self) -> dict[str, Any]:
        """eventbak's S3 upload against boto3's upload_file (bench/s3upload.py),
        both to one local SeaweedFS, in rounds whose order alternates (run 1:
        eventbak then boto3; run 2: boto3 then eventbak; ...). Returns the
        case's parameters for the JSON."""
        import s3upload  # boto3 and tests/servers.py: only this case needs them

        a = self.args
        part, conc = a.s3_part_size * MIB, a.s3_concurrency
        count, size = s3upload.sizes_for(a.scale, part)
        total = count * size
        base = self.work / "s3upload"
        info: dict[str, Any] = {
            "archives": count, "archive_bytes": size, "part_size": part, "concurrency": conc,
            "boto3": _dist_version("boto3"), "botocore": _dist_version("botocore"),
            "s3transfer": _dist_version("s3transfer"),
        }  # fmt: skip
        weed = Path(sys.executable).parent / "weed"
        if not weed.exists() and shutil.which("weed") is None:
            info["skipped"] = "weed (SeaweedFS) not found: run scripts/bootstrap dev"
            return info
        print(
            f"== s3-upload: {count} archive(s) of {size / MIB:g} MiB ({total / MB:.1f} MB), "
            f"part size {part // MIB} MiB, concurrency {conc}",
            flush=True,
        )
        archives, took = s3upload.make_archives(base / "archives", count, size, part, a.seed)
        if took:
            print(f"  made the archives in {took:.1f} s", flush=True)
        notes = {
            "eventbak": "Transfers.run per archive, one after another (the coordinator's "
            "uploader), S3Vault; timed inside the process",
            "boto3": "client.upload_file per archive, one after another (s3transfer), "
            "ChecksumAlgorithm=SHA256; timed inside the process",
        }
        rows = {t: self.row("s3-upload", t, count, total, notes[t]) for t in S3_TOOLS}
        try:
            store = s3upload.Store(base / "seaweedfs")
        except Exception as exc:  # ServerStartError, botocore errors: the ok column
            for r in rows.values():
                r.ok, r.error = False, f"SeaweedFS did not start: {exc}"
            print(f"   FAILED: SeaweedFS did not start: {exc}", flush=True)
            rm(base / "seaweedfs")
            return info
        info.update(
            seaweedfs=store.version, endpoint=store.endpoint_url,
            seaweedfs_start_s=round(store.started_in, 1), eventbak_archive_times=[],
            seaweedfs_cpu_s={t: [] for t in S3_TOOLS},
        )  # fmt: skip
        print(f"  SeaweedFS up in {store.started_in:.1f} s at {store.endpoint_url}", flush=True)
        try:
            took = store.warm_up(archives[0], part)
        except Exception as exc:  # botocore errors: the ok column
            for r in rows.values():
                r.ok, r.error = False, f"SeaweedFS refused the warm-up upload: {exc}"
            store.stop()
            rm(base / "seaweedfs")
            return info
        print(f"  warm-up upload of one archive (untimed): {took:.1f} s", flush=True)
        manifest = base / "manifest.json"
        s3upload.write_manifest(manifest, archives)
        env = store.child_env(self.env)
        state = base / "state"
        try:
            for i in range(self.runs):
                for tool in S3_TOOLS if i % 2 == 0 else S3_TOOLS[::-1]:
                    r = rows[tool]
                    if r.ok is False:
                        continue
                    rm(state)
                    prefix = f"{tool}-{i + 1}"
                    argv = s3upload.child_argv(
                        tool, manifest, store.endpoint_url, prefix, part, conc,
                        state if tool == "eventbak" else None,
                    )  # fmt: skip
                    tag = f"s3-{tool}-{i}"
                    warm([base / "archives"])
                    cpu0 = store.cpu_seconds()
                    try:
                        s = run_timed(Cmd(argv, env), self.logs, tag, capture=True)
                        out = json.loads(s.stdout.strip().splitlines()[-1])
                    except (CmdFailed, ValueError, IndexError) as exc:
                        r.ok, r.error = False, str(exc)
                        print(f"   {tool} FAILED: {exc}", flush=True)
                        continue
                    server_cpu = store.cpu_seconds() - cpu0
                    info["seaweedfs_cpu_s"][tool].append(round(server_cpu, 2))
                    s.process_seconds, s.seconds = s.seconds, float(out["seconds"])
                    r.samples.append(s)
                    print(
                        f"  {tag:<16} {s.seconds:7.3f} s {total / s.seconds / MB:6.1f} MB/s"
                        f"  peak {s.peak_rss / MIB:5.1f} MiB  process {s.process_seconds:.2f} s"
                        f"  cpu {s.user:.2f}+{s.system:.2f} s  SeaweedFS cpu {server_cpu:.2f} s"
                        f"  load {_load1():.2f}",
                        flush=True,
                    )
                    if tool == "eventbak":
                        info["eventbak_archive_times"].append(out.get("archives", []))
                    why = store.check(prefix, out["keys"], archives)
                    if not why and i == 0:
                        why = store.read_back(prefix, out["keys"], archives)
                    if why:
                        r.ok, r.error = False, why
                    else:
                        r.output_bytes = total
        finally:
            store.stop()
            rm(base / "seaweedfs")
            rm(state)
        for r in rows.values():
            if r.ok is None:
                r.ok = bool(r.samples)
        # eventbak's speed over boto3's within each round (back to back: the
        # machine's drift between rounds cancels out)
        mine, theirs = rows["eventbak"].samples, rows["boto3"].samples
        info["round_ratios"] = [
            round(b.seconds / e.seconds, 3) for e, b in zip(mine, theirs, strict=False)
        ]
        return info


_POLICY_NOTES = {
    "encrypted": "the reference writes one file (no 128 MiB pieces: not needed for it); "
    "both encrypt to the same X25519 recipient (made by `eventbak key generate`); "
    "eventbak encrypts with pyrage",
    "incompressible": "the target is eventbak's MB/s against tar | cat's (a copy, no hash)",
    "compressible": "the target is the compression ratio (input bytes / stored bytes); the "
    "reference is zstd -3 with 2 threads (-T2)",
}

_SECOND_NOTES = {
    "eventbak": "stores only what changed since the last completed session (its manifest)",
    "tar-zstd": "no incremental mode: a full run again into a fresh location",
    "restic": "skips unchanged files (parent snapshot)",
    "borg": "skips unchanged files (files cache)",
}


def _replay_ok(tool: Eventbak, state: Path, sessions: int, files: int) -> tuple[bool, str]:
    """Untimed check of a replay: verify ok, every session completed."""
    out = run_quiet(tool.replay(state, as_json=True), "eventbak replay --json").splitlines()
    verdict = json.loads(out[-1]) if out else {}
    summary: dict[str, Any] = {}
    for line in out:
        if line.startswith('{"state"'):
            summary = json.loads(line)["state"]
    if verdict.get("verify") != "ok":
        return False, f"replay --verify: {verdict}"
    states = list(summary.get("sessions", {}).values())
    if states != ["completed"] * sessions:
        return False, f"sessions after replay: {states}"
    return True, ""


def write_synthetic_log(path: Path, n: int) -> int:
    """A format-exact event log of one completed session with `n` file members
    (archives of ARCHIVE_MEMBERS), written with eventbak's own API. Returns
    the number of archives."""
    from eventbak.core import events as ev
    from eventbak.core.log import EventLog

    at = time.time()
    sid = "20250101T000000Z-syn1"
    vault = "file:///bench/vault"
    log, _ = EventLog.open(path)
    try:
        log.append(
            ev.SessionOpened(
                at=at,
                session=sid,
                dataset="cli",
                vault=vault,
                paths=[b"/data"],
                archive_size=128 * MIB,
                compression="auto",
                host="bench",
                version="synthetic",
            )
        )
        log.commit()
        archives = math.ceil(n / ARCHIVE_MEMBERS)
        seal = getattr(ev.ArchiveSealed, "of", None)
        for k in range(archives):
            aid = f"{sid}-{k + 1:06d}"
            log.append(ev.ArchiveStarted(at=at, session=sid, archive=aid, index=k + 1))
            members = [
                ev.Member(
                    path=b"/data/d%04d/f%07d.dat" % (i // 1000, i),
                    kind="file",
                    mode=0o644,
                    mtime_ns=1_700_000_000_000_000_000 + i,
                    size=4096,
                    uid=1000,
                    gid=1000,
                    offset=0,
                    length=4096,
                )
                for i in range(k * ARCHIVE_MEMBERS, min(n, (k + 1) * ARCHIVE_MEMBERS))
            ]
            raw = len(members) * (512 + 4096) + 1024
            size = raw // 3
            sha = hashlib.sha256(aid.encode()).hexdigest()
            staged = f"{aid}.tar.zst"
            fields = dict(
                at=at,
                archive=aid,
                staged=staged,
                size=size,
                raw_size=raw,
                sha256=sha,
                compression="auto",
                members=members,
            )
            log.append(seal(**fields) if seal else ev.ArchiveSealed(**fields))  # type: ignore[arg-type]
            key = f"archives/{sid}/{staged}"
            log.append(ev.UploadStarted(at=at, archive=aid, vault=vault, key=key))
            log.append(
                ev.ArchiveUploaded(at=at, archive=aid, vault=vault, key=key, size=size, sha256=sha)
            )
            if k % 4 == 3:
                log.commit()
        log.append(
            ev.SessionCompleted(
                at=at,
                session=sid,
                files=n,
                bytes=n * 4096,
                archives=archives,
                skipped=0,
                changed=0,
            )
        )
        log.commit()
    finally:
        log.close()
    return archives


# -- peers, machine ------------------------------------------------------------


def ensure_tools(wanted: Sequence[str], install: bool) -> tuple[dict[str, str], list[str]]:
    """Install what the wanted tools need (apt-get, as root). Returns the
    reason each unusable tool is skipped, and notes about installing."""
    notes: list[str] = []

    def missing() -> dict[str, str]:
        return {
            cmd: pkg for t in wanted for cmd, pkg in NEEDS[t].items() if shutil.which(cmd) is None
        }

    lacking = missing()
    if lacking and install:
        pkgs = sorted(set(lacking.values()))
        if os.geteuid() != 0:
            notes.append(f"not root: cannot apt-get install {' '.join(pkgs)}")
        elif shutil.which("apt-get") is None:
            notes.append(f"no apt-get: cannot install {' '.join(pkgs)}")
        else:
            print(f"installing {' '.join(pkgs)} (apt-get) ...", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            argv = ["apt-get", "install", "-y", "-q", *pkgs]
            if _apt(argv, env) != 0:
                _apt(["apt-get", "update", "-q"], env)
                if _apt(argv, env) != 0:
                    notes.append(f"apt-get install {' '.join(pkgs)} failed (after apt-get update)")
        lacking = missing()
    skipped = {}
    for t in wanted:
        gone = [cmd for cmd in NEEDS[t] if cmd in lacking]
        if gone:
            how = "" if install else ", --no-install"
            debs = " ".join(sorted({NEEDS[t][cmd] for cmd in gone}))
            skipped[t] = f"not installed: {', '.join(gone)} (Debian: {debs}{how})"
    return skipped, notes


def _apt(argv: list[str], env: dict[str, str]) -> int:
    try:
        p = subprocess.run(argv, env=env, capture_output=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"   {shlex.join(argv)}: {exc}", flush=True)
        return 1
    if p.returncode != 0:
        print(f"   {shlex.join(argv)}: exit {p.returncode}", flush=True)
    return p.returncode


def _version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (p.stdout or p.stderr).decode(errors="replace").strip().splitlines()
    return lines[0].strip() if lines else ""


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _eventbak_source() -> Path:
    spec = importlib.util.find_spec("eventbak")
    if spec is None or spec.origin is None:
        raise SystemExit("bench: eventbak is not importable (run scripts/bootstrap dev)")
    return Path(spec.origin).parent


def fingerprint(package: Path) -> str:
    """A hash of the package's source files (names and contents)."""
    h = hashlib.sha256()
    for p in sorted(package.rglob("*.py")):
        h.update(str(p.relative_to(package)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _git(*args: str) -> str:
    return _version(["git", "-C", str(HERE.parent), *args])


def snapshot_eventbak(work: Path) -> dict[str, Any]:
    """Copy eventbak's source to WORKDIR/eventbak-snapshot and measure that copy
    (PYTHONPATH), so that edits landing in the checkout during a long run
    cannot mix versions within one table."""
    src = _eventbak_source()
    dest = work / "eventbak-snapshot"
    rm(dest)
    shutil.copytree(src, dest / "eventbak", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(dest))  # the synthetic log is written with the same code
    modified = _git("status", "--porcelain", "--", str(src))
    return {
        "source": str(src),
        "snapshot": str(dest),
        "fingerprint": fingerprint(src),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "modified": bool(modified),
    }


def machine_info(work: Path, eventbak_exe: list[str]) -> dict[str, Any]:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    df = ""
    try:
        df = (
            subprocess.run(
                ["df", "-h", "--output=source,fstype,size,used,avail", str(work)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        df = " ".join(df.split())
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    return {
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram": mem,
        "disk": f"{df} (source fstype size used avail of {work})",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
        "versions": {
            "eventbak": _version([*eventbak_exe, "--version"]),
            "tar": _version(["tar", "--version"]),
            "zstd": _version(["zstd", "--version"]),
            "xz": _version(["xz", "--version"]),
            "restic": _version(["restic", "version"]),
            "borg": _version(["borg", "--version"]),
            "age": _version(["age", "--version"]),
            "pyrage": _dist_version("pyrage"),
        },
    }


# -- report ----------------------------------------------------------------------


def _get(rows: list[dict[str, Any]], case: str, tool: str) -> dict[str, Any] | None:
    for r in rows:
        if r["case"] == case and r["tool"] == tool and r["median_s"]:
            return r
    return None


def _target(name: str, passed: bool | None, value: float | None, detail: str) -> dict[str, Any]:
    status = "n/a" if passed is None else ("PASS" if passed else "MISS")
    return {"target": name, "status": status, "value": value, "detail": detail}


def targets(
    rows: list[dict[str, Any]], replay_files: int, million: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The issue's targets, as ratios between rows of this run."""
    out: list[dict[str, Any]] = []

    def ratio(name: str, case: str, peer: str, key: str, want: float) -> None:
        a, b = _get(rows, case, "eventbak"), _get(rows, case, peer)
        unit = "MB/s" if key == "mb_per_s" else "files/s"
        if a is None or b is None or not a[key] or not b[key]:
            out.append(_target(name, None, None, f"{case} {unit}: not measured"))
            return
        v = a[key] / b[key]
        detail = f"{case} {unit}: eventbak {a[key]:g} vs {peer} {b[key]:g} = {v:.2f}x"
        out.append(_target(name, v >= want, round(v, 2), f"{detail} (want >= {want}x)"))

    ratio("full >= 0.9x tar|zstd", "full", "tar-zstd", "mb_per_s", 0.9)
    ratio("full >= 2x restic", "full", "restic", "mb_per_s", 2.0)
    ratio("full >= 2x borg", "full", "borg", "mb_per_s", 2.0)
    ratio("small >= 1.5x restic", "small", "restic", "files_per_s", 1.5)
    ratio("s3-upload >= 0.9x boto3", "s3-upload", "boto3", "mb_per_s", 0.9)
    ratio("encrypted >= tar|zstd|age", "encrypted", "tar-zstd-age", "mb_per_s", 1.0)
    out.append(_encrypted_output(rows))
    name = "encrypted peak RSS < 200 MiB"
    r = _get(rows, "encrypted", "eventbak")
    if r and r["peak_rss_mib"]:
        p = r["peak_rss_mib"]
        ref = _get(rows, "encrypted", "tar-zstd-age")
        also = f" (tar|zstd|age {ref['peak_rss_mib']:g} MiB)" if ref else ""
        out.append(_target(name, p < 200, p, f"eventbak {p:g} MiB{also}"))
    else:
        out.append(_target(name, None, None, "not measured"))
    ratio("incompressible >= 0.9x tar|cat", "incompressible", "tar-cat", "mb_per_s", 0.9)
    out.append(_compressible_ratio(rows))

    name = "peak RSS < 200 MiB"
    peaks = {
        r["case"]: r["peak_rss_mib"]
        for r in rows
        if r["tool"] == "eventbak"
        and r["case"]
        in ("full", "small", "second", "restore", "s3-upload", "incompressible", "compressible")
        and r["peak_rss_mib"]
    }
    if peaks:
        p = max(peaks.values())
        each = ", ".join(f"{k} {v:g}" for k, v in peaks.items())
        out.append(_target(name, p < 200, p, f"eventbak max {p:g} MiB ({each})"))
    else:
        out.append(_target(name, None, None, "not measured"))

    for case in ("second", "restore"):  # by time: restic's speed at least
        name = f"{case} >= restic"
        a, b = _get(rows, case, "eventbak"), _get(rows, case, "restic")
        if a and b:
            v = b["median_s"] / a["median_s"]
            detail = f"eventbak {a['median_s']:.2f} s vs restic {b['median_s']:.2f} s = {v:.2f}x"
            want = f"{detail} restic's speed (want >= 1x)"
            out.append(_target(name, v >= 1, round(v, 2), want))
        else:
            out.append(_target(name, None, None, "not measured"))

    name = "replay 1M files < 3 s"
    r = _get(rows, "replay-1M", "eventbak")
    if r is None:
        out.append(_target(name, None, None, "not measured"))
    elif replay_files >= 1_000_000:
        s = r["median_s"]
        detail = f"{s:.3f} s for {replay_files:,} files (synthetic log; want < 3 s)"
        out.append(_target(name, s < 3, s, detail))
    else:
        detail = (
            f"{r['median_s']:.3f} s, but only {replay_files:,} files: the 1M target needs "
            "--scale >= 1 or --replay-files 1000000 (synthetic log)"
        )
        out.append(_target(name, None, r["median_s"], detail))
    out += _million_targets(rows, million)
    return out


def _million_targets(
    rows: list[dict[str, Any]], million: dict[str, Any] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    n = million["files"] if million else 0
    for case in ("million-first", "million-second", "million-replay", "million-status"):
        name = f"{case} peak RSS < 200 MiB"
        r = _get(rows, case, "eventbak")
        if r is None or not r["peak_rss_mib"]:
            out.append(_target(name, None, None, "not measured"))
            continue
        p = r["peak_rss_mib"]
        peer = _get(rows, case, "restic")
        also = f" (restic {peer['peak_rss_mib']:g} MiB)" if peer and peer["peak_rss_mib"] else ""
        detail = f"eventbak {p:g} MiB{also}, {n:,} files"
        if n >= 1_000_000:
            out.append(_target(name, p < 200, p, detail))
        else:
            out.append(_target(name, None, p, f"{detail}: the target is for 1,000,000 files"))

    name = "million-one-changed stores 1 file"
    runs = million["one_changed"] if million else []
    if not runs:
        out.append(_target(name, None, None, "not measured"))
    else:
        files = [oc["files"] for oc in runs]
        last = runs[-1]
        each = "" if len(runs) == 1 else f" (every run: {', '.join(map(str, files))})"
        r = _get(rows, "million-one-changed", "eventbak")
        took = f" in {r['median_s']:.2f} s (median)" if r else ""
        detail = (
            f"stored {last['files']} file(s){each}, {last['bytes']} B; uploaded "
            f"{last['bytes_uploaded']:,} B (its archive); the vault grew by "
            f"{last['vault_growth']:,} B (archive + manifest){took}, of {n:,} files"
        )
        out.append(_target(name, all(f == 1 for f in files), last["files"], detail))

    name = "million-second >= restic"
    a, b = _get(rows, "million-second", "eventbak"), _get(rows, "million-second", "restic")
    if a and b:
        v = b["median_s"] / a["median_s"]
        detail = (
            f"eventbak {a['median_s']:.2f} s vs restic {b['median_s']:.2f} s = {v:.2f}x "
            f"restic's speed (want >= 1x), {n:,} files"
        )
        out.append(_target(name, v >= 1, round(v, 2), detail))
    else:
        out.append(_target(name, None, None, "not measured"))
    return out


def _state_mib(r: dict[str, Any]) -> float:
    """eventbak's state dir (the local catalog): its output less its vault."""
    return ((r["output_bytes"] or 0) - (r["stored_bytes"] or 0)) / MIB


def _encrypted_output(rows: list[dict[str, Any]]) -> dict[str, Any]:
    name = "encrypted output <= tar|zstd|age"
    a, b = _get(rows, "encrypted", "eventbak"), _get(rows, "encrypted", "tar-zstd-age")
    if not (a and b and a["stored_bytes"] and b["stored_bytes"]):
        return _target(name, None, None, "not measured")
    v = a["stored_bytes"] / b["stored_bytes"]
    with_state = a["output_bytes"] / b["stored_bytes"]
    detail = (
        f"eventbak's vault {a['stored_bytes'] / MIB:,.2f} MiB vs {b['stored_bytes'] / MIB:,.2f} "
        f"MiB = {v:.4f}x (want <= 1); its state dir (the local catalog) adds "
        f"{_state_mib(a):,.2f} MiB: {with_state:.4f}x with it"
    )
    return _target(name, v <= 1, round(v, 4), detail)


def _compressible_ratio(rows: list[dict[str, Any]]) -> dict[str, Any]:
    name = "compressible ratio >= zstd -3"
    a, b = _get(rows, "compressible", "eventbak"), _get(rows, "compressible", "tar-zstd-T2")
    if not (a and b and a["ratio"] and b["ratio"]):
        return _target(name, None, None, "not measured")
    with_state = a["input_bytes"] / a["output_bytes"]
    detail = (
        f"input / stored bytes: eventbak {a['ratio']:.4f} (its vault) vs tar|zstd -3 "
        f"{b['ratio']:.4f} = {a['ratio'] / b['ratio']:.4f}x (want >= 1); with eventbak's "
        f"state dir ({_state_mib(a):,.2f} MiB) {with_state:.4f}"
    )
    return _target(name, a["ratio"] >= b["ratio"], a["ratio"], detail)


def _fmt(x: Any, nd: int) -> str:
    if x is None:
        return "-"
    if nd == 0:
        return f"{x:,.0f}"
    return f"{x:,.{nd}f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ["case", "tool", "median s", "MB/s", "files/s", "peak RSS MiB", "output MiB", "ok"]
    body = []
    for r in rows:
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        s = r["median_s"]
        body.append(
            [
                r["case"] + (" (synthetic)" if r["case"] == "replay-1M" else ""),
                r["tool"],
                _fmt(s, 3 if s is not None and s < 100 else 1),
                _fmt(r["mb_per_s"], 1),
                _fmt(r["files_per_s"], 0),
                _fmt(r["peak_rss_mib"], 1),
                _fmt(r["output_mib"], 1),
                ok,
            ]
        )
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    right = {2, 3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def report(result: dict[str, Any]) -> str:
    out = [table(result["results"]), "", "targets (ratios within this run):"]
    for t in result["targets"]:
        out.append(f"  {t['status']:<4}  {t['target']}: {t['detail']}")
    failures = [r for r in result["results"] if r["ok"] is False]
    if failures:
        out += ["", "failures:"]
        out += [f"  {r['case']} / {r['tool']}: {r['error']}" for r in failures]
    out += ["", "notes:"]
    out += [f"  - {n}" for n in result["notes"]]
    return "\n".join(out)


# -- main --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=float, default=1.0, help="tree size; 1.0 is ~3 GB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (median)")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"))
    ap.add_argument("--json", type=Path, help="results file (default WORKDIR/results.json)")
    ap.add_argument(
        "--only",
        help=f"comma-separated subset of: {', '.join(SELECTABLE)} (default all but "
        f"{', '.join(OPT_IN)})",
    )
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install peers")
    ap.add_argument(
        "--s3-part-size", type=int, default=16, metavar="MIB",
        help="s3-upload: part size in MiB, both sides (default 16, eventbak's default)",
    )  # fmt: skip
    ap.add_argument(
        "--s3-concurrency", type=int, default=4, metavar="N",
        help="s3-upload: parts in flight, both sides (default 4, eventbak's default)",
    )  # fmt: skip
    ap.add_argument(
        "--replay-files",
        type=int,
        help="files in the synthetic replay log (default 1,000,000 at scale >= 1, "
        "scaled down, at least 10,000)",
    )
    ap.add_argument(
        "--million-files",
        type=int,
        default=1_000_000,
        metavar="N",
        help="million: one-byte files in the tree, 1,000 per directory (default 1,000,000; "
        "fewer for a quick run: the memory targets then say n/a)",
    )
    a = ap.parse_args(argv)
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    if a.scale <= 0:
        ap.error("--scale must be positive")
    if not 5 <= a.s3_part_size <= 5120:
        ap.error("--s3-part-size must be 5 to 5120 (MiB; S3's limits)")
    if not 1 <= a.s3_concurrency <= 64:
        ap.error("--s3-concurrency must be 1 to 64")
    if a.million_files < 2:
        ap.error("--million-files must be at least 2")
    only = (
        [x.strip() for x in a.only.split(",") if x.strip()]
        if a.only
        else [x for x in SELECTABLE if x not in OPT_IN]
    )
    unknown = [x for x in only if x not in SELECTABLE]
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(SELECTABLE)})")
    a.only = only
    if a.replay_files is None:
        a.replay_files = max(10_000, round(1_000_000 * min(a.scale, 1.0)))
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    work = bench.work
    work.mkdir(parents=True, exist_ok=True)
    json_path: Path = args.json or work / "results.json"
    started = dt.datetime.now(dt.UTC)
    tools = [t for t in TOOLS if t in args.only]
    policy = [c for c in POLICY_CASES if c in args.only]
    heavy = [c for c in OPT_IN if c in args.only]
    skipped, install_notes = ensure_tools([*tools, *policy, *heavy], not args.no_install)
    # without restic the million case still runs eventbak's rows (a note, not a skip)
    million_restic_skipped = skipped.pop("million", "")
    snap = snapshot_eventbak(work)
    pythonpath = os.pathsep.join([snap["snapshot"], *filter(None, [os.environ.get("PYTHONPATH")])])
    bench.env["PYTHONPATH"] = os.environ["PYTHONPATH"] = pythonpath
    if (
        "encrypted" in policy
        and "encrypted" not in skipped
        and "--recipient" not in _backup_help(bench.eventbak_exe)
    ):
        skipped["encrypted"] = "this eventbak's backup has no --recipient (no encryption)"
    policy_run = [c for c in policy if c not in skipped]
    for case in policy:
        if case in skipped:
            print(f"== {case}: skipped ({skipped[case]})", flush=True)
    machine = machine_info(work, bench.eventbak_exe)
    rm(bench.logs)
    tree: dict[str, Any] | None = None
    if tools or policy_run:  # the s3-upload case and replay-1M need no tree
        bench.tree = t = prepare_tree(work, args.scale, args.seed)
        print(
            f"tree: {t.files} files, {t.bytes / MB:.1f} MB; small/: {t.small_files} files; "
            f"xz subset: {len(t.subset)} files, {t.subset_bytes / MB:.1f} MB",
            flush=True,
        )
        tree = {
            "path": str(t.root),
            "files": t.files,
            "bytes": t.bytes,
            "small_files": t.small_files,
            "small_bytes": t.small_bytes,
            "subset_files": len(t.subset),
            "subset_bytes": t.subset_bytes,
        }

    compared: list[Tool] = []
    for name in tools:
        if name in skipped:
            print(f"== {name}: skipped ({skipped[name]})", flush=True)
            continue
        out = work / "out" / name
        if name == "eventbak":
            compared.append(Eventbak(out, bench.env, bench.eventbak_exe))
        elif name == "tar-zstd":
            compared.append(TarPipe(name, out, bench.env, "zstd -q -3 -T0", "zstd -q -dc"))
        elif name == "tar-xz":
            lst = work / "xz-subset.txt"
            lst.write_text("".join(p + "\n" for p in bench.tree.subset))
            bench.xz_case(TarPipe(name, out, bench.env, "xz -6", "xz -dc", lst))
        elif name == "restic":
            compared.append(Restic(out, bench.env))
        else:
            compared.append(Borg(out, bench.env))
    if compared:
        bench.backup_tools(compared)
    policy_info = bench.policy_cases(policy_run) if policy_run else {}
    if "eventbak" in args.only or "replay-1M" in args.only:
        bench.replay_1m_case(args.replay_files)
    million: dict[str, Any] | None = None
    if "million" in args.only:
        million = bench.million_case(args.million_files, million_restic_skipped)
    rm(work / "out")
    rm(work / "restore")
    s3: dict[str, Any] | None = None
    if "s3" in args.only:  # last: its server runs during no other case
        s3 = bench.s3_case()
        if s3.get("skipped"):
            skipped["s3"] = s3["skipped"]
            print(f"== s3-upload: skipped ({s3['skipped']})", flush=True)

    rows = sorted(
        (r.as_dict() for r in bench.rows),
        key=lambda r: (CASE_ORDER.index(r["case"]), ROW_TOOLS.index(r["tool"])),
    )
    machine["loadavg_end"] = list(os.getloadavg())
    ran = {r["tool"] for r in rows} | {r["case"] for r in rows}
    notes = list(install_notes)
    snap["commit_at_end"] = _git("rev-parse", "--short", "HEAD")
    snap["changed_during_run"] = fingerprint(Path(snap["source"])) != snap["fingerprint"]
    where = f"commit {snap['commit']}" + (" + uncommitted edits" if snap["modified"] else "")
    notes.append(
        f"eventbak measured: a snapshot of {snap['source']} taken at the start ({where}, "
        f"source fingerprint {snap['fingerprint']})"
    )
    if snap["changed_during_run"]:
        now = f"HEAD now {snap['commit_at_end']}"
        if _git("status", "--porcelain", "--", snap["source"]):
            now += " + uncommitted edits"
        notes.append(
            f"eventbak's source changed during the run ({now}): "
            "the results are of the snapshot, not of the current checkout"
        )
    notes += [f"{name} skipped: {why}" for name, why in skipped.items()]
    if "eventbak" in ran and ran & {"full", "second", "small"}:
        notes.append(
            "full, second, small, restore: eventbak ran unencrypted (default settings, "
            "--compression auto); its encrypted run is the `encrypted` case"
            + ("" if "encrypted" in ran else " (not run: --only encrypted)")
        )
    for case in POLICY_CASES:
        if case in ran and case in policy_info:
            pi = policy_info[case]
            notes.append(
                f"{case}: {pi['input_files']} files, {pi['input_bytes'] / MB:.1f} MB of "
                f"{pi['input']}; eventbak: {pi['eventbak']}; reference: {pi['reference']} "
                f"(restored by {pi['reference_restore']}); {_POLICY_NOTES[case]}"
            )
    if "borg" in ran:
        notes.append(
            "restic always encrypts (it cannot be turned off); borg ran with "
            "--encryption=none and eventbak unencrypted"
        )
    elif "restic" in ran:
        notes.append("restic always encrypts (it cannot be turned off); eventbak ran unencrypted")
    if "second" in ran:
        notes.append(
            "second (an unchanged run right after the first): eventbak, restic and borg skip "
            "unchanged files (eventbak still writes the session's manifest); tar|zstd has no "
            "incremental mode (a full run again). output MiB of `second` is what that run added"
        )
    if "replay-1M" in ran:
        notes.append(
            f"replay-1M is SYNTHETIC: a format-exact log of {args.replay_files:,} file members "
            "written with eventbak's API (eventbak.core.log.EventLog), not by a real backup"
        )
    if million is not None:
        notes += _million_notes(million, args.runs)
    if "tar-xz" in ran:
        sub = bench.tree
        notes.append(
            f"text-subset: tar | xz -6 on {len(sub.subset)} text files of src/ "
            f"({sub.subset_bytes / MB:.1f} MB) only, as xz does ~2 MB/s"
        )
    if "s3-upload" in ran and s3 is not None:
        notes.append(
            f"s3-upload: {s3['archives']} staged archive(s) of {s3['archive_bytes'] / MIB:g} MiB "
            f"(random bytes, page cache warm) to a local SeaweedFS ({s3.get('seaweedfs', '?')}), "
            f"part size {s3['part_size'] // MIB} MiB, concurrency {s3['concurrency']} on both "
            f"sides; eventbak: uploader.Transfers with S3Vault; boto3 {s3['boto3']} "
            f"upload_file (s3transfer {s3['s3transfer']}) with the same botocore Config and "
            "ChecksumAlgorithm=SHA256 (both send a SHA-256 per part that SeaweedFS verifies); "
            "seconds as timed inside each process (first byte sent to last archive complete), "
            "the process's wall time is in the JSON (process_s); rounds alternate the order; "
            "every object checked by HeadObject (size, composite SHA-256), the first round's "
            "read back whole"
        )
        if s3.get("round_ratios"):
            each = ", ".join(f"{x:.2f}x" for x in s3["round_ratios"])
            cpu = s3.get("seaweedfs_cpu_s", {})
            notes.append(
                f"s3-upload: eventbak/boto3 speed per round {each} (median "
                f"{statistics.median(s3['round_ratios']):.2f}x); SeaweedFS used "
                + ", ".join(f"{t} {statistics.median(v):.1f} s" for t, v in cpu.items() if v)
                + " of CPU per run (median): on 2 cores the store is most of the work"
            )
    if ran & set(POLICY_CASES):
        notes.append(
            "encrypted, incompressible, compressible: rounds alternate the order (eventbak "
            "first in odd runs, the reference in even ones); stored bytes (the JSON's "
            "stored_bytes, ratio) are eventbak's vault, output MiB adds its state dir"
        )
    notes += [
        "peak RSS: summed over the process tree (a pipeline counts each process), sampled "
        "every 20 ms, max over runs; MB/s and files/s are of the input (1 MB = 10^6 bytes)",
        "page cache warmed (every input file read) and `sync` run before each timed run",
        f"median of {args.runs} run(s); load average at start "
        f"{machine['loadavg_start'][0]:.2f}, at end {machine['loadavg_end'][0]:.2f} "
        "(shared machine: expect noise)",
    ]
    result = {
        "version": 1,
        "command": shlex.join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "params": {
            "scale": args.scale,
            "seed": args.seed,
            "runs": args.runs,
            "replay_files": args.replay_files,
            "million_files": args.million_files,
            "only": args.only,
            "s3_part_size_mib": args.s3_part_size,
            "s3_concurrency": args.s3_concurrency,
            "workdir": str(work),
        },
        "machine": machine,
        "eventbak": snap,
        "tree": tree,
        "s3": s3,
        "million": million,
        "policy": policy_info,
        "cases": _selection(POLICY_CASES, policy, skipped),
        "tools": _selection(TOOLS, tools, skipped),
        "skipped": [{"tool": k, "reason": v} for k, v in skipped.items()],
        "results": rows,
        "targets": targets(rows, args.replay_files, million),
        "notes": notes,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(report(result))
    print(f"\nJSON: {json_path}")
    return 1 if any(r["ok"] is False for r in rows) else 0


def _million_notes(m: dict[str, Any], runs: int) -> list[str]:
    made = (
        f"generated in {m['generated_s']:.1f} s"
        if m["generated_s"] is not None
        else "reused from an earlier run"
    )
    notes = [
        f"million: {m['files']:,} one-byte files in {m['dirs']:,} directories of "
        f"{m['per_dir']:,} ({m['tree']}, {made}); each run: million-first into a fresh "
        "eventbak state dir and vault / a fresh restic repo (restic init untimed), "
        "million-second (unchanged) right after it, per tool, the order alternating between "
        f"runs; then eventbak's million-one-changed ({m['changed_file']} rewritten with 2 "
        "bytes, untimed, its byte put back after the backup), million-replay "
        "(`replay --verify`) and million-status (`status`, text) of that state dir "
        "(3 sessions); output MiB of -second and -one-changed is what that run added",
        "million: ok = what each backup says it stored (eventbak --json files and "
        "point_in_time.files; restic's `Files: N new, 0 changed, 0 unmodified` line) and, "
        f"untimed after the last run, the changed file's directory ({m['per_dir']:,} files) "
        "restored from every session / snapshot and compared file by file with the tree "
        "(not the whole million: minutes per tool)",
        "million: the page cache warmed once (every file read) before the first run; every "
        "later run follows backups that walked the whole tree; `sync` before each",
    ]
    if m["restic_skipped"]:
        notes.append(f"million: restic's rows skipped: {m['restic_skipped']}")
    for k, oc in enumerate(m["one_changed"]):
        notes.append(
            f"million-one-changed run {k + 1} of {runs}: stored {oc['files']} file(s), "
            f"{oc['bytes']} B (backup --json `bytes`), uploaded {oc['bytes_uploaded']:,} B "
            f"(`bytes_uploaded`: {oc['archives']} archive); the vault grew by "
            f"{oc['vault_growth']:,} B (that archive + the session's manifest) in "
            f"{oc['s']:.2f} s"
        )
    if m["files"] < 1_000_000:
        notes.append(
            f"million: only {m['files']:,} files (--million-files): the memory targets are "
            "for 1,000,000 (n/a)"
        )
    return notes


def _selection(
    names: Iterable[str], selected: Iterable[str], skipped: dict[str, str]
) -> dict[str, dict[str, Any]]:
    chosen = set(selected)
    return {
        name: {
            "selected": name in chosen,
            "available": (name not in skipped) if name in chosen else None,
            "skipped": skipped.get(name, ""),
        }
        for name in names
    }


def _backup_help(exe: list[str]) -> str:
    try:
        p = subprocess.run([*exe, "backup", "--help"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.decode(errors="replace").lower()


if __name__ == "__main__":
    sys.exit(main())
