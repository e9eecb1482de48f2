"""`eventbak recover`: a state dir rebuilt from a vault alone (after losing
the machine), then restores of every session and incremental backups that
build on the recovered history; what recover refuses (an existing log, an
empty vault, encrypted catalogs without the right key) and hand-made
malicious vaults: catalogs with paths that escape, symlinks that a later
entry would write through, tar members named to escape.

The CLI runs in-process (click's CliRunner: tracebacks show up in `err`)
except where a test needs another user; vaults are `file://` directories in
tmp, and one S3 DEEP_ARCHIVE bucket on moto behind a counting proxy.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard

from eventbak.archive.tar import member_name
from eventbak.catalog import marker
from eventbak.catalog.manifest import (
    FORMAT_VERSION,
    ArchiveRecord,
    Header,
    Location,
    ManifestEntry,
    ManifestReader,
    ManifestWriter,
    Trailer,
)
from eventbak.pipeline import coordinator
from eventbak.statedir import log_path, read_state
from tests import servers
from tests.clihelpers import (
    NOBODY,
    Cli,
    Run,
    assert_error,
    assert_ok,
    base_env,
    unprivileged_prefix,
)
from tests.conftest import Bucket, _empty_and_delete, bucket_name
from tests.faultproxy import FaultProxy
from tests.treeutil import describe

KiB = 1024


def _cli(tmp: Path, mode: str = "runner") -> Cli:
    return Cli(mode, base_env(tmp), tmp)


def _url(vault: Path) -> str:
    return f"file://{vault}"


def _backup(
    cli: Cli, state: Path, src: Path, url: str, *extra: str, config: Path | None = None
) -> dict[str, Any]:
    before = ["--config", str(config)] if config else []
    run = assert_ok(cli(*before, "--state-dir", state, "backup", src, "--vault", url,
                        "--archive-size", "128KiB", "--json", *extra))  # fmt: skip
    summary: dict[str, Any] = run.json()
    assert summary["state"] == "completed", run
    return summary


def _restore(cli: Cli, state: Path, to: Path, *extra: str | Path) -> Run:
    return cli("--state-dir", state, "restore", "--to", to, *extra)


def _under(to: Path, src: Path) -> Path:
    """Where `src` (absolute) lands in a restore into `to`."""
    return to / str(src).lstrip("/")


def _sessions(state: Path) -> list[str]:
    """The sessions of the state dir's log (none if there is no log)."""
    if not log_path(state).exists():
        return []
    st, _ = read_state(state)
    return list(st.sessions)


def _mixed_tree(src: Path) -> None:
    (src / "docs" / "notes").mkdir(parents=True)
    (src / "docs" / "deep" / "er").mkdir(parents=True)
    (src / "docs" / "notes" / "a.txt").write_text("alpha\n" * 100)
    (src / "docs" / "notes" / "b.txt").write_text("bravo\n")
    (src / "docs" / "deep" / "er" / "c.md").write_text("# deep\n")
    (src / "big.bin").write_bytes(os.urandom(700 * KiB))  # split over several 128 KiB archives
    (src / "gone.txt").write_text("deleted before the second backup\n")
    (src / "empty").write_bytes(b"")
    (src / "emptydir").mkdir()
    os.symlink("docs/notes/a.txt", src / "link")
    os.link(src / "docs" / "notes" / "b.txt", src / "hl")
    os.chmod(src / "docs" / "notes" / "b.txt", 0o600)


# -- the whole story: lose the state dir, recover it, restore, back up again ----------


