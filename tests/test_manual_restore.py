"""The manual restore of docs/restore-without-eventbak.md, for real: eventbak
backs a mixed tree up (as a subprocess, with small archives so that a file is
split), then the doc's own shell blocks (`<!-- tested: NAME -->` before a
```sh fence) run under bash with Debian's age, zstd and GNU tar, and the
restored tree must equal the source: bytes, modes, symlink targets, hard
links, whole-second mtimes of files.

Each block runs as written; only its leading assignments (`VAULT=...`) get
the test's values, and the Glacier poll sleeps less.
"""

from __future__ import annotations

import ast
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.treeutil import describe

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "restore-without-eventbak.md"
KiB = 1024
TIMEOUT = 120

#: format -> (--compression, encrypted)
FORMATS = {
    ".tar.zst.age": ("auto", True),
    ".tar.age": ("none", True),
    ".tar.zst": ("auto", False),
    ".tar": ("none", False),
}
#: plaintext that must not show in an encrypted archive (in notes.txt and
#: photo.jpg: compression `auto` compresses them, `none` keeps them as they are)
MARKER = b"PLAINTEXT-MARKER-7f3a"
#: GNU tar 1.34 does not know pax `hdrcharset` (written for names that are
#: not UTF-8): a harmless warning, the names come out right
HDRCHARSET = "tar: Ignoring unknown extended header keyword 'hdrcharset'"


def need(*names: str, module: bool = False) -> None:
    """Skip (the test, or the module) unless these commands are on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(
            f"the manual restore needs {' and '.join(missing)} on PATH "
            "(Debian packages: age zstd tar jq awscli)",
            allow_module_level=module,
        )


need("bash", "age", "zstd", "tar", "sha256sum", module=True)
if "GNU tar" not in subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout:
    pytest.skip("the manual restore is documented for GNU tar", allow_module_level=True)


# -- the doc's blocks -------------------------------------------------------------


def doc_blocks() -> dict[str, str]:
    text = DOC.read_text()
    found = re.findall(r"^<!-- tested: (\w+) -->\n```sh\n(.*?)^```$", text, re.S | re.M)
    blocks = dict(found)
    assert len(blocks) == len(found), "two blocks with one name"
    return blocks


BLOCKS = doc_blocks()


def script(names: list[str], values: dict[str, str], replace: dict[str, str] | None = None) -> str:
    """The named blocks in order, each leading assignment `NAME=...` of
    `values` given the test's value (each must be there exactly once)."""
    text = "\n".join(BLOCKS[n] for n in names)
    for name, value in values.items():
        pattern = rf"(?m)^((?:\w+=\S*[ \t]+)*){name}=\S*"
        assignment = f"{name}={shlex.quote(value)}"
        text, n = re.subn(pattern, lambda m: str(m[1]) + assignment, text)  # noqa: B023
        assert n == 1, f"{name}= is assigned {n} times in the blocks {names}"
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@dataclass
class Tools:
    """PATH for the blocks: `eventbak` and `python3` of this checkout first."""

    bindir: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBAK_")}
        env.pop("LC_ALL", None)
        env["PATH"] = f"{self.bindir}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env


