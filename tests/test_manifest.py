"""catalog/manifest.py: manifests round trip (compressed, encrypted), stay
flat in memory, and a manifest read back as untrusted input is checked."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from pathlib import Path

import msgspec
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbak.archive.age import generate, load_identities
from eventbak.catalog.manifest import (
    Location,
    ManifestEntry,
    ManifestError,
    ManifestReader,
    ManifestWriter,
    header_for,
    walk_key,
)

SECRET, RECIPIENT = generate()


def _entries(n: int) -> list[ManifestEntry]:
    out = [ManifestEntry(b"/data", "dir", 0o755, 1)]
    for i in range(n):
        out.append(
            ManifestEntry(
                b"/data/f%07d" % i,
                "file",
                0o644,
                10**18 + i,
                10**18 + i,
                1000 + i,
                i,
                1000,
                1000,
                b"",
                os.urandom(32),
                i % 2 == 0,
                [Location("S-000001", 0, i)],
            )
        )
    return out


def _write(path: Path, entries: list[ManifestEntry], recipients: tuple[str, ...] = ()) -> None:
    w = ManifestWriter(path, header_for("S", "home", [b"/data"]), recipients)
    for e in entries:
        w.add(e)
    size, _ = w.close()
    assert size == path.stat().st_size


def _identities(tmp: Path):  # type: ignore[no-untyped-def]
    p = tmp / "id.txt"
    p.write_text(SECRET + "\n")
    p.chmod(0o600)
    return load_identities(p)[0]


@pytest.mark.parametrize("encrypted", [False, True])
def test_round_trip_compressed_and_encrypted(tmp_path: Path, encrypted: bool) -> None:
    entries = _entries(5000)
    path = tmp_path / "m"
    _write(path, entries, (RECIPIENT,) if encrypted else ())
    raw = path.read_bytes()
    assert raw.startswith(b"age-encryption.org/v1\n") == encrypted
    layers = ["zstd", "age"] if encrypted else ["zstd"]
    with open(path, "rb") as f:
        r = ManifestReader(f, layers, _identities(tmp_path) if encrypted else None)
        assert r.header.session == "S" and r.header.paths == [b"/data"]
        assert list(r) == entries


def test_the_stream_is_zstd_of_length_prefixed_msgpack(tmp_path: Path) -> None:
    # what docs/formats.md specifies, read without the reader
    path = tmp_path / "m"
    _write(path, _entries(3))
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes())).read()
    records, i = [], 0
    while i < len(plain):
        (n,) = struct.unpack_from("<I", plain, i)
        records.append(plain[i + 4 : i + 4 + n])
        i += 4 + n
    assert msgspec.msgpack.decode(records[0])["format"] == 1
    assert [msgspec.msgpack.decode(r)[0] for r in records[1:5]] == [
        b"/data", b"/data/f0000000", b"/data/f0000001", b"/data/f0000002"
    ]  # fmt: skip
    assert records[5] == b"" and msgspec.msgpack.decode(records[6]) == {"count": 4}


@pytest.mark.slow
def test_memory_stays_flat_in_the_number_of_entries(tmp_path: Path) -> None:
    def peak(n: int) -> int:
        path = tmp_path / f"m{n}"
        tracemalloc.start()
        w = ManifestWriter(path, header_for("S", "home", [b"/d"]), (RECIPIENT,))
        for i in range(n):
            w.add(ManifestEntry(b"/d/%09d" % i, "file", 0o644, i, size=i))
        w.close()
        with open(path, "rb") as f:
            for _ in ManifestReader(f, ["zstd", "age"], _identities(tmp_path)):
                pass
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    # 300,000 entries: ~10 MB of records, ~45 MB as Python objects; the
    # peak is the fixed buffers only (record batches, the sink's and age's
    # pipes: a few MiB whatever the count)
    assert peak(300_000) < 7 * 1024 * 1024


def test_writer_refuses_entries_out_of_walk_order_or_unsafe(tmp_path: Path) -> None:
    w = ManifestWriter(tmp_path / "m", header_for("S", "home", [b"/d"]))
    w.add(ManifestEntry(b"/d/b", "file", 0o644, 0))
    for bad in (b"/d/a", b"/d/b", b"d/c", b"/d/../e", b"/d//f", b"/d/\0g"):
        with pytest.raises(ValueError):
            w.add(ManifestEntry(bad, "file", 0o644, 0))
    w.abort()
    assert not (tmp_path / "m").exists()


def _forge(path: Path, records: list[bytes], end: bool = True, trailer: int | None = None) -> None:
    """A hand-made manifest, as an attacker with write access to the vault would make one."""
    enc = msgspec.msgpack.encode
    body = [enc({"format": 1, "session": "S", "dataset": "x", "paths": [b"/"]}), *records]
    data = b"".join(struct.pack("<I", len(r)) + r for r in body)
    if end:
        data += struct.pack("<I", 0)
        t = enc({"count": len(records) if trailer is None else trailer})
        data += struct.pack("<I", len(t)) + t
    path.write_bytes(zstandard.ZstdCompressor().compress(data))


def _entry(path: bytes) -> bytes:
    return msgspec.msgpack.encode(ManifestEntry(path, "file", 0o644, 0))


@pytest.mark.parametrize(
    ("records", "end", "trailer", "says"),
    [
        ([_entry(b"/etc/../root/x")], True, None, "'..' component"),
        ([_entry(b"relative")], True, None, "not absolute"),
        ([_entry(b"/b"), _entry(b"/a")], True, None, "walk order"),
        ([_entry(b"/a")], False, None, "no end mark"),
        ([_entry(b"/a")], True, 5, "its trailer says 5"),
        ([b"\x93\x01\x02\x03"], True, None, "bad entry 0"),
    ],
)
def test_reader_refuses_a_malicious_or_damaged_manifest(
    tmp_path: Path, records: list[bytes], end: bool, trailer: int | None, says: str
) -> None:
    path = tmp_path / "m"
    _forge(path, records, end, trailer)
    with open(path, "rb") as f, pytest.raises(ManifestError, match=says):
        list(ManifestReader(f, ["zstd"]))


def test_cut_or_flipped_encrypted_manifest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _write(path, _entries(3000), (RECIPIENT,))
    raw = path.read_bytes()
    for bad in (raw[: len(raw) // 2], raw[:300] + bytes([raw[300] ^ 1]) + raw[301:]):
        path.write_bytes(bad)
        with open(path, "rb") as f, pytest.raises(ManifestError):
            list(ManifestReader(f, ["zstd", "age"], _identities(tmp_path)))


_paths = st.lists(
    st.lists(st.binary(min_size=1, max_size=6).filter(
        lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
    ), min_size=1, max_size=4).map(lambda parts: b"/" + b"/".join(parts)),
    max_size=60, unique=True,
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(paths=_paths)
def test_any_set_of_paths_round_trips_in_walk_order(paths: list[bytes]) -> None:
    import tempfile

    entries = [ManifestEntry(p, "file", 0o600, 1) for p in sorted(paths, key=walk_key)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m"
        _write(path, entries)
        with open(path, "rb") as f:
            assert list(ManifestReader(f, ["zstd"])) == entries


def test_a_sessions_manifest_from_the_log_is_the_tree_and_round_trips(tmp_path: Path) -> None:
    """Split files (segments over archives), hard links, symlinks, empty files:
    the manifest built from the log lists the tree; written and read back, the same."""
    from eventbak.catalog.build import session_entries
    from eventbak.statedir import read_state
    from tests.treeutil import backup, check_manifest_is_the_tree

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(700 * 1024))
    (src / "d" / "a.txt").write_bytes(b"a" * 5000)
    (src / "d" / "empty").write_bytes(b"")
    os.link(src / "d" / "a.txt", src / "d" / "hard")
    os.symlink("a.txt", src / "d" / "link")
    outcome = backup(tmp_path / "state", tmp_path / "vault", [src], 128 * 1024)
    assert outcome.state == "completed"
    assert check_manifest_is_the_tree(tmp_path / "state", outcome.session.id, [src]) == 7
    state, _ = read_state(tmp_path / "state")
    entries = list(session_entries(state, tmp_path / "state", outcome.session.id))
    big = next(e for e in entries if e.path.endswith(b"/big.bin"))
    assert len({loc.archive for loc in big.where}) >= 5  # split over archives
    _write(tmp_path / "m", entries, (RECIPIENT,))
    with open(tmp_path / "m", "rb") as f:
        assert list(ManifestReader(f, ["zstd", "age"], _identities(tmp_path))) == entries


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_completed_session_stores_its_manifest_in_the_vault(
    tmp_path: Path, encrypted: bool
) -> None:
    """Before SessionCompleted, the manifest goes into the vault's catalog/
    and is recorded (CatalogStored); read back from the vault it lists the
    session's entries."""
    import subprocess
    import sys

    from eventbak.catalog.build import session_entries
    from eventbak.statedir import read_state

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(b"abc" * 1000)
    (src / "b.bin").write_bytes(os.urandom(300 * 1024))
    extra = ["--recipient", RECIPIENT] if encrypted else []
    done = subprocess.run(
        [sys.executable, "-m", "eventbak", "--state-dir", str(tmp_path / "state"), "backup",
         str(src), "--vault", f"file://{tmp_path / 'vault'}", "--archive-size", "128KiB",
         *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    state, image = read_state(tmp_path / "state")
    (s,) = state.sessions.values()
    assert s.state == "completed" and s.catalog is not None
    kinds = [type(r.event).__name__ for r in image.records]
    assert kinds.index("CatalogStored") == kinds.index("SessionCompleted") - 1
    suffix = ".mf.zst.age" if encrypted else ".mf.zst"
    assert s.catalog.key == f"catalog/{s.id}{suffix}"
    stored = tmp_path / "vault" / s.catalog.key
    assert stored.stat().st_size == s.catalog.size
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
    with open(stored, "rb") as f:
        r = ManifestReader(f, s.catalog.layers, _identities(tmp_path) if encrypted else None)
        got = list(r)
    assert got == list(session_entries(state, tmp_path / "state", s.id))
    assert len(got) == s.catalog.entries == 4
    assert not list((tmp_path / "state" / "staging").iterdir())  # nothing left behind