def test_recover_from_a_local_vault_after_losing_the_state_dir(tmp_path: Path) -> None:
    cli = _cli(tmp_path)
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    url = _url(vault)
    _mixed_tree(src)
    first = _backup(cli, state, src, url)["session"]
    before = describe(src)
    (src / "docs" / "notes" / "a.txt").write_text("alpha, changed\n")
    os.chmod(src / "docs" / "deep" / "er" / "c.md", 0o640)
    (src / "docs" / "deep" / "new.txt").write_text("added\n")
    (src / "gone.txt").unlink()
    second_run = _backup(cli, state, src, url)
    second = second_run["session"]
    # incremental: a.txt, c.md (its mode) and new.txt only
    assert second_run["base"] == first and second_run["files"] == 3
    after = describe(src)
    shutil.rmtree(state)

    new_state = tmp_path / "recovered"
    run = assert_ok(cli("--state-dir", new_state, "recover", "--vault", url))
    assert "2 sessions" in run.out and second in run.out, run
    listed = assert_ok(cli("--state-dir", new_state, "sessions", "--json")).json()
    assert [(s["session"], s["state"], s["base"]) for s in listed] == [
        (first, "completed", ""),
        (second, "completed", first),
    ]
    assert (new_state / "catalog" / f"{first}.mf.zst").is_file()
    assert (new_state / "catalog" / f"{second}.mf.zst").is_file()
    assert_ok(cli("--state-dir", new_state, "replay", "--verify"))

    assert_ok(_restore(cli, new_state, tmp_path / "latest"))
    assert describe(_under(tmp_path / "latest", src)) == after
    assert_ok(_restore(cli, new_state, tmp_path / "older", "--session", first))
    assert describe(_under(tmp_path / "older", src)) == before

    # the recovered history is a base like any other: nothing changed, nothing stored
    third = _backup(cli, new_state, src, url)
    assert (third["files"], third["base"], third["archives"]) == (0, second, 0), third
    assert third["point_in_time"]["files"] == second_run["point_in_time"]["files"]


def test_a_damaged_catalog_is_left_out_and_the_others_recovered(tmp_path: Path) -> None:
    """One catalog object damaged in the vault: the sessions whose catalogs
    check out are recovered (exit 3, the damaged one named); restoring them
    works. Every catalog damaged: nothing recovered, exit 1."""
    cli = _cli(tmp_path)
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    url = _url(vault)
    _mixed_tree(src)
    first = _backup(cli, state, src, url)["session"]
    before = describe(src)
    (src / "docs" / "deep" / "new.txt").write_text("added\n")
    second = _backup(cli, state, src, url)["session"]
    damaged = vault / "catalog" / f"{second}.mf.zst"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    new_state = tmp_path / "recovered"
    run = cli("--state-dir", new_state, "recover", "--vault", url)
    assert run.code == 3, run
    assert f"catalog/{second}.mf.zst" in run.err and "left out" in run.err
    assert "Traceback" not in run.err
    listed = assert_ok(cli("--state-dir", new_state, "sessions", "--json")).json()
    assert [s["session"] for s in listed] == [first]
    assert_ok(_restore(cli, new_state, tmp_path / "back"))
    assert describe(_under(tmp_path / "back", src)) == before

    first_catalog = vault / "catalog" / f"{first}.mf.zst"
    first_catalog.write_bytes(first_catalog.read_bytes()[:40])  # truncated
    none_state = tmp_path / "none"
    assert_error(cli("--state-dir", none_state, "recover", "--vault", url), 1, "nothing recovered")