def bash(tools: Tools, text: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", text],
        cwd=cwd,
        env=tools.env(**env),
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def unexpected_stderr(err: str) -> list[str]:
    return [line for line in err.splitlines() if line != HDRCHARSET]


# -- the tree -----------------------------------------------------------------------


def make_tree(root: Path, version: int = 2) -> None:
    """Text, random and misnamed files, a file split over >= 3 archives of
    128 KiB, symlinks, a hard link, empty file and directory, odd modes,
    names that are not UTF-8 or too long for ustar. `version` 1 is an older
    state of the same paths (other sizes and bytes)."""
    rng = random.Random(version)
    b = os.fsencode(root)
    os.makedirs(os.path.join(b, b"docs", b"sub"), exist_ok=True)
    notes = b"".join(b"line %d of the notes " % i + MARKER + b"\n" for i in range(2000 * version))
    (root / "docs" / "notes.txt").write_bytes(notes)
    (root / "docs" / "sub" / "tiny.md").write_bytes(b"# tiny %d\n" % version)
    (root / "photo.jpg").write_bytes(b"not a photo, text: " + MARKER + b"\n" * 300)
    (root / "random.bin").write_bytes(rng.randbytes(40 * KiB + version))
    (root / "big.bin").write_bytes(rng.randbytes(300 * KiB + 100 * KiB * version + 17))
    (root / "empty").write_bytes(b"")
    (root / "emptydir").mkdir(exist_ok=True)
    script_ = root / "run.sh"
    script_.write_bytes(b"#!/bin/sh\necho %d\n" % version)
    script_.chmod(0o755)
    secret = root / "docs" / "private.txt"
    secret.write_bytes(b"only mine\n")
    secret.chmod(0o600)
    (root / "docs" / "sub").chmod(0o750)
    for name, target in ((b"link", b"docs/notes.txt"), (b"dangling", b"no/such/file")):
        path = os.path.join(b, name)
        if not os.path.lexists(path):
            os.symlink(target, path)
    hard = os.path.join(b, b"docs", b"hard.txt")
    if not os.path.lexists(hard):
        os.link(os.path.join(b, b"docs", b"sub", b"tiny.md"), hard)
    for name in (
        b"caf\xe9.txt",  # Latin-1, fits in ustar: raw bytes
        b"\xff" * 120 + b".bin",  # not UTF-8, too long: pax path, hdrcharset=BINARY
        "é".encode() * 60 + b".txt",  # UTF-8, too long for ustar: pax path
    ):
        with open(os.path.join(b, b"docs", name), "wb") as f:
            f.write(b"odd name %d\n" % version)
    deep = os.path.join(b, *(["ü".encode() * 40] * 4))
    os.makedirs(deep, exist_ok=True)
    with open(os.path.join(deep, b"deep.txt"), "wb") as f:
        f.write(b"deep %d\n" % version)


def file_mtimes(root: Path) -> dict[bytes, int]:
    """Whole-second mtimes of the regular files below `root` (all the tar keeps)."""
    out: dict[bytes, int] = {}
    rb = os.fsencode(root)
    for dirpath, _, files in os.walk(rb):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not os.path.islink(full):
                out[os.path.relpath(full, rb)] = st.st_mtime_ns // 10**9
    return out


def restored_root(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


def assert_same_tree(target: Path, src: Path) -> None:
    back = restored_root(target, src)
    assert describe(back, mtimes=False) == describe(src, mtimes=False)
    assert file_mtimes(back) == file_mtimes(src)
    # nothing else was extracted anywhere in the target
    top = target / str(src).lstrip("/").split("/")[0]
    assert sorted(os.listdir(target)) == [top.name]


# -- eventbak as a subprocess ----------------------------------------------------------


def eventbak(tools: Tools, home: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "eventbak", *args],
        env=tools.env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config")),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"eventbak {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


@dataclass
class Keys:
    identity: Path
    recipient: str
    wrong: Path


@dataclass
class Backup:
    suffix: str
    vault: Path
    state: Path
    src: Path
    session: str
    archives: list[Path]  # this session's, in index order
    old_session: str  # an older session of the same paths, in the same vault
    identity: Path | None
    layers: str


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    bindir = tmp_path_factory.mktemp("bin")
    shim = bindir / "eventbak"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m eventbak "$@"\n')
    shim.chmod(0o755)
    (bindir / "python3").symlink_to(sys.executable)
    return Tools(bindir)


@pytest.fixture(scope="module")
def keys(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    out = eventbak(tools, d, "key", "generate", "--output", str(d / "id.txt"))
    recipient = re.findall(r"age1[0-9a-z]+", out)
    assert len(recipient) == 1, out
    eventbak(tools, d, "key", "generate", "--output", str(d / "wrong.txt"))
    return Keys(d / "id.txt", recipient[0], d / "wrong.txt")


@dataclass
class Source:
    src: Path
    old_vault: Path  # holds one older session of src (.tar.zst)
    old_session: str


def only_session(vault: Path) -> str:
    (session,) = os.listdir(vault / "archives")
    return session


@pytest.fixture(scope="module")
def source(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Source:
    d = tmp_path_factory.mktemp("source")
    src = d / "src"
    make_tree(src, version=1)
    old_vault = d / "old-vault"
    eventbak(
        tools, d, "--state-dir", str(d / "old-state"), "backup", "--vault", f"file://{old_vault}",
        "--archive-size", "128KiB", str(src),
    )  # fmt: skip
    old = only_session(old_vault)
    shutil.rmtree(src)
    make_tree(src, version=2)
    # session ids carry the second they began: later sessions must sort after
    while time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) <= old[:16]:
        time.sleep(0.05)
    return Source(src, old_vault, old)


def run_backup(
    tools: Tools,
    d: Path,
    src: Path,
    vault_url: str,
    compression: str,
    recipient: str | None,
    archive_size: str = "128KiB",
) -> None:
    eventbak(
        tools, d, "--state-dir", str(d / "state"), "backup", "--vault", vault_url,
        "--archive-size", archive_size, "--compression", compression,
        *(["--recipient", recipient] if recipient else []), str(src),
    )  # fmt: skip


@pytest.fixture(scope="module", params=list(FORMATS), ids=[s.lstrip(".") for s in FORMATS])
def backed_up(
    request: pytest.FixtureRequest,
    tools: Tools,
    keys: Keys,
    source: Source,
    tmp_path_factory: pytest.TempPathFactory,
) -> Backup:
    suffix: str = request.param
    compression, encrypted = FORMATS[suffix]
    d = tmp_path_factory.mktemp("vault" + suffix.replace(".", "-"))
    vault = d / "vault"
    (vault / "archives").mkdir(parents=True)
    shutil.copytree(
        source.old_vault / "archives" / source.old_session,
        vault / "archives" / source.old_session,
    )
    run_backup(
        tools, d, source.src, f"file://{vault}", compression,
        keys.recipient if encrypted else None,
    )  # fmt: skip
    sessions = sorted(os.listdir(vault / "archives"))
    assert len(sessions) == 2 and sessions[0] == source.old_session, sessions
    session = sessions[1]
    archives = sorted((vault / "archives" / session).iterdir())
    assert len(archives) >= 4, archives
    assert all(a.name.endswith(suffix) and a.name.count(".tar") == 1 for a in archives)
    layers = ",".join(n for n, on in (("zstd", compression != "none"), ("age", encrypted)) if on)
    return Backup(
        suffix, vault, d / "state", source.src, session, archives, source.old_session,
        keys.identity if encrypted else None, layers or "none",
    )  # fmt: skip


def members(tools: Tools, b: Backup, archive: Path) -> list[str]:
    text = script(["setup"], {"VAULT": str(b.vault), "ID": str(b.identity), "TARGET": "/nowhere"})
    text += f"\ntarstream {shlex.quote(str(archive))} | tar -tf -"
    done = bash(tools, text, archive.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def restore(
    tools: Tools, b: Backup, target: Path, vault: Path | None = None, identity: Path | None = None
) -> subprocess.CompletedProcess[str]:
    ident = identity or b.identity or target.parent / "no-identity-needed.txt"
    values = {"VAULT": str(vault or b.vault), "ID": str(ident), "TARGET": str(target)}
    return bash(tools, script(["setup", "restore", "join"], values), target.parent)


# -- the tests ---------------------------------------------------------------------------


def test_doc_blocks_are_found() -> None:
    assert set(BLOCKS) == {"s3", "glacier", "setup", "restore", "join", "inspect", "checksums"}


def test_the_big_file_is_split_over_at_least_three_archives(
    tools: Tools, backed_up: Backup
) -> None:
    holding = [
        a
        for a in backed_up.archives
        if any(".eventbak-seg-" in m for m in members(tools, backed_up, a))
    ]
    assert len(holding) >= 3, holding


def test_manual_restore_gives_back_the_tree(
    tools: Tools, backed_up: Backup, tmp_path: Path
) -> None:
    target = tmp_path / "restore"
    done = restore(tools, backed_up, target)
    assert done.returncode == 0, done.stderr
    assert unexpected_stderr(done.stderr) == [], done.stderr
    assert done.stdout == ""
    assert_same_tree(target, backed_up.src)


def test_encryption_is_real(tools: Tools, backed_up: Backup, keys: Keys, tmp_path: Path) -> None:
    """The marker is visible in unencrypted archives (so the check would see
    it) and in no encrypted one; the wrong identity decrypts nothing."""
    data = b"".join(a.read_bytes() for a in backed_up.archives)
    # random.bin is stored as it is by both `auto` (incompressible) and `none`
    random_bytes = (backed_up.src / "random.bin").read_bytes()[20 * KiB : 20 * KiB + 64]
    if backed_up.identity is None:
        assert random_bytes in data
        assert (MARKER in data) == (backed_up.suffix == ".tar")
        return
    assert MARKER not in data and random_bytes not in data
    assert all(a.read_bytes().startswith(b"age-encryption.org/v1\n") for a in backed_up.archives)
    first = backed_up.archives[0]
    wrong = subprocess.run(
        ["age", "-d", "-i", str(keys.wrong), str(first)], capture_output=True, timeout=TIMEOUT
    )
    assert wrong.returncode != 0
    assert wrong.stdout == b""
    assert b"no identity matched" in wrong.stderr, wrong.stderr
    right = subprocess.run(
        ["age", "-d", "-i", str(keys.identity), str(first)], capture_output=True, timeout=TIMEOUT
    )
    assert right.returncode == 0, right.stderr
    # the doc's commands with the wrong key: every archive of the session fails
    target = tmp_path / "restore"
    done = restore(tools, backed_up, target, identity=keys.wrong)
    failed = [line for line in done.stderr.splitlines() if line.startswith("FAILED: ")]
    assert failed == [f"FAILED: {a}" for a in backed_up.archives], done.stderr
    assert os.listdir(target) == []


def test_inspect_shows_members_and_the_global_header(
    tools: Tools, backed_up: Backup, tmp_path: Path
) -> None:
    b = backed_up
    values = {"VAULT": str(b.vault), "ID": str(b.identity), "TARGET": str(tmp_path / "t")}
    # as written: the oldest archive of the vault (the older session, .tar.zst)
    done = bash(tools, script(["setup", "inspect"], values), tmp_path)
    assert done.returncode in (0, 141), done.stderr
    assert done.stderr == ""
    old_first = f"{b.old_session}-000001"
    assert f"EVENTBAK.archive={old_first}\n" in done.stdout
    assert "EVENTBAK.layers=zstd\n" in done.stdout
    # on the first archive of this session
    first = b.archives[0]
    replace = {'A=$(ls -d "$VAULT"/archives/*/* | head -n 1)': f"A={shlex.quote(str(first))}"}
    done = bash(tools, script(["setup", "inspect"], values, replace), tmp_path)
    assert done.returncode in (0, 141), done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    # `tar -tvf`: the first member is the first directory of the walk
    assert lines[0].startswith("d") and lines[0].endswith(str(b.src).lstrip("/") + "/"), lines
    expected = {
        "EVENTBAK.format": "1",
        "EVENTBAK.archive": first.name.removesuffix(b.suffix),
        "EVENTBAK.session": b.session,
        "EVENTBAK.layers": b.layers,
    }
    records = [line for line in lines if re.fullmatch(r"\d+ EVENTBAK\.\w+=.*", line)]
    assert [r.split(" ", 1)[1] for r in records] == [f"{k}={v}" for k, v in expected.items()]
    for r in records:  # pax record lengths count the whole "LEN KEY=VALUE\n"
        assert int(r.split(" ")[0]) == len(r) + 1
    assert ast.literal_eval(lines[-1]) == expected


def test_checksums_against_the_log(tools: Tools, backed_up: Backup, tmp_path: Path) -> None:
    need("jq")
    b = backed_up
    values = {
        "VAULT": str(b.vault),
        "ID": str(b.identity),
        "TARGET": str(tmp_path / "restore"),
        "STATE": str(b.state),
    }
    text = script(["setup", "checksums"], values)
    done = bash(tools, text, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "all archives intact\n"
    sums = (tmp_path / "restore.sha256").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums) == [
        str(a.relative_to(b.vault)) for a in b.archives
    ]
    if b.suffix != ".tar":
        return
    # a damaged archive is named (in a copy of the vault)
    copy = tmp_path / "copy"
    shutil.copytree(b.vault, copy)
    victim = copy / b.archives[1].relative_to(b.vault)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    done = bash(tools, script(["setup", "checksums"], {**values, "VAULT": str(copy)}), tmp_path)
    assert done.returncode != 0
    assert f"{b.archives[1].relative_to(b.vault)}: FAILED" in done.stdout, done.stdout


@pytest.mark.parametrize("backed_up", [".tar.zst"], ids=["tar.zst"], indirect=True)
def test_a_missing_archive_leaves_the_segments_and_says_so(
    tools: Tools, backed_up: Backup, tmp_path: Path
) -> None:
    b = backed_up
    # an archive that holds only a middle segment of big.bin
    middle = [
        a
        for a in b.archives
        if (m := members(tools, b, a))
        and all(".eventbak-seg-" in n and not n.endswith("-seg-000000000000000") for n in m)
    ]
    assert middle, "no archive holds only a middle segment"
    copy = tmp_path / "copy"
    shutil.copytree(b.vault, copy)
    (copy / middle[0].relative_to(b.vault)).unlink()
    target = tmp_path / "restore"
    done = restore(tools, b, target, vault=copy)
    big = restored_root(target, b.src) / "big.bin"
    missing = [line for line in done.stderr.splitlines() if line.startswith("MISSING: ")]
    assert len(missing) == 1 and missing[0].startswith(f"MISSING: {big} at "), done.stderr
    assert not big.exists()
    assert sorted(p.name for p in big.parent.glob("big.bin.eventbak-seg-*"))


@pytest.mark.parametrize("backed_up", [".tar.zst.age"], ids=["tar.zst.age"], indirect=True)
def test_a_damaged_encrypted_archive_fails(tools: Tools, backed_up: Backup, tmp_path: Path) -> None:
    """age authenticates its chunks: one flipped byte and the archive fails."""
    b = backed_up
    copy = tmp_path / "copy"
    shutil.copytree(b.vault, copy)
    victim = copy / b.archives[0].relative_to(b.vault)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    done = restore(tools, b, tmp_path / "restore", vault=copy)
    failed = [line for line in done.stderr.splitlines() if line.startswith("FAILED: ")]
    assert f"FAILED: {victim}" in failed, done.stderr


def test_a_hard_link_to_a_split_file_is_made_by_hand(tools: Tools, tmp_path: Path) -> None:
    """tar cannot link to a file that exists only as segments: the doc's
    message, then its `ln` after the join."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(3).randbytes(300 * KiB))
    os.link(src / "big.bin", src / "link.bin")
    (src / "z.txt").write_bytes(b"after the link\n")
    run_backup(tools, tmp_path, src, f"file://{tmp_path / 'vault'}", "none", None)
    target = tmp_path / "restore"
    values = {"VAULT": str(tmp_path / "vault"), "ID": "unused", "TARGET": str(target)}
    done = bash(tools, script(["setup", "restore", "join"], values), tmp_path)
    rel = str(src).lstrip("/")
    names = {"NAME": f"{rel}/big.bin", "LINK": f"{rel}/link.bin"}
    text = DOC.read_text()
    (message,) = re.findall(r"`(tar: LINK: Cannot hard link to 'NAME': [^`]*)`", text)
    (fix,) = re.findall(r'`(\(cd "\$TARGET" && ln NAME LINK\))`', text)
    message = re.sub(r"\b(NAME|LINK)\b", lambda m: names[m[1]], message)
    fix = re.sub(r"\b(NAME|LINK)\b", lambda m: shlex.quote(names[m[1]]), fix)
    errors = unexpected_stderr(done.stderr)
    assert errors[0] == message, done.stderr
    assert errors[1] == "tar: Exiting with failure status due to previous errors"
    assert errors[2].startswith("FAILED: ") and len(errors) == 3, done.stderr
    assert (target / rel / "z.txt").exists()  # the rest of that archive
    link = bash(tools, f"TARGET={shlex.quote(str(target))}\n{fix}", tmp_path)
    assert link.returncode == 0 and link.stderr == "", link.stderr
    assert_same_tree(target, src)


# -- S3 and Glacier ----------------------------------------------------------------------


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": servers.TEST_REGION,
        "AWS_ACCESS_KEY_ID": servers.TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": servers.TEST_SECRET,
    }


@pytest.fixture
def aws() -> None:
    need("aws", "jq")


@pytest.fixture
def moto_bucket(moto_server: servers.Server) -> Iterator[str]:
    name = "eb-manual-" + uuid.uuid4().hex[:12]
    client = moto_server.client()
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)
    client.close()


def test_from_s3_deep_archive(
    aws: None,
    moto_server: servers.Server,
    moto_bucket: str,
    tools: Tools,
    keys: Keys,
    source: Source,
    tmp_path: Path,
) -> None:
    """Thaw (moto refuses to serve DEEP_ARCHIVE objects before), wait, copy,
    restore. One archive only: every `aws` call costs a second or more."""
    endpoint = moto_server.endpoint_url
    url = (
        f"s3://{moto_bucket}/host1?endpoint_url={endpoint}&region={servers.TEST_REGION}"
        "&storage_class=DEEP_ARCHIVE"
    )
    run_backup(tools, tmp_path, source.src, url, "auto", keys.recipient, "1MiB")
    client = moto_server.client()
    try:
        keys_ = [o["Key"] for o in client.list_objects_v2(Bucket=moto_bucket)["Contents"]]
        keys_ = [k for k in keys_ if "/archives/" in k]  # not the catalog (hot class)
        assert len(keys_) == 1, keys_
        with pytest.raises(client.exceptions.ClientError, match="InvalidObjectState"):
            client.get_object(Bucket=moto_bucket, Key=keys_[0])
    finally:
        client.close()
    vault = tmp_path / "download"
    copy = script(["s3"], {"B": moto_bucket, "P": "host1"}, {"sleep 900": "sleep 1"})
    done = bash(tools, copy, tmp_path, **aws_env(endpoint), VAULT=str(vault))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    archives = sorted(vault.glob("archives/*/*.tar.zst.age"))
    assert [f"host1/{a.relative_to(vault)}" for a in archives] == sorted(keys_)
    target = tmp_path / "restore"
    values = {"VAULT": str(vault), "ID": str(keys.identity), "TARGET": str(target)}
    done = bash(tools, script(["setup", "restore", "join"], values), tmp_path)
    assert done.returncode == 0 and unexpected_stderr(done.stderr) == [], done.stderr
    assert_same_tree(target, source.src)


def test_from_a_glacier_vault(
    aws: None,
    moto_server: servers.Server,
    tools: Tools,
    keys: Keys,
    source: Source,
    tmp_path: Path,
) -> None:
    """Inventory, one retrieval job per archive, stored under its description's
    key and checked against its SHA-256, then restored. One archive only:
    every `aws` call costs a second or more, and moto's inventory job 5 s.
    The backup runs in process: moto answers UploadArchive with a plain
    SHA-256 where AWS gives the tree hash (see tests/test_glacier_vault.py)."""
    import trio

    from eventbak.config import Compression
    from eventbak.pipeline.coordinator import BackupRequest
    from eventbak.pipeline.scanner import normalize_roots
    from eventbak.runner import run_backup as run
    from eventbak.statedir import StateDir
    from eventbak.vaults.url import parse_vault
    from tests.test_glacier_vault import MotoGlacierVault, new_name

    name = new_name()
    url = f"glacier://{name}?endpoint_url={moto_server.endpoint_url}&region={servers.TEST_REGION}"
    req = BackupRequest(
        dataset="glacier", paths=normalize_roots([os.fsencode(source.src)]), vault_url=url,
        archive_size=1024 * KiB, compression=Compression("auto"), exclude=[],
        recipients=(keys.recipient,),
    )  # fmt: skip
    sd = StateDir.open(tmp_path / "state")
    gv: Any = MotoGlacierVault(parse_vault(url))
    try:
        outcome = trio.run(run, sd, req, gv, None)
    finally:
        gv.close()
        sd.close()
    assert outcome.state == "completed"
    vault = tmp_path / "download"
    text = script(
        ["glacier"],
        {"V": name, "TIER": "Expedited"},
        {"sleep 900": "sleep 1"},
    )
    done = bash(tools, text, tmp_path, **aws_env(moto_server.endpoint_url), VAULT=str(vault))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "" and done.stdout == ""
    archives = sorted(vault.glob("archives/*/*.tar.zst.age"))
    assert len(archives) == 1 == len((tmp_path / "jobs.txt").read_text().splitlines())
    target = tmp_path / "restore"
    values = {"VAULT": str(vault), "ID": str(keys.identity), "TARGET": str(target)}
    done = bash(tools, script(["setup", "restore", "join"], values), tmp_path)
    assert done.returncode == 0 and unexpected_stderr(done.stderr) == [], done.stderr
    assert_same_tree(target, source.src)
