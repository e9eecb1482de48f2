"""The compression policy: patterns, modes, magic bytes of compressed formats
(and no false positives on text), the tiny-file rule and the probe."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import random
import struct
import zipfile
from collections.abc import Sequence

import pytest
import zstandard

from eventbak.archive.policy import (
    HEAD,
    SAMPLE,
    STORE_RATIO,
    STORE_RATIO_MEDIA,
    TINY,
    Policy,
    check_patterns,
    is_media,
)
from eventbak.config import Compression

KiB = 1024
MiB = 1024 * KiB
AUTO = Policy(Compression("auto"))


def decide(name: str | bytes, data: bytes, policy: Policy = AUTO, size: int | None = None) -> bool:
    """What the packer asks: the file's absolute path, its head, its size."""
    path = name if isinstance(name, bytes) else ("/src/" + name).encode()
    return policy.decide(path, data[:HEAD], len(data) if size is None else size)


def noise(n: int, seed: int = 1) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


_WORDS = [
    "the",
    "archive",
    "holds",
    "each",
    "file",
    "once",
    "and",
    "a",
    "session",
    "resumes",
    "where",
    "it",
    "stopped",
    "so",
    "backup",
    "vault",
    "restore",
    "member",
    "segment",
    "frame",
    "block",
    "index",
    "cursor",
    "policy",
    "zstd",
    "packer",
    "scanner",
    "event",
    "state",
    "directory",
    "staging",
    "upload",
    "part",
    "checksum",
    "size",
]


def text(n: int, seed: int = 1) -> bytes:
    """English-like ASCII prose, about n bytes."""
    rng = random.Random(seed)
    lines = []
    total = 0
    while total < n:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))).capitalize() + ".\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:n]


def utf8_text(n: int) -> bytes:
    """Non-ASCII prose (German and Japanese), so the probe has to run."""
    rng = random.Random(7)
    words = [
        "Größe",
        "Straße",
        "Übermaß",
        "bäckt",
        "schön",
        "バックアップ",
        "圧縮",
        "ファイル",
        "は",
    ]
    out = " ".join(rng.choice(words) for _ in range(n)).encode()
    return out[:n]


# -- formats -----------------------------------------------------------------


def mp3_frames(count: int) -> bytes:
    """MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no padding: 417-byte frames."""
    return b"".join(b"\xff\xfb\x90\x00" + noise(413, i) for i in range(count))


def adts_frames(count: int) -> bytes:
    """AAC LC in ADTS, 44.1 kHz stereo, 400-byte frames."""
    n = 400
    header = bytes(
        [0xFF, 0xF1, 0x50, 0x80 | (n >> 11), (n >> 3) & 0xFF, ((n & 7) << 5) | 0x1F, 0xFC]
    )
    return b"".join(header + noise(n - 7, i) for i in range(count))


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    return box(b"ftyp", major + b"\0\0\0\0" + b"".join(compatible))


