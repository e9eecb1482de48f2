"""The archive writer: stored (raw-block) zstd frames, the size limit with
mixed compression classes and with encryption on, and write errors from the
sink's thread."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pyrage
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbak import archive as ar
from eventbak.archive import age
from eventbak.archive.policy import Policy
from eventbak.config import Compression
from eventbak.pipeline import builder
from eventbak.pipeline.scanner import walk

KiB = 1024
MiB = 1024 * 1024


SECRET, RECIPIENT = age.generate()
AUTO = ar.ArchiveFormat(Compression("auto"))
FORMATS = {
    "auto": AUTO,
    "auto+age": ar.ArchiveFormat(Compression("auto"), (RECIPIENT,)),
    "none+age": ar.ArchiveFormat(Compression("none"), (RECIPIENT,)),
    "none": ar.ArchiveFormat(Compression("none")),
}


def _decode_all(raw: bytes, fmt: ar.ArchiveFormat = AUTO) -> bytes:
    if "age" in fmt.layers:
        raw = pyrage.decrypt(raw, [pyrage.x25519.Identity.from_str(SECRET)])
    if "zstd" not in fmt.layers:
        return raw
    return (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
    )


def _packer(staging: Path, limit: int, fmt: ar.ArchiveFormat = AUTO) -> builder.Packer:
    return builder.Packer("s", staging, limit, fmt, Policy(fmt.compression))


def test_stored_frames_are_raw_blocks_every_decoder_reads(tmp_path: Path) -> None:
    # sizes around the 128 KiB block, and flushes of both kinds between them
    sizes = [0, 1, 511, 512, 128 * KiB - 1, 128 * KiB, 128 * KiB + 1, MiB + 5, 3, 300_000]
    chunks = [os.urandom(n) for n in sizes]
    path = tmp_path / "a.zst"
    w = ar.ArchiveWriter(path, 64 * MiB, AUTO)
    w.select(False)  # movie.mp4
    for i, c in enumerate(chunks):
        w.write(c)
        if i % 3 == 2:
            w.tighten()  # FLUSH_BLOCK: the partial block goes out
    w.select(True)  # notes.txt: the stored frame ends, a level-3 frame starts
    w.write(b"text " * 1000)
    w.select(False)  # photo.JPG
    w.write(b"tail")
    size, raw_size, sha = w.seal()
    data = path.read_bytes()
    expected = b"".join(chunks) + b"text " * 1000 + b"tail" + ar.END_OF_ARCHIVE
    assert raw_size == len(expected)
    assert size == len(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert _decode_all(data) == expected
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        assert out.stdout == expected
    # stored means not compressed: the media bytes appear verbatim in the file
    assert chunks[7][:4096] in data and chunks[9][-4096:] in data


def test_stored_frame_overhead_is_three_bytes_per_block(tmp_path: Path) -> None:
    n = 5 * 128 * KiB + 100
    path = tmp_path / "a.zst"
    w = ar.ArchiveWriter(path, 64 * MiB, AUTO)
    w.select(False)
    w.write(os.urandom(n))
    w.seal()  # adds the end of archive (1024 bytes) to the same frame
    blocks = -(-(n + 1024) // (128 * KiB))
    # frame header 6, a block header per block, the empty last block 3
    assert path.stat().st_size == (n + 1024) + 6 + 3 * blocks + 3


_member = st.tuples(
    st.sampled_from([".jpg", ".txt", ".mp4", ".c", ".zip"]),
    st.integers(min_value=0, max_value=300 * KiB),
    st.booleans(),  # compressible or random
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.lists(_member, min_size=1, max_size=40),
    limit=st.sampled_from([64 * KiB, 100 * KiB, 300 * KiB, MiB]),
    fmt=st.sampled_from(sorted(FORMATS)),
)
def test_every_stack_stays_under_the_limit_and_fills_archives(
    members: list[tuple[str, int, bool]], limit: int, fmt: str
) -> None:
    stack = FORMATS[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        src = t / "src"
        src.mkdir()
        for i, (suffix, n, text) in enumerate(members):
            body = (b"line %d of some text\n" % i) * (n // 20 + 1) if text else os.urandom(n)
            (src / f"f{i:03d}{suffix}").write_bytes(body[:n])
        staging = t / "staging"
        staging.mkdir()
        packer = _packer(staging, limit, stack)
        outputs = packer.pack(list(walk([os.fsencode(src)]))) + packer.finish()
        sealed = [o for o in outputs if isinstance(o, builder.Sealed)]
        got: dict[str, bytes] = {}
        for i, s in enumerate(sealed):
            size = s.path.stat().st_size
            assert size == s.event.size <= limit
            assert s.path.name.endswith(stack.suffix) and s.event.layers == stack.layers
            data = s.path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == s.event.sha256
            with tarfile.open(fileobj=io.BytesIO(_decode_all(data, stack))) as tf:
                assert tf.pax_headers["EVENTBAK.archive"] == s.event.archive
                for m in tf.getmembers():
                    f = tf.extractfile(m)
                    if f is not None:
                        got[m.name] = got.get(m.name, b"") + f.read()
            if i + 1 < len(sealed):
                # sealed only when the next member did not fit: full to within
                # that member's worst case and the reserves
                nxt = sealed[i + 1].event.members[0]
                need = ar.padded(nxt.length) + 3 * ar.BLOCK
                # its worst case through the stack, the reserves and age's grease
                slack = stack.fresh_size(need) + 2 * KiB
                if nxt.length == nxt.size:  # not a segment (those are cut to fit)
                    assert size >= limit - slack, (size, limit, slack)
        joined: dict[str, bytes] = {}
        for name in sorted(got):
            base = name.split(ar.SEGMENT_MARK.decode())[0]
            joined[base] = joined.get(base, b"") + got[name]
        for p in src.iterdir():
            assert joined[str(p).lstrip("/")] == p.read_bytes()


def test_write_error_in_the_sink_thread_surfaces_and_abort_cleans_up(tmp_path: Path) -> None:
    # RLIMIT_FSIZE in a child process: the sink's write fails with EFBIG, seen
    # at a later write (8 MiB written) or at the seal (600 KiB, one batch)
    script = f"""