def test_sessions_opened_in_the_same_second_are_recovered_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when two backups run within a second: the second session's random
    part happens to sort first."""
    ids = iter(["20250101T000000Z-ffff0001", "20250101T000000Z-00000002"])
    monkeypatch.setattr(coordinator, "new_session_id", lambda: next(ids))
    cli = _cli(tmp_path)
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    (src / "a").write_text("a\n")
    first = _backup(cli, state, src, _url(vault))["session"]
    (src / "b").write_text("b\n")
    second = _backup(cli, state, src, _url(vault))
    assert second["base"] == first
    shutil.rmtree(state)
    assert_ok(cli("--state-dir", state, "recover", "--vault", _url(vault)))
    listed = assert_ok(cli("--state-dir", state, "sessions", "--json")).json()
    assert [(s["session"], s["base"]) for s in listed] == [(first, ""), (second["session"], first)]
    assert_ok(_restore(cli, state, tmp_path / "back"))
    assert describe(_under(tmp_path / "back", src)) == describe(src)


# -- S3 DEEP_ARCHIVE: only the catalogs are read, nothing is thawed ---------------------


@pytest.fixture
def moto_bucket(moto_server: servers.Server, request: pytest.FixtureRequest) -> Iterator[Bucket]:
    name = bucket_name(request.node.name)
    client = moto_server.client()
    client.create_bucket(Bucket=name)
    yield Bucket(moto_server, name, moto_server.endpoint_url)
    _empty_and_delete(client, name)
    client.close()


@pytest.mark.slow
def test_recover_from_s3_deep_archive_reads_only_catalogs(
    moto_bucket: Bucket, tmp_path: Path
) -> None:
    """moto keeps DEEP_ARCHIVE objects unreadable until RestoreObject: a
    recover that read an archive would fail, one that thawed would show."""
    cli = _cli(tmp_path)
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(300 * KiB))
    (src / "small.txt").write_text("small\n")
    first = _backup(cli, state, src, moto_bucket.url(storage_class="DEEP_ARCHIVE"))["session"]
    (src / "added.txt").write_text("added\n")
    second = _backup(cli, state, src, moto_bucket.url(storage_class="DEEP_ARCHIVE"))["session"]
    listing = moto_bucket.client().list_objects_v2(Bucket=moto_bucket.name, Prefix="host1/")
    classes = {o["Key"].removeprefix("host1/"): o["StorageClass"] for o in listing["Contents"]}
    archives = {k for k in classes if k.startswith("archives/")}
    catalogs = {k for k in classes if k.startswith("catalog/")}
    assert len(archives) >= 3 and {classes[k] for k in archives} == {"DEEP_ARCHIVE"}
    assert catalogs == {f"catalog/{first}.mf.zst", f"catalog/{second}.mf.zst"}
    shutil.rmtree(state)

    with FaultProxy(moto_bucket.endpoint_url) as proxy:
        via = moto_bucket.via(proxy.endpoint_url).url(storage_class="DEEP_ARCHIVE")
        report = assert_ok(cli("--state-dir", state, "recover", "--vault", via, "--json")).json()
        assert (report["sessions"], report["archives"]) == ([first, second], len(archives))
        assert proxy.count(op="RestoreObject") == 0
        read = [r.path for r in proxy.requests if r.op == "GetObject"]
        assert not [p for p in read if "/archives/" in p], read
        for key in catalogs:  # each catalog read, in its hot class
            assert f"/{moto_bucket.name}/host1/{key}" in read, read
        proxy.reset_log()
        back = tmp_path / "back"
        assert_ok(_restore(cli, state, back, "--vault", via, "--poll", "0.2"))
        assert proxy.count(op="RestoreObject") == len(archives)  # restore thaws them all
    assert describe(_under(back, src)) == describe(src)


# -- encryption: the catalogs need the identity ----------------------------------------


def test_recover_encrypted_needs_the_identity(tmp_path: Path) -> None:
    cli = _cli(tmp_path)
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    identity, wrong = tmp_path / "id.txt", tmp_path / "wrong.txt"
    recipient = assert_ok(cli("key", "generate", "--output", identity)).out.strip()
    assert_ok(cli("key", "generate", "--output", wrong))
    src.mkdir()
    (src / "secret.txt").write_text("the plans\n")
    (src / "noise.bin").write_bytes(os.urandom(200 * KiB))
    session = _backup(cli, state, src, _url(vault), "--recipient", recipient)["session"]
    key = f"catalog/{session}.mf.zst.age"
    assert (vault / key).read_bytes().startswith(b"age-encryption.org/v1\n")
    shutil.rmtree(state)

    new = tmp_path / "recovered"
    run = cli("--state-dir", new, "recover", "--vault", _url(vault))
    assert_error(run, 6, key, "--identity")
    assert _sessions(new) == []
    run = cli("--state-dir", new, "recover", "--vault", _url(vault), "--identity", wrong)
    assert_error(run, 6, key, str(wrong))
    assert _sessions(new) == []
    # a failed attempt leaves nothing in the way of the next one
    assert_ok(cli("--state-dir", new, "recover", "--vault", _url(vault), "--identity", identity))
    assert _sessions(new) == [session]
    back = tmp_path / "back"
    assert_error(_restore(cli, new, back), 6, "--identity")
    assert_ok(_restore(cli, new, back, "--identity", identity))
    assert describe(_under(back, src)) == describe(src)


@pytest.mark.slow  # scrypt, once per run that opens the key
def test_recover_with_the_passphrase_key_kept_in_the_vault(tmp_path: Path) -> None:
    """With [encryption] passphrase_command, the vault holds the key
    (`keys/AGE1....age`, wrapped with the passphrase): recover opens it, keeps
    it in the new state dir, and later backups go on with the same key."""
    cli = _cli(tmp_path)
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("[encryption]\npassphrase_command = \"printf 'a long passphrase\\\\n'\"\n")
    bad.write_text("[encryption]\npassphrase_command = \"printf 'not the passphrase'\"\n")
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    (src / "noise.bin").write_bytes(os.urandom(50 * KiB))
    first = _backup(cli, state, src, _url(vault), config=good)
    (wrapped,) = (vault / "keys").iterdir()
    shutil.rmtree(state)

    run = cli("--config", bad, "--state-dir", state, "recover", "--vault", _url(vault))
    assert_error(run, 6, f"keys/{wrapped.name}", "passphrase")
    assert _sessions(state) == []
    assert_ok(cli("--config", good, "--state-dir", state, "recover", "--vault", _url(vault)))
    assert (state / "keys" / wrapped.name).read_bytes() == wrapped.read_bytes()
    back = tmp_path / "back"
    assert_ok(cli("--config", good, "--state-dir", state, "restore", "--to", back))
    assert describe(_under(back, src)) == describe(src)
    (src / "b.txt").write_text("b\n")
    again = _backup(cli, state, src, _url(vault), config=good)
    assert (again["base"], again["files"]) == (first["session"], 1)
    assert [p.name for p in (vault / "keys").iterdir()] == [wrapped.name]  # the same key


# -- what recover refuses --------------------------------------------------------------


def test_recover_refuses_a_state_dir_with_a_log(tmp_path: Path) -> None:
    cli = _cli(tmp_path)
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    src.mkdir()
    (src / "f").write_text("f\n")
    _backup(cli, state, src, _url(vault))
    log = log_path(state).read_bytes()
    run = cli("--state-dir", state, "recover", "--vault", _url(vault))
    assert_error(run, 2, str(state), "event log")
    assert log_path(state).read_bytes() == log


def test_recover_from_an_empty_vault_is_a_clear_error(tmp_path: Path) -> None:
    cli = _cli(tmp_path)
    vault, state = tmp_path / "vault", tmp_path / "state"
    vault.mkdir()
    run = cli("--state-dir", state, "recover", "--vault", _url(vault))
    assert_error(run, 1, str(vault), "no catalog")
    assert _sessions(state) == []


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="eventbak-recover-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


def test_recover_from_a_read_only_vault(world_tmp: Path) -> None:
    """recover only reads the vault: a vault the user may read but not write
    (here: root's, recovered as nobody) is enough."""
    prefix = unprivileged_prefix()
    if prefix is None or os.geteuid() != 0:
        pytest.skip("needs root and a way to run as nobody")
    root_cli = _cli(world_tmp)
    src, vault = world_tmp / "src", world_tmp / "vault"
    src.mkdir()
    (src / "f").write_text("f\n")
    session = _backup(root_cli, world_tmp / "root-state", src, _url(vault))["session"]
    for dirpath, _, files in os.walk(vault):  # readable by all, writable by root only
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    work = world_tmp / "work"
    work.mkdir()
    os.chown(work, NOBODY, NOBODY)
    if subprocess.run([*prefix, "test", "-w", str(vault)], check=False).returncode == 0:
        pytest.skip("the unprivileged user can write the vault anyway")
    cli = Cli("subprocess", base_env(work), work)
    run = cli("--state-dir", work / "state", "recover", "--vault", _url(vault), prefix=prefix)
    assert_ok(run)
    assert session in run.out


# -- hand-made malicious vaults ----------------------------------------------------------

#: The session of every forged catalog, and its archives' ids.
SID = "20250102T030405Z-0badc0de"
_LEN = struct.Struct("<I")


def _aid(i: int) -> str:
    return f"{SID}-{i:06d}"


def _catalog_key() -> str:
    return f"catalog/{SID}.mf.zst"


def _tar(members: list[tuple[str, str, bytes]]) -> bytes:
    """A tar of (name, "file" or "symlink", data or link target) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode = 1_600_000_000, 0o644
            if kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, payload.decode()
                tf.addfile(ti)
            else:
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
    return buf.getvalue()


def _member(path: bytes, kind: str) -> str:
    """A tar member name as eventbak writes it (relative, no leading '/')."""
    return member_name(path, kind).decode()


def _file(path: bytes, data: bytes, archive: int = 1) -> ManifestEntry:
    return ManifestEntry(path, "file", 0o644, 1_600_000_000 * 10**9, size=len(data),
                         where=[Location(_aid(archive), 0, len(data))])  # fmt: skip


def _symlink(path: bytes, target: bytes, archive: int = 1) -> ManifestEntry:
    return ManifestEntry(path, "symlink", 0o777, 1_600_000_000 * 10**9, target=target,
                         where=[Location(_aid(archive), 0, 0)])  # fmt: skip


def _hardlink(path: bytes, target: bytes) -> ManifestEntry:
    return ManifestEntry(path, "hardlink", 0o644, 1_600_000_000 * 10**9, target=target)


def _dir(path: bytes) -> ManifestEntry:
    return ManifestEntry(path, "dir", 0o755, 1_600_000_000 * 10**9)


def _by_hand(header: Header, entries: list[ManifestEntry], *, complete: bool = True) -> bytes:
    """A manifest framed as ManifestWriter frames one (length-prefixed
    MessagePack records, end mark, trailer, zstd) without its checks on the
    entries; `complete=False` leaves the end mark and trailer out."""
    enc = msgspec.msgpack.Encoder()
    records = [enc.encode(header), *(enc.encode(e) for e in entries)]
    raw = b"".join(_LEN.pack(len(r)) + r for r in records)
    if complete:
        trailer = enc.encode(Trailer(len(entries)))
        raw += _LEN.pack(0) + _LEN.pack(len(trailer)) + trailer
    return zstandard.ZstdCompressor().compress(raw)


def _forge(
    vault: Path,
    entries: list[ManifestEntry],
    archives: list[bytes],
    *,
    by_hand: bool = False,
    complete: bool = True,
    key_of: dict[int, str] | None = None,
) -> None:
    """A vault holding one completed session `SID`: its tar archives (no
    layers) at their keys, and its catalog listing them and `entries`."""
    (vault / "catalog").mkdir(parents=True)
    records = []
    for i, data in enumerate(archives, 1):
        key = (key_of or {}).get(i, f"archives/{SID}/{_aid(i)}.tar")
        path = vault / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        records.append(
            ArchiveRecord(id=_aid(i), key=key, size=len(data), sha256=sha, layers=[],
                          raw_size=len(data), checksum=sha, index=i)
        )  # fmt: skip
    now = time.time()
    header = Header(FORMAT_VERSION, SID, "forged", [b"/r"], now, opened=now,
                    archive_size=1 << 20, compression="none", archives=records)  # fmt: skip
    target = vault / _catalog_key()
    if by_hand:
        target.write_bytes(_by_hand(header, entries, complete=complete))
    else:
        w = ManifestWriter(target, header)
        for e in entries:
            w.add(e)
        w.close()
    mark = marker.Marker(marker.VAULT_FORMAT, "f" * 32, now)
    (vault / marker.MARKER).write_bytes(msgspec.json.encode(mark) + b"\n")


def test_the_hand_framing_is_the_writers(tmp_path: Path) -> None:
    """The malicious catalogs below are framed by hand: the same framing
    reads back through ManifestReader when the entries are sound."""
    entries = [_dir(b"/r"), _file(b"/r/x", b"data")]
    header = Header(FORMAT_VERSION, SID, "forged", [b"/r"], 1.0)
    reader = ManifestReader(io.BytesIO(_by_hand(header, entries)), ["zstd"])
    assert reader.header == header and list(reader) == entries


_DATA = b"planted by a malicious vault\n"


@pytest.mark.parametrize(
    ("entries", "options", "needle"),
    [
        pytest.param([_file(b"/../../etc/x", _DATA)], {"by_hand": True},
                     "component", id="dotdot"),
        pytest.param([_dir(b"/r"), _file(b"/r/../../../x", _DATA)], {"by_hand": True},
                     "component", id="dotdot-inside"),
        pytest.param([_file(b"etc/x", _DATA)], {"by_hand": True},
                     "not absolute", id="relative"),
        pytest.param([_file(b"/r/x", _DATA), _file(b"/r/a", _DATA)], {"by_hand": True},
                     "walk order", id="out-of-order"),
        pytest.param([_dir(b"/r"), _file(b"/r/x", _DATA)], {"by_hand": True, "complete": False},
                     "truncated", id="truncated"),
        pytest.param([_dir(b"/r"), _file(b"/r/x", _DATA, archive=7)], {},
                     "no catalog of the vault lists", id="unlisted-archive"),
        pytest.param([_dir(b"/r"), _file(b"/r/x", _DATA)],
                     {"key_of": {1: f"archives/20990101T000000Z-beef/{_aid(1)}.tar"}},
                     "unexpected key", id="archive-elsewhere"),
    ],
)  # fmt: skip
def test_a_malformed_catalog_is_refused_naming_it(
    tmp_path: Path, entries: list[ManifestEntry], options: dict[str, Any], needle: str
) -> None:
    cli = _cli(tmp_path)
    vault, state = tmp_path / "vault", tmp_path / "state"
    members = [(_member(e.path, "file"), "file", _DATA) for e in entries if e.kind == "file"]
    _forge(vault, entries, [_tar(members)], **options)
    run = cli("--state-dir", state, "recover", "--vault", _url(vault))
    assert_error(run, 1, _catalog_key(), needle)
    assert _sessions(state) == []
    assert not (state / "catalog" / f"{SID}.mf.zst").exists()


def _everything_below(root: Path, *skip: Path) -> dict[str, tuple[object, ...]]:
    """Every path below `root` but those below `skip`: kind, size, mtime."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (stat.S_IFMT(st.st_mode), st.st_size,
                                                st.st_mtime_ns, st.st_nlink)  # fmt: skip
    return out


