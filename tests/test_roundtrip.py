"""Backup then restore gives back every entry: bytes, modes, mtimes, link targets."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbak.archive import ArchiveFormat
from eventbak.archive.policy import Policy
from eventbak.config import Compression
from eventbak.pipeline import builder
from eventbak.statedir import members, read_state
from tests.treeutil import backup, describe, restore_all, sha256_of

KiB = 1024
MiB = 1024 * 1024

# -- generated trees ------------------------------------------------------------

_names = st.one_of(
    st.text(alphabet="abcdefgh.-_ é", min_size=1, max_size=12).map(lambda s: s.encode()),
    st.binary(min_size=1, max_size=8).map(
        lambda b: bytes(c for c in b if c not in (0, 47)) or b"x"
    ),  # not UTF-8 in general
    st.integers(min_value=100, max_value=255).map(lambda n: b"L" * n),  # long names
).filter(lambda n: n not in (b".", b".."))

_content = st.one_of(
    st.just(b""),
    st.binary(max_size=3000),
    st.integers(min_value=1, max_value=300 * KiB).map(lambda n: (b"abc %d\n" % n) * (n // 8)),
    st.integers(min_value=1, max_value=200 * KiB).map(os.urandom),
)
_modes = st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o4755, 0o1777 & 0o7777, 0o640])
_mtimes = st.integers(min_value=0, max_value=2**33).flatmap(
    lambda s: st.integers(min_value=0, max_value=999_999_999).map(lambda ns: s * 10**9 + ns)
)

_node = st.deferred(
    lambda: st.one_of(
        st.tuples(st.just("file"), _content, _modes, _mtimes),
        st.tuples(st.just("symlink"), _names, st.none(), st.none()),
        st.tuples(st.just("hardlink"), st.none(), st.none(), st.none()),
        st.tuples(st.just("fifo"), st.none(), st.none(), st.none()),
        st.tuples(
            st.just("dir"),
            st.dictionaries(_names, _node, max_size=5),
            st.sampled_from([0o755, 0o700, 0o750]),
            _mtimes,
        ),
    )
)
_trees = st.dictionaries(_names, _node, min_size=1, max_size=8)


def _build(root: bytes, spec: dict[bytes, tuple[object, ...]], files: list[bytes]) -> None:
    dirs: list[tuple[bytes, int]] = []
    for name, (kind, a, b, c) in spec.items():
        path = os.path.join(root, name)
        if kind == "file":
            with open(path, "wb") as f:
                f.write(a)  # type: ignore[arg-type]
            os.chmod(path, b)  # type: ignore[arg-type]
            os.utime(path, ns=(c, c))  # type: ignore[arg-type]
            files.append(path)
        elif kind == "symlink":
            os.symlink(a, path)  # type: ignore[arg-type]
        elif kind == "hardlink":
            if files:
                os.link(files[len(files) // 2], path)
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            os.mkdir(path)
            _build(path, a, files)  # type: ignore[arg-type]
            dirs.append((path, c))  # type: ignore[arg-type]
            os.chmod(path, b)  # type: ignore[arg-type]
    for path, mtime in dirs:
        os.utime(path, ns=(mtime, mtime))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    tree=_trees,
    archive_size=st.sampled_from([64 * KiB, 200 * KiB, 128 * MiB]),
    compression=st.sampled_from(["auto", "none", "zstd:1"]),
)
def test_generated_trees_round_trip(tree, archive_size: int, compression: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        src = os.path.join(os.fsencode(t), b"src")
        os.mkdir(src)
        _build(src, tree, [])
        os.utime(src, ns=(10**18, 10**18))
        before = describe(src)
        mode, level = [*compression.split(":"), "3"][:2]
        outcome = backup(
            t / "state", t / "vault", [src], archive_size, Compression(mode, int(level))
        )
        assert outcome.state == "completed", outcome.error
        restore_all(t / "state", t / "back")
        assert describe(os.path.join(os.fsencode(t / "back"), src.lstrip(b"/"))) == before
        assert describe(src) == before  # the source was not touched
        for archive in (t / "vault" / "archives").rglob("*.tar*"):
            assert archive.stat().st_size <= archive_size


# -- specific shapes ---------------------------------------------------------------


def _tree(root: Path, n_files: int, size: int) -> None:
    for i in range(n_files):
        d = root / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_bytes((b"line %d of file %d\n" % (i, i)) * (size // 20))
        (d / f"r{i:04d}.bin").write_bytes(os.urandom(size // 3))


def _restored(tmp: Path, src: Path) -> Path:
    return tmp / "back" / str(src).lstrip("/")


def test_many_archives_each_within_the_limit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, 120, 30 * KiB)
    limit = 96 * KiB
    outcome = backup(tmp_path / "state", tmp_path / "vault", [src], limit)
    assert outcome.state == "completed"
    archives = sorted((tmp_path / "vault" / "archives").rglob("*.tar.zst"))
    assert len(archives) > 10
    assert all(a.stat().st_size <= limit for a in archives)
    restore_all(tmp_path / "state", tmp_path / "back")
    assert describe(_restored(tmp_path, src)) == describe(src)
    assert not any((tmp_path / "state" / "staging").iterdir())


@pytest.mark.parametrize("compression", ["auto", "none", "zstd:19"])
def test_file_bigger_than_archive_is_split_and_joined(tmp_path: Path, compression: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_bytes(b"x" * 1000)
    (src / "big.bin").write_bytes(os.urandom(3 * MiB + 12345))
    (src / "big.txt").write_bytes(b"compressible text\n" * 150_000)
    limit = 512 * KiB
    mode, level = [*compression.split(":"), "3"][:2]
    outcome = backup(
        tmp_path / "state", tmp_path / "vault", [src], limit, Compression(mode, int(level))
    )
    assert outcome.state == "completed"
    state, _ = read_state(tmp_path / "state")
    segments = [
        m
        for a in state.archives.values()
        for m in members(tmp_path / "state", a)
        if m.path.endswith(b"big.bin")
    ]
    assert len(segments) >= 6
    assert sum(m.length for m in segments) == 3 * MiB + 12345
    for a in (tmp_path / "vault" / "archives").rglob("*.tar*"):
        assert a.stat().st_size <= limit
    restore_all(tmp_path / "state", tmp_path / "back")
    assert describe(_restored(tmp_path, src)) == describe(src)


def test_long_paths_and_non_utf8_names(tmp_path: Path) -> None:
    src = os.fsencode(tmp_path / "src")
    deep = src
    for i in range(40):
        deep = os.path.join(deep, b"directory-with-a-long-name-%02d" % i)
    os.makedirs(deep)
    assert len(deep) > 1000
    for name in (b"caf\xe9", b"\xff\xfe", "日本語".encode(), b"n" * 255):
        with open(os.path.join(deep, name), "wb") as f:
            f.write(name * 3)
        os.symlink(b"../" * 3 + name, os.path.join(src, name))
    outcome = backup(tmp_path / "state", tmp_path / "vault", [src], 64 * KiB)
    assert outcome.state == "completed"
    restore_all(tmp_path / "state", tmp_path / "back")
    assert describe(os.path.join(os.fsencode(tmp_path / "back"), src.lstrip(b"/"))) == describe(src)


def test_special_files_are_skipped_and_never_opened(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")  # opening it for reading would block forever
    (src / "a.txt").write_text("a")
    outcome = backup(tmp_path / "state", tmp_path / "vault", [src])
    assert outcome.state == "completed"
    assert list(outcome.session.skipped.items()) == [(os.fsencode(src / "fifo"), "fifo")]


def test_archives_restore_with_zstd_and_tar_alone(tmp_path: Path) -> None:
    if not (shutil.which("zstd") and shutil.which("tar")):
        pytest.skip("zstd and tar are installed by scripts/test")
    src = tmp_path / "src"
    _tree(src, 20, 40 * KiB)
    (src / "big.bin").write_bytes(os.urandom(400 * KiB))
    os.symlink("d0", src / "link")
    backup(tmp_path / "state", tmp_path / "vault", [src], 128 * KiB)
    out = tmp_path / "manual"
    out.mkdir()
    for a in sorted((tmp_path / "vault" / "archives").rglob("*.tar.zst")):
        subprocess.run(f"zstd -dc '{a}' | tar xf - -C '{out}'", shell=True, check=True)
    tree = out / str(src).lstrip("/")
    parts = sorted(tree.glob("big.bin.eventbak-seg-*"))
    assert len(parts) >= 3
    (tree / "big.bin").write_bytes(b"".join(p.read_bytes() for p in parts))
    for p in parts:
        p.unlink()
    assert describe(tree, mtimes=False) == describe(src, mtimes=False)


# -- files that change under the scanner ---------------------------------------


def _pack_one(tmp_path: Path, path: Path, monkeypatch: pytest.MonkeyPatch | None = None):
    from eventbak.pipeline.scanner import walk

    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    packer = builder.Packer(
        "s", staging, 64 * MiB, ArchiveFormat(Compression("auto")), Policy(Compression("auto"))
    )
    entries = list(walk([os.fsencode(path)]))
    return packer, entries


def test_file_that_vanishes_before_it_is_read_is_skipped(tmp_path: Path) -> None:
    f = tmp_path / "gone.txt"
    f.write_text("soon gone")
    packer, entries = _pack_one(tmp_path, f)
    f.unlink()  # between the scan and the read, as a real concurrent delete would
    outputs = packer.pack_all(entries) + packer.finish()
    skipped = [o for o in outputs if type(o).__name__ == "EntrySkipped"]
    assert [(o.path, o.reason) for o in skipped] == [(os.fsencode(f), "vanished")]


def test_file_that_shrinks_while_read_is_recorded_and_archive_stays_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "shrinks.bin"
    f.write_bytes(os.urandom(3 * builder.CHUNK))
    packer, entries = _pack_one(tmp_path, f)
    real_read = os.read
    calls = []

    # The truncation is real (on disk); only its timing is forced: right after
    # the first chunk is read, as a concurrent writer could do at any moment.
    def read_then_truncate(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if not calls:
            calls.append(n)
            os.truncate(f, builder.CHUNK + 10)
        return data

    monkeypatch.setattr(builder.os, "read", read_then_truncate)
    outputs = packer.pack_all(entries) + packer.finish()
    monkeypatch.undo()
    changed = [o for o in outputs if type(o).__name__ == "EntryChanged"]
    assert len(changed) == 1 and changed[0].path == os.fsencode(f)
    sealed = [o for o in outputs if isinstance(o, builder.Sealed)]
    assert len(sealed) == 1
    (member,) = [m for m in sealed[0].event.members if m.kind == "file"]
    assert member.changed and member.length == 3 * builder.CHUNK
    # the archive is a valid tar whose member has the committed size
    out = subprocess.run(
        f"zstd -dc '{sealed[0].path}' | tar tvf -",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(3 * builder.CHUNK) in out


def test_file_that_grows_while_read_is_cut_at_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "grows.log"
    f.write_bytes(b"a" * 100)
    packer, entries = _pack_one(tmp_path, f)
    real_fstat = os.fstat
    seen = []

    def fstat_then_append(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        if not seen and stat.S_ISREG(result.st_mode):
            seen.append(fd)
            with open(f, "ab") as w:  # a real append between open and read
                w.write(b"b" * 50)
        return result

    monkeypatch.setattr(builder.os, "fstat", fstat_then_append)
    outputs = packer.pack_all(entries) + packer.finish()
    monkeypatch.undo()
    changed = [o for o in outputs if type(o).__name__ == "EntryChanged"]
    assert len(changed) == 1
    sealed = next(o for o in outputs if isinstance(o, builder.Sealed))
    (member,) = [m for m in sealed.event.members if m.kind == "file"]
    assert member.length == 100 and member.changed
    assert sha256_of(os.fsencode(f)) != ""


@pytest.mark.parametrize("damaged_index", [0, 3])
def test_damaged_archive_is_left_out_and_the_others_restore(
    tmp_path: Path, damaged_index: int
) -> None:
    """Each archive is read once, its sha256 checked as it streams, and its
    members written under temporary names that become final only once it
    verified: a flipped byte in the vault fails that archive with a one-line
    error naming it, none of its members is left (not even under a temporary
    name, nor a split file with a segment in it); every other archive is
    restored intact, and the exit code says the restore is incomplete."""
    src = tmp_path / "src"
    _tree(src, 40, 30 * KiB)
    (src / "movie.mp4").write_bytes(os.urandom(200 * KiB))
    backup(tmp_path / "state", tmp_path / "vault", [src], 96 * KiB)
    state, _ = read_state(tmp_path / "state")
    archives = sorted(state.archives.values(), key=lambda a: a.id)
    assert len(archives) > damaged_index + 2
    bad = archives[damaged_index]
    stored = tmp_path / "vault" / bad.key
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))
    to = tmp_path / "back"
    cmd = [sys.executable, "-m", "eventbak", "--state-dir", tmp_path / "state"]
    run = subprocess.run(
        [*cmd, "restore", "--to", to],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2, run.stderr
    assert bad.id in lines[0] and "damaged" in lines[0]
    assert lines[1] == "eventbak: error: 1 archive could not be restored (its files are left out)"
    in_bad = {m.path for m in members(tmp_path / "state", bad)}
    checked = 0
    for a in archives:
        for m in members(tmp_path / "state", a):
            if m.kind != "file":
                continue
            dest = os.fsencode(to) + m.path
            if m.path in in_bad:
                assert not os.path.lexists(dest)
            elif not m.segmented:
                assert sha256_of(dest) == sha256_of(m.path)
                checked += a.id > bad.id
    assert checked  # archives after the damaged one were restored too
    left = [n for _, dirs, names in os.walk(to) for n in dirs + names if ".eventbak-" in n]
    assert left == []
