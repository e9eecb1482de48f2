"""The command line, end to end: every command's happy path and the bad inputs
a user will try, both in-process (click's CliRunner) and as a real process
(`python -m eventbak`, once the console script). Vaults are `file://`
directories in tmp; the state dir comes from EVENTBAK_STATE_DIR.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventbak import __version__
from tests.clihelpers import (
    MODES,
    NOBODY,
    RAW_NAME,
    Cli,
    assert_error,
    assert_ok,
    base_env,
    console_script,
    files_below,
    hold_lock,
    make_tree,
    restored,
    sha256,
    snapshot,
    unprivileged_prefix,
)

EVENT_LINE = re.compile(r"^\s*(\d+) @(\d+)\s")


def regular_files(src: Path) -> tuple[int, int]:
    """(names of regular files, bytes of distinct inodes) under src."""
    names = 0
    inodes: dict[tuple[int, int], int] = {}
    for dirpath, _, filenames in os.walk(os.fsencode(src)):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                names += 1
                inodes[(st.st_dev, st.st_ino)] = st.st_size
    return names, sum(inodes.values())


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cli(mode: str, tmp_path: Path) -> Cli:
    """A CLI on a fresh state dir (tmp_path/state)."""
    return Cli(mode, base_env(tmp_path), tmp_path)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src")


def vault_url(path: Path) -> str:
    return f"file://{path}"


# -- one shared history: two backups of the same tree ---------------------------


@dataclass
class Backed:
    root: Path
    started: float
    src: Path
    state: Path
    vault: Path
    url: str
    env: dict[str, str | None]
    first: dict[str, Any]  # --json summaries
    second: dict[str, Any]
    snap1: dict[bytes, tuple[Any, ...]]  # the tree as each session saw it
    snap2: dict[bytes, tuple[Any, ...]]

    def cli(self, mode: str, cwd: Path) -> Cli:
        return Cli(mode, self.env, cwd)


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    """Session 1 (defaults), then a.txt changes, then session 2 with 64KiB
    archives (c.bin is split across several). Read-only tests share it."""
    root = tmp_path_factory.mktemp("cli-history")
    started = time.time()
    src = make_tree(root / "src")
    env = base_env(root)
    vault = root / "vault"
    run = Cli("subprocess", env, root)
    first = assert_ok(run("backup", src, "--vault", vault_url(vault), "--json")).json()
    snap1 = snapshot(src)
    (src / "a.txt").write_text("alpha, second version\n")
    second = assert_ok(
        run(
            "backup",
            src,
            "--vault",
            vault_url(vault),
            "--json",
            "--archive-size",
            "64KiB",
            "--compression",
            "zstd:5",
        )
    ).json()
    return Backed(
        root,
        started,
        src,
        root / "state",
        vault,
        vault_url(vault),
        env,
        first,
        second,
        snap1,
        snapshot(src),
    )


# -- basics: version, help, the option names of the contract ----------------------


def test_version(cli: Cli) -> None:
    run = assert_ok(cli("--version"))
    assert run.out.strip() == f"eventbak, version {__version__}"


CONTRACT = {
    None: [
        "--config",
        "--state-dir",
        "-v, --verbose",
        "--version",
        "--help",
        "backup",
        "restore",
        "inspect",
        "replay",
        "status",
    ],
    "backup": ["--vault", "--archive-size", "--compression", "--json"],
    "restore": ["--to", "--session", "--overwrite", "--vault", "--tier", "--thaw-days"],
    "inspect": ["--vault", "--json", "--from-vault", "--wait"],
    "replay": ["--json", "--verify", "--until"],
    "status": ["--json"],
}


@pytest.mark.parametrize("command", list(CONTRACT), ids=lambda c: c or "main")
def test_help_names_the_contract_options(cli: Cli, command: str | None) -> None:
    args = [command, "--help"] if command else ["--help"]
    run = assert_ok(cli(*args))
    assert run.out.startswith("Usage:")
    for name in CONTRACT[command]:
        assert name in run.out, f"{name} missing from {' '.join(args)}"
    assert run.err == ""


def test_console_script_round_trip(tmp_path: Path, src: Path) -> None:
    script = console_script()
    assert script.exists(), f"no console script at {script} (pip install -e .?)"
    cli = Cli("script", base_env(tmp_path), tmp_path)
    assert assert_ok(cli("--version")).out.strip() == f"eventbak, version {__version__}"
    summary = assert_ok(cli("backup", src, "--vault", vault_url(tmp_path / "v"), "--json")).json()
    assert summary["state"] == "completed"
    assert_ok(cli("restore", "--to", tmp_path / "out"))
    assert snapshot(restored(tmp_path / "out", src)) == snapshot(src)
    assert "verify: ok" in assert_ok(cli("replay", "--verify")).out


# -- backup -------------------------------------------------------------------------


def test_backup_json_summary(cli: Cli, tmp_path: Path, src: Path) -> None:
    vault = tmp_path / "vault"
    before = time.time()
    run = assert_ok(cli("backup", str(src), "--vault", vault_url(vault), "--json"))
    s = run.json()
    names, size = regular_files(src)
    assert s["state"] == "completed"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", s["session"]), s["session"]
    assert s["session"][:8] == time.strftime("%Y%m%d", time.gmtime(before))
    assert s["files"] == names == 10
    assert s["bytes"] == size
    assert s["archives"] == 1
    assert s["vault"] == vault_url(vault)
    assert s["skipped"] == [] and s["changed"] == [] and s["error"] == ""
    stored = list((vault / "archives" / s["session"]).iterdir())
    assert len(stored) == 1 and stored[0].stat().st_size == s["bytes_uploaded"]
    assert run.err == ""  # no progress noise when stderr is not a terminal


def test_backup_text_output_names_state_dir_and_vault(cli: Cli, tmp_path: Path, src: Path) -> None:
    url = vault_url(tmp_path / "vault")
    run = assert_ok(cli("backup", src, "--vault", url))
    lines = run.out.splitlines()
    assert f"state dir: {tmp_path / 'state'}" in lines
    assert any(line.startswith("vault:") and line.split()[-1] == url for line in lines)
    assert re.search(r"^session \S+ completed: 10 files", run.out, re.M), run
    assert run.err == ""


def test_backup_many_small_archives_and_no_compression(cli: Cli, tmp_path: Path, src: Path) -> None:
    url = vault_url(tmp_path / "vault")
    s = assert_ok(
        cli(
            "backup",
            src,
            "--vault",
            url,
            "--archive-size",
            "64KiB",
            "--compression",
            "none",
            "--json",
        )
    ).json()
    # c.bin (200 000 bytes) cannot fit in fewer than four 64KiB archives
    assert s["archives"] >= 4
    stored = sorted((tmp_path / "vault" / "archives" / s["session"]).iterdir())
    assert len(stored) == s["archives"]
    assert all(p.name.endswith(".tar") for p in stored)
    assert all(p.stat().st_size <= 64 * 1024 for p in stored)
    assert_ok(cli("restore", "--to", tmp_path / "out"))
    assert snapshot(restored(tmp_path / "out", src)) == snapshot(src)


def test_backup_skips_fifo_without_opening_it(tmp_path: Path, src: Path) -> None:
    """A FIFO is skipped by design (exit 0) and never opened: opening one for
    reading would block forever, so the child has a timeout."""
    os.mkfifo(src / "pipe")
    cli = Cli("subprocess", base_env(tmp_path), tmp_path)
    run = cli("backup", src, "--vault", vault_url(tmp_path / "v"), "--json", timeout=30)
    s = assert_ok(run).json()
    assert s["state"] == "completed"
    assert s["skipped"] == [{"path": str(src / "pipe"), "reason": "fifo"}]
    events = assert_ok(cli("replay", "--json")).json_lines()
    skipped = [e for e in events if e.get("t") == "EntrySkipped"]
    assert [(e["path"], e["special"]) for e in skipped] == [(str(src / "pipe"), True)]
    # a FIFO given as the source itself is skipped the same way
    run = cli("backup", src / "pipe", "--vault", vault_url(tmp_path / "v"), "--json", timeout=30)
    assert assert_ok(run).json()["skipped"] == [{"path": str(src / "pipe"), "reason": "fifo"}]


def test_backup_two_datasets_from_config(mode: str, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "f").write_text("first dataset\n")
    (two / "g").write_text("second dataset\n")
    state = tmp_path / "cfg-state"
    v1, v2 = vault_url(tmp_path / "v1"), vault_url(tmp_path / "v2")
    config = tmp_path / "eventbak.toml"
    config.write_text(
        f'state_dir = "{state}"\n'
        f'[vaults.main]\nurl = "{v1}"\narchive_size = "64KiB"\n'
        f'[vaults.other]\nurl = "{v2}"\n'
        f'[[datasets]]\nname = "one"\npaths = ["{one}"]\nvault = "main"\n'
        f'[[datasets]]\nname = "two"\npaths = ["{two}"]\nvault = "other"\n'
        'compression = "none"\n'
    )
    env: dict[str, str | None] = {**base_env(tmp_path), "EVENTBAK_STATE_DIR": None}
    if mode == "subprocess":  # the config through the environment
        env["EVENTBAK_CONFIG"] = str(config)
        pre: list[str | os.PathLike[str]] = []
    else:
        pre = ["--config", config]
    cli = Cli(mode, env, tmp_path)
    out = assert_ok(cli(*pre, "backup", "--json")).json()
    assert isinstance(out, list) and len(out) == 2
    assert [(s["dataset"], s["vault"], s["state"], s["files"]) for s in out] == [
        ("one", v1, "completed", 1),
        ("two", v2, "completed", 1),
    ]
    assert out[0]["session"] != out[1]["session"]
    assert (state / "events.log").exists()  # state_dir from the config
    assert not (tmp_path / "state").exists()
    # text mode: each session announces its vault (--full: store everything again)
    run = assert_ok(cli(*pre, "backup", "--full"))
    assert run.out.count(f"state dir: {state}") == 2
    assert re.search(rf"^vault:\s+{re.escape(v1)}$", run.out, re.M)
    assert re.search(rf"^vault:\s+{re.escape(v2)}$", run.out, re.M)
    # inspect: per vault, and filtered
    by_vault = assert_ok(cli(*pre, "inspect", "--json")).json()
    assert set(by_vault) == {v1, v2}
    only = assert_ok(cli(*pre, "inspect", "--vault", v2, "--json")).json()
    assert only == {v2: by_vault[v2]} and len(only[v2]) == 2  # two backups of "two"
    assert out[1]["session"] in {a["session"] for a in only[v2]}
    assert out[0]["session"] in {a["session"] for a in by_vault[v1]}
    status = assert_ok(cli(*pre, "status", "--json")).json()
    assert (status["dataset"], status["state"]) == ("two", "completed")
    # a PATH with no --vault while the config has two vaults: which one? refuse
    (tmp_path / "three").mkdir()
    run = cli(*pre, "backup", tmp_path / "three")
    assert run.code == 2 and "say which with --vault" in run.err, run.err


# -- restore --------------------------------------------------------------------------


def test_restore_everything_identical(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    to = tmp_path / "out"
    run = assert_ok(cli("restore", "--to", to))
    assert backed.second["session"] in run.out and str(to) in run.out
    got = snapshot(restored(to, backed.src))
    assert got == backed.snap2  # sha256, mode, link target, mtime of every entry
    assert (RAW_NAME in got) and got[b"c.bin"][2] == backed.snap2[b"c.bin"][2]
    base = restored(to, backed.src)
    assert os.stat(base / "hl").st_ino == os.stat(base / "d" / "e" / "deep.md").st_ino


def test_restore_a_path_selects_only_that_subtree(
    mode: str, backed: Backed, tmp_path: Path
) -> None:
    cli = backed.cli(mode, tmp_path)
    to = tmp_path / "out"
    assert_ok(cli("restore", backed.src / "d", "--to", to))
    assert files_below(restored(to, backed.src)) == {"d/dup.txt", "d/e/deep.md", "d/e/notes.txt"}


def test_restore_globs_select_only_matches(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    to = tmp_path / "out"
    assert_ok(cli("restore", f"{backed.src}/?.txt", f"{backed.src}/*.sh", "--to", to))
    base = restored(to, backed.src)
    assert files_below(base) == {"a.txt", "b.txt", "run.sh"}
    assert sha256(base / "run.sh") == backed.snap2[b"run.sh"][2]
    assert stat.S_IMODE(os.stat(base / "run.sh").st_mode) == 0o755


def test_restore_glob_star_stays_in_its_directory(backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli("runner", tmp_path)
    to = tmp_path / "out"
    assert_ok(cli("restore", f"{backed.src}/*.txt", "--to", to))
    assert files_below(restored(to, backed.src)) == {"a.txt", "b.txt"}


def test_restore_session_by_id(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    first = backed.first["session"]
    run = assert_ok(cli("restore", "--session", first, "--to", tmp_path / "old"))
    assert first in run.out
    assert snapshot(restored(tmp_path / "old", backed.src)) == backed.snap1
    # without --session: the latest, with the new a.txt
    assert_ok(cli("restore", backed.src / "a.txt", "--to", tmp_path / "new"))
    new = restored(tmp_path / "new", backed.src) / "a.txt"
    assert new.read_text() == "alpha, second version\n"


def test_restore_unknown_session(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    run = cli("restore", "--session", "19990101T000000Z-dead", "--to", tmp_path / "out")
    assert_error(run, 2, "19990101T000000Z-dead")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_restore_refuses_to_overwrite_then_overwrites(
    mode: str, backed: Backed, tmp_path: Path
) -> None:
    cli = backed.cli(mode, tmp_path)
    to = tmp_path / "out"
    sel = [backed.src / "a.txt", backed.src / "b.txt", backed.src / "d"]
    assert_ok(cli("restore", *sel, "--to", to))
    base = restored(to, backed.src)
    (base / "a.txt").write_text("local edit\n")
    (base / "b.txt").unlink()
    line = assert_error(cli("restore", *sel, "--to", to), None, "--overwrite", "exist")
    assert str(base) in line
    assert (base / "a.txt").read_text() == "local edit\n"  # nothing replaced
    assert not (base / "b.txt").exists()  # and nothing written either
    assert_ok(cli("restore", *sel, "--to", to, "--overwrite"))
    assert (base / "a.txt").read_text() == "alpha, second version\n"
    want = {
        k: v
        for k, v in backed.snap2.items()
        if k in (b"a.txt", b"b.txt") or k == b"d" or k.startswith(b"d/")
    }
    got = snapshot(base)
    assert {k: got[k] for k in want} == want


def test_restore_twice_with_overwrite(backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli("runner", tmp_path)
    to = tmp_path / "out"
    assert_ok(cli("restore", "--to", to))
    assert_ok(cli("restore", "--to", to, "--overwrite"))
    assert snapshot(restored(to, backed.src)) == backed.snap2


def test_restore_overwrite_replaces_symlink_not_its_target(backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli("runner", tmp_path)
    to = tmp_path / "out"
    victim = tmp_path / "victim"
    victim.write_text("must stay\n")
    base = restored(to, backed.src)
    base.mkdir(parents=True)
    (base / "a.txt").symlink_to(victim)
    assert_ok(cli("restore", backed.src / "a.txt", "--to", to, "--overwrite"))
    assert victim.read_text() == "must stay\n"
    assert not (base / "a.txt").is_symlink()
    assert (base / "a.txt").read_text() == "alpha, second version\n"


def test_restore_pattern_matching_nothing(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    pattern = f"{backed.src}/nothing-here-*"
    assert_error(cli("restore", pattern, "--to", tmp_path / "out"), None, pattern)


def test_restore_path_of_an_earlier_dataset(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "f").write_text(f"{d.name}\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[vaults.v]\nurl = "{vault_url(tmp_path / "v")}"\n'
        f'[[datasets]]\nname = "one"\npaths = ["{one}"]\n'
        f'[[datasets]]\nname = "two"\npaths = ["{two}"]\n'
    )
    cli = Cli("runner", base_env(tmp_path), tmp_path)
    assert_ok(cli("--config", config, "backup"))
    assert_ok(cli("restore", one / "f", "--to", tmp_path / "out"))
    assert (restored(tmp_path / "out", one) / "f").read_text() == "one\n"


def test_restore_without_log(cli: Cli, tmp_path: Path) -> None:
    assert_error(cli("restore", "--to", tmp_path / "out"), 2, str(tmp_path / "state"))
    assert not (tmp_path / "out").exists()


def test_restore_without_to_is_a_usage_error(cli: Cli) -> None:
    run = cli("restore")
    assert run.code == 2 and "Traceback" not in run.out + run.err
    assert "--to" in run.err.splitlines()[-1]


def test_restore_to_below_a_file(backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli("runner", tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_error(cli("restore", "--to", blocker / "out"), None, str(blocker / "out"))


# -- inspect / status / replay ----------------------------------------------------------


def test_inspect_json(mode: str, backed: Backed, tmp_path: Path) -> None:
    before = time.time()
    out = assert_ok(backed.cli(mode, tmp_path)("inspect", "--json")).json()
    assert list(out) == [backed.url]
    rows = out[backed.url]
    sessions = {backed.first["session"]: backed.first, backed.second["session"]: backed.second}
    assert len(rows) == sum(s["archives"] for s in sessions.values())
    for r in rows:
        assert {"id", "session", "size", "members", "sha256", "state", "time"} <= set(r)
        assert r["session"] in sessions and r["id"].startswith(r["session"])
        assert r["state"] == "uploaded"
        assert r["members"] > 0
        assert backed.started <= r["time"] <= before
        stored = backed.vault / r["key"]
        assert stored.stat().st_size == r["size"]
        assert sha256(stored) == r["sha256"]  # the log's checksum is the vault's
    (one,) = [r for r in rows if r["session"] == backed.first["session"]]
    assert one["members"] == len(backed.snap1)  # every entry, the root dir included
    assert (
        sum(r["size"] for r in rows if r["session"] == backed.second["session"])
        == (backed.second["bytes_uploaded"])
    )


def test_inspect_text(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    run = assert_ok(cli("inspect"))
    rows = assert_ok(cli("inspect", "--json")).json()[backed.url]
    assert run.out.splitlines()[0].startswith(f"vault {backed.url}: {len(rows)} archives")
    for r in rows:
        (line,) = [ln for ln in run.out.splitlines() if r["id"] in ln]
        assert "uploaded" in line and f"sha256:{r['sha256'][:16]}" in line
    other = vault_url(tmp_path / "elsewhere")
    assert assert_ok(cli("inspect", "--vault", other)).out.strip() == f"no archives in {other}"
    assert assert_ok(cli("inspect", "--vault", other, "--json")).json() == {}


def test_status(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    s = assert_ok(cli("status", "--json")).json()
    second = backed.second
    assert s["session"] == second["session"] and s["state"] == "completed"
    assert (s["files"], s["bytes"], s["archives_uploaded"], s["vault"]) == (
        second["files"],
        second["bytes"],
        second["archives"],
        backed.url,
    )
    assert s["skipped"] == 0 and s["error"] == ""
    text = assert_ok(cli("-v", "status")).out
    assert text.splitlines()[0] == f"session {second['session']} (cli): completed"
    assert backed.url in text and f"{second['files']} files" in text


def test_replay_text(mode: str, backed: Backed, tmp_path: Path) -> None:
    run = assert_ok(backed.cli(mode, tmp_path)("replay"))
    seqs = [int(m.group(1)) for ln in run.out.splitlines() if (m := EVENT_LINE.match(ln))]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 10
    assert f"-- {len(seqs)} events" in run.out
    for s in (backed.first, backed.second):
        assert f"session {s['session']}: completed" in run.out


def test_replay_json_lines(mode: str, backed: Backed, tmp_path: Path) -> None:
    lines = assert_ok(backed.cli(mode, tmp_path)("replay", "--json")).json_lines()
    *events, last = lines
    assert "state" in last and last["state"]["events"] == len(events)
    assert last["state"]["sessions"] == {
        backed.first["session"]: "completed",
        backed.second["session"]: "completed",
    }
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    offsets = [e["offset"] for e in events]
    assert offsets == sorted(offsets) and offsets[0] == 8  # after the log header
    assert events[0]["t"] == "SessionOpened" and events[-1]["t"] == "SessionCompleted"
    assert events[0]["paths"] == [str(backed.src)]


def test_replay_verify_and_until(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli = backed.cli(mode, tmp_path)
    total = len(assert_ok(cli("replay", "--json")).json_lines()) - 1
    run = assert_ok(cli("replay", "--verify"))
    assert run.out.splitlines()[-1] == f"verify: ok ({total} events)"
    run = assert_ok(cli("replay", "--until", "3"))
    assert [m.group(1) for ln in run.out.splitlines() if (m := EVENT_LINE.match(ln))] == [
        "1",
        "2",
        "3",
    ]
    lines = assert_ok(cli("replay", "--until", "3", "--json")).json_lines()
    assert [e.get("seq") for e in lines[:-1]] == [1, 2, 3] and lines[-1]["state"]["events"] == 3


def test_read_commands_without_log(cli: Cli, tmp_path: Path) -> None:
    for command in ("inspect", "status", "replay"):
        assert_error(cli(command), 2, str(tmp_path / "state"))
    assert not (tmp_path / "state").exists()  # reading never creates state


# -- damaged logs ---------------------------------------------------------------------------


def copy_state(backed: Backed, tmp_path: Path) -> tuple[Cli, Path, list[int]]:
    state = tmp_path / "state"
    shutil.copytree(backed.state, state)
    env = {**backed.env, "EVENTBAK_STATE_DIR": str(state)}
    offsets = [
        e["offset"]
        for e in Cli("runner", env, tmp_path)("replay", "--json").json_lines()
        if "offset" in e
    ]
    return Cli("runner", env, tmp_path), state / "events.log", offsets


def test_replay_verify_names_offset_of_flipped_byte(
    mode: str, backed: Backed, tmp_path: Path
) -> None:
    cli, log, offsets = copy_state(backed, tmp_path)
    cli.mode = mode
    data = bytearray(log.read_bytes())
    pos = len(data) // 2
    data[pos] ^= 0xFF
    log.write_bytes(data)
    bad = max(o for o in offsets if o <= pos)  # the record holding that byte
    run = cli("replay", "--verify")
    assert run.code != 0 and "Traceback" not in run.out + run.err, run
    assert f"verify: FAILED at offset {bad}" in run.out
    assert_error(run, run.code, f"offset {bad}", str(log))
    # (status reads only what follows the fold's checkpoint: the audit is replay's)
    # a backup must refuse to append to a log damaged in the middle, also
    # before its checkpoint
    assert_error(cli("backup", backed.src, "--vault", backed.url), 1, f"offset {bad}")
    assert log.read_bytes() == data


def test_torn_tail_is_reported_then_cut(mode: str, backed: Backed, tmp_path: Path) -> None:
    cli, log, _ = copy_state(backed, tmp_path)
    cli.mode = mode
    size = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00half a rec")  # a crash mid-append
    run = cli("replay", "--verify")
    assert run.code == 1 and f"verify: FAILED at offset {size}" in run.out, run
    run = assert_ok(cli("replay"))
    assert f"offset {size}" in run.err and "torn" in run.err
    run = assert_ok(cli("backup", backed.src, "--vault", backed.url))
    assert f"cut a torn record at offset {size}" in run.err
    assert "verify: ok" in assert_ok(cli("replay", "--verify")).out
    events = assert_ok(cli("replay", "--json")).json_lines()
    assert any(e.get("t") == "LogTailTruncated" and e["offset"] == size for e in events)


def test_replay_json_verify_is_all_json(backed: Backed, tmp_path: Path) -> None:
    lines = assert_ok(backed.cli("runner", tmp_path)("replay", "--json", "--verify")).json_lines()
    assert "state" in lines[-1] or "verify" in lines[-1]


# -- bad input ---------------------------------------------------------------------------------


BAD_BACKUP_OPTIONS = [
    (["--archive-size", "12 parsecs"], ["--archive-size", "12 parsecs"]),
    (["--archive-size", "1KiB"], ["--archive-size", "1KiB", "64KiB"]),
    (["--compression", "lz4"], ["--compression", "lz4"]),
    (["--compression", "zstd:99"], ["--compression", "zstd:99"]),
]


@pytest.mark.parametrize(
    ("extra", "needles"),
    BAD_BACKUP_OPTIONS,
    ids=lambda v: "=".join(v) if isinstance(v[0], str) else "",
)
def test_backup_bad_option(
    cli: Cli, tmp_path: Path, src: Path, extra: list[str], needles: list[str]
) -> None:
    run = cli("backup", src, "--vault", vault_url(tmp_path / "vault"), *extra)
    assert_error(run, 2, *needles)
    assert not (tmp_path / "state").exists() and not (tmp_path / "vault").exists()


def test_backup_missing_source(cli: Cli, tmp_path: Path, src: Path) -> None:
    missing = tmp_path / "no such dir"
    run = cli("backup", src, missing, "--vault", vault_url(tmp_path / "vault"))
    assert_error(run, 2, str(missing))
    assert not (tmp_path / "state").exists() and not (tmp_path / "vault").exists()


def test_backup_nothing_to_do(cli: Cli) -> None:
    assert_error(cli("backup"), 2, "PATH")


BAD_URLS = ["ftp://example.com/backups", "file://relative/dir", "/plain/path", "s3x://bucket"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_backup_bad_vault_url(cli: Cli, src: Path, url: str) -> None:
    assert_error(cli("backup", src, "--vault", url), 2, url)


def test_backup_bad_vault_url_leaves_no_state(tmp_path: Path, src: Path) -> None:
    cli = Cli("runner", base_env(tmp_path), tmp_path)
    run = cli("backup", src, "--vault", "ftp://example.com/x")
    assert_error(run, 2, "ftp://example.com/x")
    assert run.out == ""
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("where", ["below-a-file", "proc"])
def test_backup_unwritable_vault(cli: Cli, tmp_path: Path, src: Path, where: str) -> None:
    if where == "below-a-file":
        (tmp_path / "plain").write_text("not a directory\n")
        vault = tmp_path / "plain" / "vault"
    else:
        vault = Path("/proc/eventbak-test-vault")
    run = cli("backup", src, "--vault", vault_url(vault), "--json")
    assert_error(run, 1, str(vault))
    # no session was opened for a vault that cannot take an archive
    replay = assert_ok(cli("replay", "--json")).json_lines()
    assert replay[-1]["state"]["sessions"] == {}


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[vaults\n", ["invalid TOML", "line 1"]),
        ('[[datasets]]\nname = "x"\npaths = ["/"]\ncolour = "red"\n', ["datasets[0].colour"]),
        ("bogus = 1\n", ["bogus"]),
        (
            '[vaults.v]\nurl = "file:///tmp/v"\narchive_size = "huge"\n',
            ["vaults.v.archive_size", "huge"],
        ),
        (
            '[[datasets]]\nname = "x"\npaths = ["/"]\nvault = "nowhere"\n',
            ["datasets[0].vault", "nowhere"],
        ),
        (b"\xff\xfe not text", ["UTF-8"]),
    ],
    ids=[
        "invalid-toml",
        "unknown-nested-key",
        "unknown-top-key",
        "bad-size",
        "no-such-vault",
        "not-utf8",
    ],
)
def test_bad_config(cli: Cli, tmp_path: Path, text: str | bytes, needles: list[str]) -> None:
    config = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    for command in ("backup", "status"):
        assert_error(cli("--config", config, command), 2, str(config), *needles)
    env = {"EVENTBAK_CONFIG": str(config)}
    assert_error(cli("inspect", env=env), 2, str(config), *needles)


def test_bad_config_unknown_top_level_key_wording(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("bogus = 1\n")
    cli = Cli("runner", base_env(tmp_path), tmp_path)
    assert_error(cli("--config", config, "status"), 2, f"{config}: unknown key bogus")


def test_missing_config_and_missing_dataset_path(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_error(cli("--config", missing, "backup"), 2, str(missing))
    config = tmp_path / "c.toml"
    gone = tmp_path / "gone"
    config.write_text(f'[[datasets]]\nname = "docs"\npaths = ["{gone}"]\n')
    assert_error(cli("--config", config, "backup"), 2, "docs", str(gone))


def test_click_usage_errors_are_not_tracebacks(cli: Cli) -> None:
    for args, culprit in (
        (["replay", "--until", "-1"], "--until"),
        (["backup", "--frobnicate"], "--frobnicate"),
        (["restor"], "restor"),
    ):
        run = cli(*args)
        assert run.code == 2 and "Traceback" not in run.out + run.err, run
        assert culprit in run.err.splitlines()[-1]


# -- partial sessions: a file root cannot read -----------------------------------------------


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="eventbak-cli-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


def test_unreadable_file_gives_exit_3(world_tmp: Path) -> None:
    """As root nothing is unreadable, so the backup runs as nobody: a file it
    cannot open and a directory it cannot list are skipped; the session still
    completes with everything else, exit 3, and the log says what was skipped."""
    prefix = unprivileged_prefix()
    if prefix is None:
        pytest.skip("no way to run as an unprivileged user")
    src = make_tree(world_tmp / "src")
    for p in (world_tmp, src, src / "d", src / "d" / "e"):
        os.chmod(p, 0o755)
    secret = src / "secret.txt"
    secret.write_text("top secret\n")
    secret.chmod(0o000)
    closed = src / "closed"
    closed.mkdir()
    (closed / "inside").write_text("x")
    closed.chmod(0o000)
    work = world_tmp / "work"
    work.mkdir()
    if os.geteuid() == 0:
        os.chown(work, NOBODY, NOBODY)
    if subprocess.run([*prefix, "test", "-r", str(secret)], check=False).returncode == 0:
        pytest.skip("the unprivileged user can still read a mode 000 file")
    env = base_env(work)
    url = vault_url(work / "vault")
    cli = Cli("subprocess", env, work)
    run = cli("backup", src, "--vault", url, "--json", prefix=prefix)
    assert run.code == 3, run
    assert "Traceback" not in run.out + run.err
    s = run.json()
    assert s["state"] == "completed"
    reasons = {d["path"]: d["reason"] for d in s["skipped"]}
    # b.txt (0600) and c.bin (0640) are closed to "other" too
    unreadable = {str(p) for p in (secret, closed, src / "b.txt", src / "c.bin")}
    assert set(reasons) == unreadable
    assert all(r.startswith("unreadable") for r in reasons.values()), reasons
    # text mode lists the skipped file, same exit code
    run = cli("backup", src, "--vault", url, prefix=prefix)
    assert run.code == 3, run
    assert f"skipped {secret}: unreadable" in run.out
    # the audit trail has it, as a real (not by-design) skip
    events = assert_ok(cli("replay", "--json")).json_lines()
    skips = {(e["path"], e["special"]) for e in events if e.get("t") == "EntrySkipped"}
    assert skips == {(p, False) for p in unreadable}
    assert assert_ok(cli("status", "--json")).json()["skipped"] == len(unreadable)
    # and what could be read comes back
    assert_ok(cli("restore", src / "a.txt", "--to", work / "out"))
    assert (restored(work / "out", src) / "a.txt").read_text() == "alpha\n"


# -- one state dir, one writer ------------------------------------------------------------------


def test_second_backup_is_refused_while_locked(cli: Cli, tmp_path: Path, src: Path) -> None:
    url = vault_url(tmp_path / "vault")
    assert_ok(cli("backup", src, "--vault", url))
    with hold_lock(tmp_path / "state") as holder:
        run = cli("backup", src, "--vault", url)
        assert_error(run, 1, f"pid {holder.pid}", str(tmp_path / "state"))
        # readers do not need the lock
        assert assert_ok(cli("status", "--json")).json()["state"] == "completed"
    sessions = assert_ok(cli("replay", "--json")).json_lines()[-1]["state"]["sessions"]
    assert len(sessions) == 1  # the refused backup left no trace
    assert_ok(cli("backup", src, "--vault", url))  # and once released, it works