def _recover_then_restore(tmp_path: Path, to: Path) -> Run:
    """Recover the forged vault (it is well-formed) and restore everything into `to`."""
    cli = _cli(tmp_path)
    state = tmp_path / "state"
    assert_ok(cli("--state-dir", state, "recover", "--vault", _url(tmp_path / "vault")))
    assert _sessions(state) == [SID]
    run = _restore(cli, state, to)
    assert "Traceback" not in run.out + run.err, run
    return run


@pytest.mark.parametrize("archives", [1, 2], ids=["one-archive", "two-archives"])
def test_a_symlink_in_the_catalog_is_never_written_through(tmp_path: Path, archives: int) -> None:
    """/r/a is a symlink to a directory outside the target, /r/a/evil a file:
    in the same archive, or the file in a later one (the symlink is in place
    by then)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    link, evil = b"/r/a", b"/r/a/evil"
    entries = [_dir(b"/r"), _symlink(link, os.fsencode(outside)),
               _file(evil, _DATA, archive=archives)]  # fmt: skip
    link_member = (_member(link, "symlink"), "symlink", os.fsencode(outside))
    evil_member = (_member(evil, "file"), "file", _DATA)
    tars = [[link_member, evil_member]] if archives == 1 else [[link_member], [evil_member]]
    _forge(tmp_path / "vault", entries, [_tar(t) for t in tars])
    to = tmp_path / "to"
    run = _recover_then_restore(tmp_path, to)
    assert list(outside.iterdir()) == []
    assert run.code != 0 or "warning" in run.err, run
    assert not (to / "r" / "a").is_symlink() or not (to / "r" / "a" / "evil").exists()


def test_a_hard_link_is_never_made_through_a_restored_symlink(tmp_path: Path) -> None:
    """/r/a is a symlink to a directory outside the target; the hard link /r/0
    names /r/a/secret (itself listed, as a hard link, so that the plan takes
    it): linking it must not reach outside/secret."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("not the restore's business\n")
    entries = [
        _dir(b"/r"),
        _hardlink(b"/r/0", b"/r/a/secret"),
        _symlink(b"/r/a", os.fsencode(outside)),
        _hardlink(b"/r/a/secret", b"/r/x"),
        _file(b"/r/x", _DATA),
    ]
    members = [(_member(b"/r/a", "symlink"), "symlink", os.fsencode(outside)),
               (_member(b"/r/x", "file"), "file", _DATA)]  # fmt: skip
    _forge(tmp_path / "vault", entries, [_tar(members)])
    before = _everything_below(outside)
    to = tmp_path / "to"
    _recover_then_restore(tmp_path, to)
    assert _everything_below(outside) == before  # st_nlink of secret included
    inode = (secret.stat().st_dev, secret.stat().st_ino)
    for dirpath, _, files in os.walk(to):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            assert (st.st_dev, st.st_ino) != inode, os.path.join(dirpath, name)