import os, resource, sys, threading
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
from pathlib import Path
from eventbak import archive as ar
from eventbak.config import Compression
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
for n, chunk in ((8, 1 << 20), (1, 600 * 1024)):
    path = Path({str(tmp_path)!r}) / f"a{{n}}.zst"
    w = ar.ArchiveWriter(path, 64 << 20, ar.ArchiveFormat(Compression("auto")))
    w.select(False)
    where = "none"
    try:
        for _ in range(n):
            where = "write"
            w.write(os.urandom(chunk))
        where = "seal"
        w.seal()
    except OSError as exc:
        print("error", exc.errno, "at", where)
        w.abort()
    print("exists", path.exists(), "threads", threading.active_count())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "error 27 at write",  # EFBIG
        "exists False threads 1",
        "error 27 at seal",
        "exists False threads 1",
    ], out.stdout


def test_seal_and_abort_end_the_sink_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    w = ar.ArchiveWriter(tmp_path / "a.zst", MiB, FORMATS["auto+age"])
    w.write(b"x" * 1000)
    w.seal()
    w2 = ar.ArchiveWriter(tmp_path / "b.zst", MiB, FORMATS["none+age"])
    w2.write(b"y" * 512)
    w2.abort()
    assert threading.active_count() == before
    assert not (tmp_path / "b.zst").exists()


@pytest.mark.parametrize("compression", ["auto", "none", "zstd:1"])
def test_many_tiny_writes_are_gathered_in_order(tmp_path: Path, compression: str) -> None:
    mode, level = [*compression.split(":"), "3"][:2]
    fmt = ar.ArchiveFormat(Compression(mode, int(level)))
    w = ar.ArchiveWriter(tmp_path / "a", 64 * MiB, fmt)
    parts = [os.urandom(i % 700) for i in range(3000)]
    for i, p in enumerate(parts):
        w.select(not (i // 500) % 2)
        w.write(p)
    w.seal()
    data = (tmp_path / "a").read_bytes()
    plain = _decode_all(data, fmt)
    assert plain == b"".join(parts) + ar.END_OF_ARCHIVE


@pytest.mark.parametrize("fmt", ["auto", "auto+age"])
def test_limit_holds_while_zstd_workers_hold_megabytes(tmp_path: Path, fmt: str) -> None:
    # Large archives: the level-3 frame's worker threads hold many MiB of
    # input; room() counts them from zstd's frame progression, not by waiting.
    src = tmp_path / "src"
    src.mkdir()
    words = [os.urandom(3).hex().encode() for _ in range(4000)]
    rnd = random.Random(7)
    for i in range(40):
        n = rnd.randrange(200 * KiB, 3 * MiB)
        if i % 7 == 3:
            (src / f"f{i:02d}.mp4").write_bytes(os.urandom(n))
        else:
            body = b" ".join(rnd.choice(words) for _ in range(n // 6))
            (src / f"f{i:02d}.txt").write_bytes(body[:n])
    limit = 6 * MiB
    staging = tmp_path / "staging"
    staging.mkdir()
    packer = _packer(staging, limit, FORMATS[fmt])
    outputs = packer.pack(list(walk([os.fsencode(src)]))) + packer.finish()
    sealed = [o for o in outputs if isinstance(o, builder.Sealed)]
    assert len(sealed) >= 4
    for s in sealed:
        assert s.path.stat().st_size <= limit
    # all but the last are nearly full (within one member's worst case)
    assert all(s.path.stat().st_size >= limit - 3 * MiB - 8 * KiB for s in sealed[:-1])
    restored = b"".join(_decode_all(s.path.read_bytes(), FORMATS[fmt]) for s in sealed)
    with tarfile.open(fileobj=io.BytesIO(restored), ignore_zeros=True) as tf:
        got: dict[str, bytes] = {}
        for m in tf.getmembers():
            f = tf.extractfile(m)
            if f is not None:
                base = m.name.split(ar.SEGMENT_MARK.decode())[0]
                got[base] = got.get(base, b"") + f.read()
    for p in src.iterdir():
        assert got[str(p).lstrip("/")] == p.read_bytes()


@pytest.mark.parametrize("end", ["seal", "abort"])
def test_an_archive_writer_frees_its_layers_without_the_cycle_collector(
    tmp_path: Path, end: str
) -> None:
    # zstd's worker buffers are tens of MiB: one set per archive kept until
    # the cycle collector runs made a backup's peak RSS 50 % higher
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        w = ar.ArchiveWriter(tmp_path / "a", 64 * MiB, FORMATS["auto+age"])
        w.write(os.urandom(300 * KiB))
        layers = [weakref.ref(layer) for layer in w._layers]
        w.seal() if end == "seal" else w.abort()
        del w
        assert [r() for r in layers] == [None, None]
    finally:
        gc.enable()
