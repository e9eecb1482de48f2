"""Encryption with age, end to end through the real CLI (child processes):
round trips per compression mode with the per-file decisions in the catalog,
keys (generate, config, flags), and every bad key a user can give."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from eventbak.archive.age import generate as age_generate
from eventbak.statedir import members, read_state
from tests.treeutil import describe

KiB = 1024
TEXT = b"the quick brown fox jumps over the lazy dog, a line of plain text\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("EVENTBAK_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "eventbak", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def _tree(src: Path) -> None:
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "notes.txt").write_bytes(TEXT * 2000)
    (src / "docs" / "text-named.jpg").write_bytes(TEXT * 300)
    (src / "photo.dat").write_bytes(JPEG + os.urandom(200 * KiB))
    (src / "noise.bin").write_bytes(os.urandom(150 * KiB))
    (src / "f-tiny-noise.bin").write_bytes(os.urandom(20 * KiB))  # too small for a stored frame
    (src / "big.bin").write_bytes(os.urandom(400 * KiB))  # split across archives
    (src / "empty").write_bytes(b"")
    os.symlink("docs/notes.txt", src / "link")
    os.link(src / "noise.bin", src / "noise-link.bin")  # walked first: holds the data


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("key")
    r = run("key", "generate", "--output", d / "id.txt")
    assert r.returncode == 0, r.stderr
    return d / "id.txt", r.stdout.strip()


def _backup(tmp: Path, src: Path, *extra: object) -> subprocess.CompletedProcess[str]:
    vault = f"file://{tmp / 'vault'}"
    return run(
        "--state-dir", tmp / "state", "backup", "--vault", vault, "--archive-size", "128KiB",
        *extra, src,
    )  # fmt: skip


def _objects(tmp: Path) -> list[Path]:
    """The archives in the vault (not its catalog or keys)."""
    return sorted(p for p in (tmp / "vault" / "archives").rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["auto", "none", "zstd:1"])
def test_encrypted_round_trip_for_each_compression_mode(
    tmp_path: Path, key: tuple[Path, str], compression: str
) -> None:
    identity, recipient = key
    src = tmp_path / "src"
    _tree(src)
    r = _backup(tmp_path, src, "--compression", compression, "--recipient", recipient)
    assert r.returncode == 0, r.stderr
    suffix = ".tar.age" if compression == "none" else ".tar.zst.age"
    objects = _objects(tmp_path)
    assert len(objects) >= 4 and all(p.name.endswith(suffix) for p in objects)
    for p in objects:  # encrypted: no plaintext of the text file reaches the vault
        assert TEXT[:40] not in p.read_bytes()
        assert p.read_bytes().startswith(b"age-encryption.org/v1\n")

    # the catalog records each file's compression decision
    state, _ = read_state(tmp_path / "state")
    decided: dict[str, bool] = {}
    for a in state.archives.values():
        assert a.layers == (["age"] if compression == "none" else ["zstd", "age"])
        for m in members(tmp_path / "state", a):
            if m.kind == "file" and m.offset == 0:
                decided[os.fsdecode(m.path).removeprefix(str(src) + "/")] = m.zstd
    expected = {
        "auto": {"docs/notes.txt": True, "docs/text-named.jpg": True, "photo.dat": False,
                 "noise-link.bin": False, "big.bin": False, "empty": True,
                 "f-tiny-noise.bin": True},
        "none": dict.fromkeys(decided, False),
        "zstd:1": dict.fromkeys(decided, True),
    }[compression]  # fmt: skip
    assert decided == expected
    shown = run("--state-dir", tmp_path / "state", "inspect", "--members")
    assert shown.returncode == 0, shown.stderr
    for name, compressed in expected.items():  # inspect shows each decision
        rows = [x.split() for x in shown.stdout.splitlines() if x.startswith("      file ")]
        row = next(r for r in rows if r[4].endswith(f"/src/{name}"))
        assert row[1] == ("zstd" if compressed else "stored"), row

    to = tmp_path / "back"
    r = run("--state-dir", tmp_path / "state", "restore", "--to", to, "--identity", identity)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # the identity file is 0600: no warning
    assert describe(to / str(src).lstrip("/")) == describe(src)


@pytest.fixture(scope="module")
def encrypted(
    tmp_path_factory: pytest.TempPathFactory, key: tuple[Path, str]
) -> tuple[Path, Path, str]:
    """A state dir and vault of one encrypted backup (several archives)."""
    tmp = tmp_path_factory.mktemp("enc")
    src = tmp / "src"
    _tree(src)
    r = _backup(tmp, src, "-r", key[1])
    assert r.returncode == 0, r.stderr
    return tmp, src, r.stdout


def _nothing_restored(to: Path) -> bool:
    return not to.exists() or not any(to.rglob("*"))


def test_restore_without_an_identity_fails_before_anything_is_read(
    encrypted: tuple[Path, Path, str], tmp_path: Path
) -> None:
    tmp, _, _ = encrypted
    to = tmp_path / "back"
    r = run("--state-dir", tmp / "state", "restore", "--to", to)
    assert r.returncode == 6
    assert r.stderr.count("\n") == 1 and "encrypted" in r.stderr and "--identity" in r.stderr
    assert _nothing_restored(to)


def test_wrong_identity_is_refused_naming_the_file_and_nothing_is_written(
    encrypted: tuple[Path, Path, str], tmp_path: Path
) -> None:
    tmp, _, _ = encrypted
    other = tmp_path / "other.txt"
    assert run("key", "generate", "-o", other).returncode == 0
    to = tmp_path / "back"
    r = run("--state-dir", tmp / "state", "restore", "--to", to, "-i", other)
    assert r.returncode == 6
    assert r.stderr.count("\n") == 1
    assert str(other) in r.stderr and "matches none of the recipients" in r.stderr
    assert _nothing_restored(to)


@pytest.mark.parametrize("problem", ["missing", "not-a-key", "empty", "directory"])
def test_unusable_identity_file_is_one_line(
    encrypted: tuple[Path, Path, str], tmp_path: Path, problem: str
) -> None:
    tmp, _, _ = encrypted
    ident = tmp_path / "id.txt"
    if problem == "not-a-key":
        ident.write_text("# a comment\nAGE-SECRET-KEY-1NOTAKEY\n")
    elif problem == "empty":
        ident.write_text("# only comments\n\n")
    elif problem == "directory":
        ident.mkdir()
    to = tmp_path / "back"
    r = run("--state-dir", tmp / "state", "restore", "--to", to, "-i", ident)
    assert r.returncode == (2 if problem == "directory" else 6), r.stderr
    assert "Traceback" not in r.stderr
    # one line; click's own usage message for a directory (usage, hint, the error)
    assert len([line for line in r.stderr.splitlines() if "rror" in line]) == 1
    assert str(ident.name) in r.stderr
    assert "NOTAKEY" not in r.stderr  # what the file holds is not echoed
    assert _nothing_restored(to)


def test_identity_readable_by_others_warns_naming_it(
    encrypted: tuple[Path, Path, str], key: tuple[Path, str], tmp_path: Path
) -> None:
    tmp, src, _ = encrypted
    loose = tmp_path / "loose.txt"
    loose.write_bytes(key[0].read_bytes())
    loose.chmod(0o644)
    to = tmp_path / "back"
    r = run("--state-dir", tmp / "state", "restore", "--to", to, "-i", loose)
    assert r.returncode == 0, r.stderr
    assert f"warning: identity file {loose} is readable by others (mode 0644)" in r.stderr
    assert describe(to / str(src).lstrip("/")) == describe(src)


def test_a_flipped_byte_fails_that_archive_only(tmp_path: Path, key: tuple[Path, str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}.txt").write_bytes(b"%d " % i * 20_000)
    r = _backup(tmp_path, src, "-r", key[1], "--compression", "none")
    assert r.returncode == 0, r.stderr
    state, _ = read_state(tmp_path / "state")
    archives = sorted(state.archives.values(), key=lambda a: a.id)
    assert len(archives) >= 3
    bad = archives[1]
    lost = {os.fsdecode(m.path) for m in members(tmp_path / "state", bad) if m.kind == "file"}
    stored = tmp_path / "vault" / bad.key
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))
    to = tmp_path / "back"
    r = run("--state-dir", tmp_path / "state", "restore", "--to", to, "-i", key[0])
    assert r.returncode == 1
    assert f"archive {bad.id} in" in r.stderr and "is damaged" in r.stderr
    assert "1 archive could not be restored" in r.stderr
    assert lost
    for p in src.iterdir():
        got = to / str(p).lstrip("/")
        if str(p) in lost:
            assert not got.exists()
        else:
            assert got.read_bytes() == p.read_bytes()
    leftovers = [p for p in to.rglob("*") if ".eventbak-" in p.name]
    assert leftovers == []


@pytest.mark.parametrize(
    "recipient", ["age1notakey", "AGE-SECRET-KEY-1QQQQ", "ssh-ed25519 AAAA", ""]
)
def test_unparseable_recipient_is_refused_before_anything_starts(
    tmp_path: Path, recipient: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    r = _backup(tmp_path, src, "--recipient", recipient)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--recipient" in r.stderr
    assert "is not an age recipient" in r.stderr
    assert not (tmp_path / "vault").exists()
    assert not (tmp_path / "state" / "events.log").exists()


def test_config_keys_back_up_and_restore_without_flags(
    tmp_path: Path, key: tuple[Path, str]
) -> None:
    src = tmp_path / "src"
    _tree(src)
    cfg = tmp_path / "eventbak.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f"[encryption]\n"
        f'recipients = ["{key[1]}"]\n'
        f'identity_file = "{key[0]}"\n'
        f"[vaults.local]\n"
        f'url = "file://{tmp_path / "vault"}"\n'
        f"[[datasets]]\n"
        f'name = "home"\n'
        f'paths = ["{src}"]\n'
        f'never_compress = ["*.txt"]\n'
        f'always_compress = ["noise*.bin"]\n'
    )
    r = run("--config", cfg, "backup")
    assert r.returncode == 0, r.stderr
    assert all(p.name.endswith(".tar.zst.age") for p in _objects(tmp_path))
    state, _ = read_state(tmp_path / "state")
    decided = {
        os.path.basename(os.fsdecode(m.path)): m.zstd
        for a in state.archives.values()
        for m in members(tmp_path / "state", a)
        if m.kind == "file" and m.offset == 0
    }
    assert decided["notes.txt"] is False  # never_compress
    assert decided["noise-link.bin"] is True  # always_compress beats the probe
    r = run("--config", cfg, "restore", "--to", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    assert describe(tmp_path / "back" / str(src).lstrip("/")) == describe(src)


def test_bad_recipient_in_the_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "eventbak.toml"
    cfg.write_text('[encryption]\nrecipients = ["age1oops"]\n')
    r = run("--config", cfg, "backup", tmp_path)
    assert r.returncode == 2
    assert "encryption.recipients[0]" in r.stderr and r.stderr.count("\n") == 1


def test_key_generate_writes_a_private_file_and_prints_its_recipient(tmp_path: Path) -> None:
    out = tmp_path / "id.txt"
    old = os.umask(0o022)
    try:
        r = run("key", "generate", "--output", out)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    recipient = r.stdout.strip()
    assert recipient.startswith("age1") and r.stdout.count("\n") == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert f"# public key: {recipient}\n" in text and "AGE-SECRET-KEY-1" in text
    assert "AGE-SECRET-KEY" not in r.stdout + r.stderr
    # age itself reads the file and agrees on the recipient
    again = run("key", "generate", "--output", out)
    assert again.returncode == 2 and "exists" in again.stderr
    assert out.read_text() == text  # not overwritten
    to_stdout = run("key", "generate")
    assert to_stdout.returncode == 0
    assert to_stdout.stdout.count("AGE-SECRET-KEY-1") == 1
    assert to_stdout.stderr.startswith("Public key: age1")


def test_secrets_never_reach_the_log_or_the_output(
    encrypted: tuple[Path, Path, str], key: tuple[Path, str], tmp_path: Path
) -> None:
    tmp, _, backup_out = encrypted
    secret = next(line for line in key[0].read_text().splitlines() if line.startswith("AGE-SECRET"))
    r = run("--state-dir", tmp / "state", "restore", "--to", tmp_path / "b", "-i", key[0])
    replay = run("--state-dir", tmp / "state", "replay", "--verify")
    inspect = run("--state-dir", tmp / "state", "inspect", "--json")
    for text in (backup_out, r.stdout, r.stderr, replay.stdout, inspect.stdout):
        assert secret not in text
    log = (tmp / "state" / "events.log").read_bytes()
    assert secret.encode() not in log
    assert key[1].encode() in log  # the recipient (public) is recorded: resume keeps it


# -- the passphrase key ----------------------------------------------------------


def _passphrase_config(tmp: Path, src: Path, command: str, name: str = "eventbak") -> Path:
    cfg = tmp / f"{name}.toml"
    cfg.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        f"[encryption]\n"
        f"passphrase_command = {command!r}\n"
        f"[vaults.local]\n"
        f'url = "file://{tmp / "vault"}"\n'
        f"[[datasets]]\n"
        f'name = "home"\n'
        f'paths = ["{src}"]\n'
    )
    return cfg


@pytest.mark.slow
def test_passphrase_key_backs_up_and_restores_also_from_the_vault_alone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    cfg = _passphrase_config(tmp_path, src, "printf 'correct horse\\n'")
    r = run("--config", cfg, "backup")
    assert r.returncode == 0, r.stderr
    assert "correct horse" not in r.stdout + r.stderr
    archives = _objects(tmp_path)
    assert archives and all(p.name.endswith(".tar.zst.age") for p in archives)
    state, _ = read_state(tmp_path / "state")
    (recipient,) = {r for s in state.sessions.values() for r in s.recipients}
    in_vault = tmp_path / "vault" / "keys" / f"{recipient}.age"
    local = tmp_path / "state" / "keys" / f"{recipient}.age"
    assert in_vault.read_bytes() == local.read_bytes()
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    # the key object is age's scrypt mode around an identity file: age -d opens it
    opened = pyrage.passphrase.decrypt(in_vault.read_bytes(), "correct horse").decode()
    assert f"# public key: {recipient}" in opened
    assert b"correct horse" not in (tmp_path / "state" / "events.log").read_bytes()

    # a second backup needs no passphrase (only the public key)
    cfg_nopass = _passphrase_config(tmp_path, src, "exit 9", "nopass")
    r = run("--config", cfg_nopass, "backup")
    assert r.returncode == 0, r.stderr

    shutil.rmtree(tmp_path / "state" / "keys")  # the state dir lost its copy
    r = run("--config", cfg, "restore", "--to", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    assert describe(tmp_path / "back" / str(src).lstrip("/")) == describe(src)


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("printf 'wrong\\n'", "the passphrase does not open the key keys/"),
        ("echo oops >&2; exit 3", "passphrase_command failed (exit 3): oops"),
        ("true", "passphrase_command printed no passphrase"),
    ],
)
def test_bad_passphrase_is_one_line_and_nothing_is_written(
    tmp_path: Path, command: str, says: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(TEXT * 100)
    good = _passphrase_config(tmp_path, src, "printf 'right one\\n'")
    assert run("--config", good, "backup").returncode == 0
    bad = _passphrase_config(tmp_path, src, command, "bad")
    to = tmp_path / "back"
    r = run("--config", bad, "restore", "--to", to)
    assert r.returncode == 6
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert "right one" not in r.stderr
    assert _nothing_restored(to)


def test_failing_passphrase_command_stops_the_first_backup_before_anything(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(TEXT)
    cfg = _passphrase_config(tmp_path, src, "exit 4")
    r = run("--config", cfg, "backup")
    assert r.returncode == 6 and "passphrase_command failed (exit 4)" in r.stderr
    assert not (tmp_path / "vault").exists()
    assert not (tmp_path / "state" / "keys").exists()


@pytest.mark.parametrize("problem", ["missing", "bad line", "only comments"])
def test_unusable_recipients_file_is_one_line_naming_it(tmp_path: Path, problem: str) -> None:
    listed = tmp_path / "recipients.txt"
    if problem == "bad line":
        _, good = age_generate()
        listed.write_text(f"# team keys\n{good}\nage1typo\n")
    elif problem == "only comments":
        listed.write_text("# nobody yet\n")
    cfg = tmp_path / "eventbak.toml"
    cfg.write_text(f'[encryption]\nrecipients_file = "{listed}"\n')
    src = tmp_path / "src"
    src.mkdir()
    r = run("--config", cfg, "--state-dir", tmp_path / "state", "backup", src,
            "--vault", f"file://{tmp_path / 'vault'}")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and str(listed) in r.stderr
    if problem == "bad line":
        assert "line 3" in r.stderr and "age1typo" in r.stderr
    assert not (tmp_path / "vault").exists()