@pytest.mark.parametrize("honest", [False, True], ids=["escape-only", "escape-and-honest"])
@pytest.mark.parametrize("escape", ["../../x", "ABSOLUTE"])
def test_a_tar_member_named_to_escape_writes_nothing_outside(
    tmp_path: Path, escape: str, honest: bool
) -> None:
    """The catalog says /r/x; the archive's member is named `../../x` (or an
    absolute path in tmp), alone or before the honest `r/x`. Member names only
    find members: nothing lands outside the target."""
    absolute = tmp_path / "escaped"
    name = str(absolute) if escape == "ABSOLUTE" else escape
    members = [(name, "file", _DATA)]
    if honest:
        members.append((_member(b"/r/x", "file"), "file", _DATA))
    _forge(tmp_path / "vault", [_dir(b"/r"), _file(b"/r/x", _DATA)], [_tar(members)])
    to = tmp_path / "deep" / "to"  # ../../x from here is tmp_path/x
    to.mkdir(parents=True)
    state = tmp_path / "state"
    cli = _cli(tmp_path)
    assert_ok(cli("--state-dir", state, "recover", "--vault", _url(tmp_path / "vault")))
    before = _everything_below(tmp_path, to, state)
    run = _restore(cli, state, to)
    assert "Traceback" not in run.out + run.err, run
    assert _everything_below(tmp_path, to, state) == before
    assert not (tmp_path / "x").exists() and not absolute.exists()
    assert not (tmp_path.parent.parent / "x").exists()  # from the CLI's working directory
    if honest:
        assert_ok(run)
        assert (to / "r" / "x").read_bytes() == _DATA
    else:
        assert run.code == 1 and "lacks 1 members" in run.err, run
        assert not (to / "r" / "x").exists()