#: (name, file name suffix, the format's first bytes); what follows is random
FORMATS: list[tuple[str, str, bytes]] = [
    ("jpeg", ".jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
    ("jpeg-exif", ".jpeg", b"\xff\xd8\xff\xe1\x1c\x45Exif\x00\x00MM\x00\x2a"),
    ("png", ".png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06"),
    ("gif", ".gif", b"GIF89a\x40\x01\xf0\x00\xf7\x00\x00"),
    ("gif87", ".gif", b"GIF87a\x40\x01\xf0\x00\x80\x00\x00"),
    ("webp", ".webp", b"RIFF\x24\x80\x00\x00WEBPVP8 \x18\x80\x00\x00"),
    ("webp-lossless", ".webp", b"RIFF\x24\x80\x00\x00WEBPVP8L\x18\x80\x00\x00"),
    ("heic", ".heic", ftyp(b"heic", b"mif1", b"heic")),
    ("heif", ".heif", ftyp(b"mif1", b"mif1", b"heic")),
    ("avif", ".avif", ftyp(b"avif", b"avif", b"mif1", b"miaf")),
    ("mp4", ".mp4", ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41")),
    ("mov", ".mov", ftyp(b"qt  ", b"qt  ")),
    ("m4a", ".m4a", ftyp(b"M4A ", b"M4A ", b"mp42", b"isom")),
    ("3gp", ".3gp", ftyp(b"3gp4", b"3gp4")),
    ("quicktime-old", ".mov", box(b"wide", b"") + b"\x00\x10\x00\x00mdat"),
    ("jpeg2000", ".jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + ftyp(b"jp2 ", b"jp2 ")),
    ("jpegxl", ".jxl", b"\x00\x00\x00\x0cJXL \r\n\x87\n" + ftyp(b"jxl ", b"jxl ")),
    ("mkv", ".mkv", b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x88matroska"),
    ("webm", ".webm", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm"),
    ("mp3-id3", ".mp3", b"ID3\x04\x00\x00\x00\x00\x02\x01" + b"\0" * 257 + mp3_frames(2)),
    ("mp3-id3v23", ".mp3", b"ID3\x03\x00\x40\x00\x00\x00\x0a" + b"\0" * 10 + mp3_frames(2)),
    ("mp3-frames", ".mp3", mp3_frames(3)),
    ("aac-adts", ".aac", adts_frames(3)),
    ("flac", ".flac", b"fLaC\x00\x00\x00\x22\x10\x00\x10\x00" + noise(30)),
    ("flac-last", ".flac", b"fLaC\x80\x00\x00\x22\x12\x00\x12\x00" + noise(30)),
    ("ogg", ".ogg", b"OggS\x00\x02" + b"\0" * 8 + b"\x01\x02\x03\x04" + b"\0" * 8 + b"\x01\x13"),
    ("opus", ".opus", b"OggS\x00\x02" + b"\0" * 8 + b"\x4a\x1b\x00\x00" + b"\0" * 8 + b"OpusHead"),
    ("zip", ".zip", zip_bytes({"a.bin": noise(3000)})[:200]),
    ("docx", ".docx", zip_bytes({"[Content_Types].xml": b"<?xml?>" * 40})[:100]),
    ("zip-stored", ".jar", zip_bytes({"META-INF/MANIFEST.MF": b"x"}, zipfile.ZIP_STORED)[:60]),
    ("zip-empty", ".zip", zip_bytes({})),
    ("gzip", ".gz", gzip.compress(noise(3000))[:100]),
    ("gzip-name", ".tgz", b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x03backup.tar\x00"),
    ("xz", ".xz", lzma.compress(noise(3000))[:100]),
    ("zstd", ".zst", zstandard.ZstdCompressor().compress(noise(3000))[:100]),
    ("bzip2", ".bz2", bz2.compress(noise(3000))[:100]),
    ("bzip2-empty", ".bz2", bz2.compress(b"")),
    ("7z", ".7z", b"7z\xbc\xaf\x27\x1c\x00\x04\x8d\x9b\xd5\x0f"),
    ("rar4", ".rar", b"Rar!\x1a\x07\x00\xcf\x90\x73\x00\x00\x0d\x00"),
    ("rar5", ".rar", b"Rar!\x1a\x07\x01\x00\x33\x92\xb5\xe5\x0a\x01\x05\x06"),
    ("lz4", ".lz4", b"\x04\x22\x4d\x18\x64\x40\xa7"),
    ("lz4-legacy", ".lz4", b"\x02\x21\x4c\x18\x00\x00\x80\x00"),
    ("lzip", ".lz", b"LZIP\x01\x0c"),
    ("woff2", ".woff2", b"wOF2\x00\x01\x00\x00\x00\x00\x88\x9c"),
    ("woff", ".woff", b"wOFFOTTO\x00\x00\x88\x9c"),
]
FORMAT_IDS = [f[0] for f in FORMATS]


@pytest.mark.parametrize(("fmt", "suffix", "header"), FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("total", [0, 2 * KiB, 100 * KiB])
def test_compressed_format_is_stored(fmt: str, suffix: str, header: bytes, total: int) -> None:
    # below TINY only the magic can store it (random bytes alone are compressed)
    data = header + noise(max(0, total - len(header)))
    assert not decide("file" + suffix, data)
    assert not decide("file.dat", data)
    assert not decide("no-suffix", data)
    assert not decide("big.bin", data[:HEAD], size=50 * MiB)


@pytest.mark.parametrize(("fmt", "suffix", "header"), FORMATS, ids=FORMAT_IDS)
def test_format_suffix_on_text_is_compressed(fmt: str, suffix: str, header: bytes) -> None:
    for data in (text(300), text(10 * KiB), text(HEAD), utf8_text(50 * KiB)):
        assert decide("file" + suffix, data)
        assert decide("FILE" + suffix.upper(), data)


def test_content_beats_the_name() -> None:
    jpeg = FORMATS[0][2] + noise(40 * KiB)
    assert not decide("x.dat", jpeg)
    assert decide("photo.jpg", text(40 * KiB))
    assert decide("photo.jpg", utf8_text(40 * KiB))
    assert is_media(b"/src/photo.jpg")  # the name alone would have stored it


# -- no false positives ------------------------------------------------------

_SOURCE = b'''#!/usr/bin/env python3
"""Command line entry point."""
import sys


def main(argv: list[str]) -> int:
    for arg in argv:
        print(f"{arg!r}: {len(arg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def _csv(rows: int) -> bytes:
    rng = random.Random(3)
    lines = ["id,date,amount,customer,comment"]
    for i in range(rows):
        lines.append(
            f"{i},2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},"
            f"{rng.uniform(0, 999):.2f},cust{rng.randint(1, 500)},{rng.choice(_WORDS)}"
        )
    return ("\n".join(lines) + "\n").encode()


def _json(items: int) -> bytes:
    rng = random.Random(4)
    doc = [
        {"id": i, "name": rng.choice(_WORDS), "tags": rng.sample(_WORDS, 3), "v": rng.random()}
        for i in range(items)
    ]
    return json.dumps(doc, indent=2).encode()


def _svg(shapes: int) -> bytes:
    rng = random.Random(5)
    body = "".join(
        f'  <circle cx="{rng.randint(0, 999)}" cy="{rng.randint(0, 999)}" r="{rng.randint(1, 50)}"'
        f' fill="#{rng.randrange(1 << 24):06x}"/>\n'
        for _ in range(shapes)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="1000">\n'
        f"{body}</svg>\n"
    ).encode()


def _elf(size: int) -> bytes:
    """An ELF executable's shape: headers, x86-64-like code, tables of zeros."""
    fields = (3, 62, 1, 0x1040, 64, 0, 0, 64, 56, 13, 64, 31, 30)  # e_type .. e_shstrndx
    header = b"\x7fELF\x02\x01\x01\x00" + b"\0" * 8 + struct.pack("<HHIQQQIHHHHHH", *fields)
    rng = random.Random(6)
    ops = [
        b"\x55",
        b"\x48\x89\xe5",
        b"\x48\x83\xec\x10",
        b"\x89\x7d\xfc",
        b"\x8b\x45\xfc",
        b"\xe8",
        b"\xc3",
        b"\x0f\x1f\x44\x00\x00",
        b"\x48\x8b\x05",
        b"\x31\xc0",
        b"\xc9",
    ]
    code = bytearray(header + b"\0" * 512)
    while len(code) < size:
        op = rng.choice(ops)
        code += op + (rng.randbytes(4) if op in (b"\xe8", b"\x48\x8b\x05") else b"")
    return bytes(code[:size])


TEXTS: list[tuple[str, bytes]] = [
    ("BZh-word", b"BZh is how a bzip2 stream starts; BZh9 means 900k blocks.\n"),
    ("BZh9-word", b"BZh91 was the block size; then the pi magic follows.\n"),
    ("PK-word", b"PK is a file of PKWARE's; PKZIP made it common.\n"),
    ("PK-line", b"PK\n" + b"PKZIP\n"),
    ("ID3-word", b"ID3 tags hold the title and the artist of a song.\n"),
    ("ID3v2-word", b"ID3v2.4 is the newest version of the tag format.\n"),
    ("RIFF-word", b"RIFF WEBP VP8 are the chunks of a WebP image.\n"),
    ("Rar-word", b"Rar! is how a RAR archive begins, then a few bytes.\n"),
    ("OggS-word", b"OggS pages carry Vorbis and Opus packets.\n"),
    ("GIF-word", b"GIF images are palette based; GIF8 is not a version.\n"),
    ("fLaC-word", b"fLaC is the FLAC signature, four letters.\n"),
    ("wOFF-word", b"wOFF fonts, wOF2 fonts: the web font formats.\n"),
    ("7z-word", b"7z archives use LZMA2 by default.\n"),
    ("LZIP-word", b"LZIP is a format for lzma streams with a CRC.\n"),
    ("csv", _csv(40)),
    ("json", _json(20)),
    ("python", _SOURCE),
    ("svg", _svg(30)),
    ("html", b"<!DOCTYPE html>\n<html><head><title>x</title></head><body>hi</body></html>\n"),
    ("shell", b'#!/bin/sh\nset -eu\nexec tar -cf - "$@"\n'),
    ("utf8-bom", b"\xef\xbb\xbfName;Gr\xc3\xb6\xc3\x9fe\nA;1\n"),
    ("utf16-bom", "\ufeffHello, world. UTF-16 text.\r\n".encode("utf-16-le")),
    ("utf16be-bom", "\ufeffHello, world. UTF-16 text.\r\n".encode("utf-16-be")),
    ("one-mpeg-header", b"\xff\xfb\x90\x00" + b"not followed by a second frame " * 40),
    ("ftyp-in-text", b"abcdftypisom is not a box: its size would be huge.\n"),
    ("ftyp-no-brand", b"\x00\x00\x00\x10ftyp\x00\xff\x00\xff" + b"\x00" * 16 + b"a table\n"),
    ("two-mpeg-kinds", b"\xff\xfb\x90\x00" + text(413) + b"\xff\xe3\x18\x00" + text(500)),
]
TEXT_IDS = [t[0] for t in TEXTS]


@pytest.mark.parametrize(("kind", "start"), TEXTS, ids=TEXT_IDS)
def test_text_starts_are_not_magic(kind: str, start: bytes) -> None:
    assert decide("file.txt", start), "a tiny file is compressed unless its magic says otherwise"
    codec = {"utf16-bom": "utf-16-le", "utf16be-bom": "utf-16-be"}.get(kind)
    more = (" some more text" * 2000).encode(codec) if codec else text(20 * KiB)
    assert decide("file.txt", start + more)
    assert decide("file.dat", start + more, size=20 * MiB)


@pytest.mark.parametrize(
    "data",
    [_csv(2000), _json(400), _SOURCE * 100, _svg(600), _elf(200 * KiB), utf8_text(30 * KiB)],
    ids=["csv", "json", "source", "svg", "elf", "utf8"],
)
def test_common_files_are_compressed(data: bytes) -> None:
    assert len(data) > 2 * SAMPLE
    assert decide("file", data)
    assert decide("file", data[:HEAD], size=10 * MiB)


# -- tiny files and the probe ------------------------------------------------


def test_empty_and_tiny_files_are_compressed() -> None:
    assert decide("empty", b"")
    assert decide("tiny.bin", noise(TINY - 1))
    assert decide("tiny.jpg", noise(100))
    assert not decide("small.bin", noise(TINY))


def test_a_file_that_shrank_is_judged_by_what_was_read() -> None:
    assert decide("gone.bin", b"", size=10 * MiB)
    assert decide("shrank.bin", noise(100), size=10 * MiB)
    assert not decide("shrank.bin", noise(TINY + 100), size=10 * MiB)


@pytest.mark.parametrize("size", [TINY, TINY + 1, 5 * KiB, SAMPLE, 3 * SAMPLE, HEAD, 4 * MiB])
@pytest.mark.parametrize("name", ["blob.bin", "noext", "x.txt", "x.jpg"])
def test_random_bytes_are_stored(size: int, name: str) -> None:
    assert not decide(name, noise(min(size, HEAD)), size=size)


def _records(n: int) -> bytes:
    """Fixed-size binary records (a database or a log's shape)."""
    rng = random.Random(8)
    return b"".join(
        struct.pack("<QIHhd", 1_700_000_000 + i, rng.randrange(100), i % 7, -1, i * 0.25)
        for i in range(n)
    )


@pytest.mark.parametrize(
    "data",
    [b"\0" * (40 * KiB), b"abc" * 30_000, _records(5000), bytes(range(256)) * 200],
    ids=["zeros", "abc", "records", "ramp"],
)
def test_repetitive_data_is_compressed(data: bytes) -> None:
    assert decide("blob.bin", data)
    assert decide("blob.jpg", data)


def test_the_probe_samples_the_body_past_a_header() -> None:
    # a compressible header, then compressed data: the middle of the head decides
    data = text(2 * KiB) + noise(62 * KiB)
    assert not decide("container.bin", data)
    assert not decide("container.bin", data[:HEAD], size=30 * MiB)
    # and the other way round: a random start (a key, an id) before text
    assert decide("tagged.bin", noise(2 * KiB) + utf8_text(60 * KiB))


def _mostly_random(n: int, zeros: int) -> bytes:
    """Random bytes with a run of `zeros` zero bytes in each KiB."""
    return b"".join(noise(KiB - zeros, i) + b"\0" * zeros for i in range(n // KiB))


def test_a_media_suffix_asks_more_of_the_probe() -> None:
    data = _mostly_random(64 * KiB, 70)
    ratio = len(zstandard.ZstdCompressor(level=1).compress(data[:SAMPLE])) / SAMPLE
    assert STORE_RATIO_MEDIA < ratio < STORE_RATIO  # the band where the name counts
    assert decide("capture.dat", data)
    assert not decide("capture.avi", data)
    # but never against the content
    assert decide("capture.avi", _mostly_random(64 * KiB, 300))
    assert not decide("capture.dat", _mostly_random(64 * KiB, 10))


def test_ascii_is_compressible_even_at_random() -> None:
    """The probe's shortcut for ASCII samples agrees with zstd: 7-bit bytes,
    even uniformly random, compress below both ratios."""
    data = bytes(random.Random(9).randrange(128) for _ in range(HEAD))
    ratio = len(zstandard.ZstdCompressor(level=1).compress(data[:SAMPLE])) / SAMPLE
    assert ratio < STORE_RATIO_MEDIA
    assert decide("random.txt", data)
    assert decide("random.jpg", data)


def _pdf(streams: list[bytes]) -> bytes:
    out = [b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"]
    for i, stream in enumerate(streams):
        out.append(
            b"%d 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % (i + 1, len(stream))
            + stream
            + b"\nendstream\nendobj\n"
        )
    return b"".join(out)


def test_pdf_is_probed() -> None:
    flate = _pdf([noise(6 * KiB, i) for i in range(20)])  # Flate streams look random
    plain = _pdf([b"BT /F1 12 Tf 72 712 Td (" + text(3 * KiB, i) + b") Tj ET" for i in range(20)])
    for name in ("doc.pdf", "doc.bin"):
        assert not decide(name, flate)
        assert decide(name, plain)
        assert not decide(name, flate[:HEAD], size=5 * MiB)
        assert decide(name, plain[:HEAD], size=5 * MiB)


def test_pdf_is_probed_whole() -> None:
    """An image stream in the middle of a text PDF's head does not decide alone."""
    page = [b"BT /F1 12 Tf 72 712 Td (" + text(2 * KiB, i) + b") Tj ET" for i in range(13)]
    pdf = _pdf([*page, noise(12 * KiB), *page])
    mid = (min(len(pdf), HEAD) - SAMPLE) // 2
    assert not decide("x.bin", pdf[mid : mid + SAMPLE] * 2)  # that sample alone: stored
    assert decide("doc.pdf", pdf)
    assert decide("doc.bin", pdf)


# -- patterns ----------------------------------------------------------------


def policy(*, never: Sequence[str] = (), always: Sequence[str] = (), mode: str = "auto") -> Policy:
    return Policy(Compression(mode), never=never, always=always, roots=[b"/src"])


JPEG = FORMATS[0][2] + noise(20 * KiB)
TEXT = text(20 * KiB)


def test_patterns_beat_content() -> None:
    p = policy(never=["*.raw"], always=["*.log"])
    assert not decide("a/b/scan.raw", TEXT, p)
    assert not decide("scan.raw", TEXT, p)
    assert decide("a/b/app.log", JPEG, p)
    assert decide("app.log", noise(40 * KiB), p)
    assert decide("a/b/other.txt", TEXT, p)  # neither: content
    assert not decide("a/b/other.txt", JPEG, p)


def test_always_beats_never() -> None:
    p = policy(never=["*.log", "logs/"], always=["*.log"])
    assert decide("logs/app.log", JPEG, p)
    assert decide("app.log", JPEG, p)
    assert not decide("logs/notes.txt", TEXT, p)


@pytest.mark.parametrize("mode", ["none", "zstd"])
def test_patterns_beat_the_mode(mode: str) -> None:
    p = policy(never=["*.raw"], always=["*.log"], mode=mode)
    assert not decide("x.raw", TEXT, p)
    assert decide("x.log", JPEG, p)
    assert decide("x.txt", JPEG, p) is (mode == "zstd")


def test_patterns_with_a_slash_are_anchored_to_the_root() -> None:
    p = policy(never=["/raw/*.dat", "cam/*.bin", "cache/", "a/**/deep.txt"])
    assert not decide("raw/x.dat", TEXT, p)
    assert decide("sub/raw/x.dat", TEXT, p)
    assert decide("raw/sub/x.dat", TEXT, p)  # `*` does not match `/`
    assert not decide("cam/x.bin", TEXT, p)
    assert decide("sub/cam/x.bin", TEXT, p)
    assert not decide("cache/x.txt", TEXT, p)  # a directory, at any depth
    assert not decide("a/b/cache/c/x.txt", TEXT, p)
    assert not decide("a/b/c/deep.txt", TEXT, p)
    assert not decide("a/deep.txt", TEXT, p)


def test_patterns_without_roots_are_relative_to_slash() -> None:
    p = Policy(Compression("auto"), never=["/raw/*.dat", "*.iso"])
    assert not p.decide(b"/raw/x.dat", TEXT, len(TEXT))
    assert p.decide(b"/src/raw/x.dat", TEXT, len(TEXT))
    assert not p.decide(b"/src/a/x.iso", TEXT, len(TEXT))


def test_a_root_that_is_slash_or_has_a_trailing_slash() -> None:
    for roots in ([b"/"], [b"/src/"], [b"/src", b"/src/nested"]):
        p = Policy(Compression("auto"), never=["/raw/"], roots=roots)
        here = b"/raw/x" if roots == [b"/"] else b"/src/raw/x"
        assert not p.decide(here, TEXT, len(TEXT)), roots


def test_negation_within_a_list() -> None:
    p = policy(never=["*.raw", "!keep.raw"])
    assert not decide("a/x.raw", TEXT, p)
    assert decide("a/keep.raw", TEXT, p)


def test_paths_that_are_not_utf8() -> None:
    p = policy(never=["*.raw", "caf?.txt"], always=["*.log"])
    assert not p.decide(b"/src/\xff\xfe/x.raw", TEXT, len(TEXT))
    assert not p.decide(b"/src/caf\xe9.txt", TEXT, len(TEXT))  # one undecodable byte: one `?`
    assert p.decide(b"/src/\xff.log", JPEG, len(JPEG))
    assert p.decide(b"/src/\xff\x80.txt", TEXT, len(TEXT))
    assert not AUTO.decide(b"/src/\xff.jpg", JPEG, len(JPEG))


@pytest.mark.parametrize("bad", ["!", "a\\", "[z-a]"])
def test_bad_patterns_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid pattern") as exc:
        check_patterns(["*.log", bad])
    msg = str(exc.value)
    assert repr(bad) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="invalid pattern"):
        policy(never=[bad])
    with pytest.raises(ValueError, match="invalid pattern"):
        policy(always=[bad])


def test_good_patterns_pass() -> None:
    check_patterns(["*.log", "/raw/", "a/**/b", "!keep.raw", "# comment", "", "\\!x", "[ab]?"])


# -- modes -------------------------------------------------------------------


def test_mode_none_stores_everything() -> None:
    p = Policy(Compression("none"))
    assert not decide("x.txt", TEXT, p)
    assert not decide("x.txt", b"tiny", p)


def test_mode_zstd_compresses_everything() -> None:
    p = Policy(Compression("zstd", 9))
    assert decide("x.jpg", JPEG, p)
    assert decide("x.bin", noise(HEAD), p)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="lz4"):
        Policy(Compression("lz4"))


def test_head_is_what_the_packer_reads() -> None:
    assert Policy.HEAD == HEAD == 64 * KiB