def test_a_catalog_whose_symlinks_name_no_archive_still_restores_them(tmp_path: Path) -> None:
    """Catalogs written before a symlink's entry named its archive (the
    first landing of manifests): restore makes such symlinks from the
    catalog alone."""
    cli = _cli(tmp_path)
    src, state, vault = tmp_path / "src", tmp_path / "state", tmp_path / "vault"
    url = _url(vault)
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("alpha\n")
    os.symlink("d/a.txt", src / "link")
    os.symlink("../link", src / "d" / "back")
    sid = _backup(cli, state, src, url)["session"]
    obj = vault / "catalog" / f"{sid}.mf.zst"
    with open(obj, "rb") as f:
        reader = ManifestReader(f, ["zstd"])
        header, entries = reader.header, list(reader)
    assert sum(e.kind == "symlink" and bool(e.where) for e in entries) == 2
    obj.unlink()
    w = ManifestWriter(obj, header)
    for e in entries:
        w.add(msgspec.structs.replace(e, where=[]) if e.kind == "symlink" else e)
    w.close()
    shutil.rmtree(state)
    assert_ok(cli("--state-dir", tmp_path / "rec", "recover", "--vault", url))
    assert_ok(_restore(cli, tmp_path / "rec", tmp_path / "back"))
    assert describe(_under(tmp_path / "back", src)) == describe(src)
