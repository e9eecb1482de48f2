"""Which files are compressed: the per-file compression policy.

This module owns one decision, made once per file in the packer's hot loop:
is the file's data zstd-compressed, or stored as it is? `Policy.decide`
answers from the file's absolute path, its first bytes (`HEAD` of them at
most) and its size. The first rule that applies wins:

1. Patterns. A path matching an `always` pattern (the dataset's
   `always_compress`) is compressed; else a path matching a `never` pattern
   (`never_compress`) is stored. A path matching both is compressed: `always`
   wins. The patterns are the dataset's `exclude` syntax, matched the same
   way (pathspec's `GitIgnoreSpec`): a pattern without a `/` (other than a
   trailing one) matches a name at any depth (`*.log`); one with a `/` at the
   start or in the middle is anchored to the dataset's root (`/raw/*.dat`,
   `data/*.bin`); a trailing `/` matches a directory, so everything below it
   (`cache/`); `!pattern` re-includes within the same list. Paths are matched
   relative to the root they are under (`roots`), or to `/` without roots.
2. Mode. `none` stores, `zstd` compresses.
3. Content (mode `auto`); the file name is a hint only, never a verdict:
   a. Magic bytes of an already-compressed format store it (`_FORMATS`:
      images, audio, video, archives, compressed streams, web fonts). Short
      magics are checked with the bytes that follow them, so text does not
      look like one.
   b. A file under `TINY` bytes is compressed: compressing it costs less
      than the probe, and a stored one would cut the archive's zstd frame.
   c. Else a probe: zstd level 1 on a sample of the head (the middle
      `SAMPLE` bytes; the whole head for a file of `BIG` bytes or more and
      for a PDF, whose text objects and Flate streams interleave). A sample
      that shrinks to no more than `STORE_RATIO` of its size is compressed,
      else the file is stored. A file name with a media suffix
      (`MEDIA_SUFFIXES`) lowers that ratio to `STORE_RATIO_MEDIA`: a sample
      of such a file must save more before its file is compressed. A sample
      of ASCII bytes only is compressed without the probe (7 bits a byte:
      zstd's Huffman literals alone take 1/8 off, below both ratios).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import pathspec
import zstandard

from eventbak.config import Compression

#: Name suffixes of formats that are usually already compressed (a hint).
MEDIA_SUFFIXES = frozenset(
    s.encode()
    for s in [
        ".jpg",
        ".jpeg",
        ".png",
        ".gif",
        ".webp",
        ".heic",
        ".heif",
        ".avif",
        ".mp4",
        ".m4v",
        ".mkv",
        ".mov",
        ".avi",
        ".webm",
        ".mp3",
        ".m4a",
        ".aac",
        ".ogg",
        ".opus",
        ".flac",
        ".zip",
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".7z",
        ".rar",
        ".lz4",
        ".jar",
        ".apk",
        ".docx",
        ".xlsx",
        ".pptx",
        ".odt",
        ".pdf",
        ".deb",
        ".rpm",
        ".dmg",
        ".iso",
        ".woff2",
    ]
)

#: The packer reads this many first bytes of a file for `Policy.decide`.
HEAD = 64 * 1024
#: Files below this size skip the probe.
TINY = 4 * 1024
#: The probe's sample of the head (files below BIG).
SAMPLE = 8 * 1024
#: From this size on, the probe takes the whole head (its cost is small
#: beside that of reading and compressing the file).
BIG = 1024 * 1024
#: A sample compressed to more than this fraction of its size is incompressible.
STORE_RATIO = 0.95
#: The same for a file whose name has a media suffix.
STORE_RATIO_MEDIA = 0.90

MODES = ("auto", "none", "zstd")


def is_media(path: bytes) -> bool:
    """Whether the file name of `path` ends in a media suffix (any case)."""
    dot = path.rfind(b".")
    return dot > path.rfind(b"/") and path[dot:].lower() in MEDIA_SUFFIXES


# -- patterns ------------------------------------------------------------------


def check_patterns(patterns: Iterable[str]) -> None:
    """ValueError (one line, naming the pattern) for the first pattern that
    pathspec rejects, e.g. `!`, a trailing backslash, `[z-a]`."""
    for pattern in patterns:
        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except re.error as exc:
            raise ValueError(f"invalid pattern {pattern!r}: {exc.msg}") from None
        except ValueError:
            raise ValueError(f"invalid pattern {pattern!r}: not a gitignore pattern") from None


def _spec(patterns: Sequence[str]) -> pathspec.GitIgnoreSpec | None:
    check_patterns(patterns)
    return pathspec.GitIgnoreSpec.from_lines(patterns) if patterns else None


# -- magic bytes ---------------------------------------------------------------


def _prefix(*magics: bytes) -> Callable[[bytes], bool]:
    """A check for formats whose magic is long enough to stand alone."""
    return lambda head: head.startswith(magics)


_BRAND = re.compile(rb"[ -~]{4}")


def _iso_bmff(head: bytes) -> bool:
    """HEIC/HEIF/AVIF, MP4/MOV/M4A/3GP, JPEG 2000, JPEG XL: an ISO base media
    file's first box (`ftyp` with a printable brand; the JPEG 2000 and JPEG XL
    signature boxes; old QuickTime's `wide` before `mdat`)."""
    if len(head) < 16:
        return False
    size = int.from_bytes(head[:4], "big")
    kind = head[4:8]
    if kind == b"ftyp":
        return 16 <= size <= 4096 and size % 4 == 0 and _BRAND.fullmatch(head[8:12]) is not None
    if kind in (b"jP  ", b"JXL "):
        return size == 12 and head[8:12] == b"\r\n\x87\n"
    return kind == b"wide" and size == 8 and head[12:16] == b"mdat"


def _gzip(head: bytes) -> bool:
    """gzip: magic, method deflate, no reserved flag bits."""
    return len(head) > 3 and head.startswith(b"\x1f\x8b\x08") and head[3] & 0xE0 == 0


def _bzip2(head: bytes) -> bool:
    """bzip2: `BZh`, the block size digit, then a block's or the end's magic."""
    return (
        len(head) >= 10
        and head.startswith(b"BZh")
        and 0x31 <= head[3] <= 0x39
        and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")
    )


def _lz4_frame(head: bytes) -> bool:
    """lz4 frame: magic, then the frame descriptor's version 01."""
    return len(head) > 4 and head.startswith(b"\x04\x22\x4d\x18") and head[4] & 0xC0 == 0x40


def _id3(head: bytes) -> bool:
    """An ID3v2 tag (before MP3, AAC or FLAC): version 2 to 4, no undefined
    flags, a syncsafe size."""
    return (
        len(head) >= 10
        and head.startswith(b"ID3")
        and 2 <= head[3] <= 4
        and head[4] != 0xFF
        and head[5] & 0x0F == 0
        and max(head[6:10]) < 0x80
    )


def _ogg(head: bytes) -> bool:
    """Ogg (Vorbis, Opus, FLAC, Theora): a page, version 0, header type flags."""
    return len(head) > 5 and head.startswith(b"OggS\x00") and head[5] < 8


def _webp(head: bytes) -> bool:
    """WebP: a RIFF file of form WEBP with a VP8/VP8L/VP8X chunk."""
    return len(head) >= 16 and head.startswith(b"RIFF") and head[8:15] == b"WEBPVP8"


def _flac(head: bytes) -> bool:
    """FLAC: magic, then the STREAMINFO block header (type 0, 34 bytes)."""
    return (
        len(head) >= 8
        and head.startswith(b"fLaC")
        and head[4] & 0x7F == 0
        and head[5:8] == b"\0\0\x22"
    )


def _woff(head: bytes) -> bool:
    """WOFF and WOFF2 web fonts: signature, then a font flavor."""
    return head[:4] in (b"wOFF", b"wOF2") and head[4:8] in (
        b"\0\1\0\0",
        b"OTTO",
        b"true",
        b"ttcf",
    )


def _jpeg(head: bytes) -> bool:
    """JPEG: SOI, then a marker."""
    return len(head) > 3 and head.startswith(b"\xff\xd8\xff") and head[3] >= 0xC0


#: kbit/s by bitrate index, for (MPEG-1, layer bits) (layer bits 3: I, 2: II, 1: III)
_MPEG_BITRATES = {
    (True, 3): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 1): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 3): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 1): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
#: Hz by sample rate index, for the version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5)
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame(head: bytes, i: int) -> int:
    """The length of the MPEG audio frame (MP1/2/3, or AAC in ADTS) whose
    header is at head[i:]; 0 if there is none (or its length is unknown)."""
    if len(head) < i + 7 or head[i] != 0xFF:
        return 0
    b1, b2 = head[i + 1], head[i + 2]
    if b1 & 0xF6 == 0xF0:  # ADTS: 12 sync bits, layer 0
        if (b2 >> 2) & 0x0F > 12:
            return 0
        return ((head[i + 3] & 0x03) << 11) | (head[i + 4] << 3) | (head[i + 5] >> 5)
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if b1 < 0xE0 or version == 1 or layer == 0 or rate_index == 3 or bitrate_index in (0, 15):
        return 0
    bitrate = _MPEG_BITRATES[version == 3, layer][bitrate_index] * 1000
    rate = _MPEG_RATES[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 3:
        return (12 * bitrate // rate + padding) * 4
    if layer == 1 and version != 3:
        return 72 * bitrate // rate + padding
    return 144 * bitrate // rate + padding


def _mpeg_audio(head: bytes) -> bool:
    """MP3 (or MP1/MP2, or AAC in ADTS) without a tag: a frame header, and the
    next one where the first frame's length says, of the same stream (the
    11-bit frame sync alone would take a UTF-16 byte order mark for MP1)."""
    n = _mpeg_frame(head, 0)
    return (
        n >= 7
        and _mpeg_frame(head, n) > 0
        and head[n + 1] == head[1]
        and (head[n + 2] ^ head[2]) & 0x0C == 0
    )


#: The checks of compressed formats, by the first byte of the file.
_FORMATS: dict[int, tuple[Callable[[bytes], bool], ...]] = {
    0x00: (_iso_bmff,),
    0x02: (_prefix(b"\x02\x21\x4c\x18"),),  # lz4, legacy frame
    0x04: (_lz4_frame,),
    0x1A: (_prefix(b"\x1a\x45\xdf\xa3"),),  # EBML: Matroska, WebM
    0x1F: (_gzip,),
    0x28: (_prefix(b"\x28\xb5\x2f\xfd"),),  # zstd
    0x37: (_prefix(b"7z\xbc\xaf\x27\x1c"),),  # 7z
    0x42: (_bzip2,),
    0x47: (_prefix(b"GIF87a", b"GIF89a"),),
    0x49: (_id3,),
    0x4C: (_prefix(b"LZIP\x01"),),  # lzip
    0x4F: (_ogg,),
    # ZIP and its family (docx, xlsx, jar, apk, odt, epub): a local file
    # header, a spanned archive's marker, an empty archive's end record
    0x50: (_prefix(b"PK\x03\x04", b"PK\x07\x08", b"PK\x05\x06"),),
    0x52: (_webp, _prefix(b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")),  # RAR 4, 5
    0x66: (_flac,),
    0x77: (_woff,),
    0x89: (_prefix(b"\x89PNG\r\n\x1a\n"),),
    0xFD: (_prefix(b"\xfd7zXZ\x00"),),  # xz
    0xFF: (_jpeg, _mpeg_audio),
}


def _compressed_format(head: bytes) -> bool:
    """Whether `head` starts like a file of an already-compressed format."""
    if head:
        for check in _FORMATS.get(head[0], ()):
            if check(head):
                return True
    return False


# -- the probe -----------------------------------------------------------------

_probe = threading.local()  # a zstd compressor per thread (they are not thread safe)


def _zstd_size(data: bytes) -> int:
    """The size of `data` compressed at zstd level 1."""
    try:
        cctx = _probe.cctx
    except AttributeError:
        cctx = _probe.cctx = zstandard.ZstdCompressor(
            level=1, write_checksum=False, write_content_size=False
        )
    return len(cctx.compress(data))


def _sample(head: bytes, size: int) -> bytes:
    """What the probe compresses: the whole head of a big file or a PDF, else
    its middle SAMPLE bytes (past a header, into the body)."""
    if len(head) <= SAMPLE or size >= BIG or head.startswith(b"%PDF-"):
        return head
    start = (len(head) - SAMPLE) // 2
    return head[start : start + SAMPLE]


def _compressible(sample: bytes, ratio: float) -> bool:
    """Whether zstd shrinks `sample` to `ratio` of its size or less."""
    return sample.isascii() or _zstd_size(sample) <= ratio * len(sample)


def _by_content(path: bytes, head: bytes, size: int) -> bool:
    """Rule 3 (mode auto): magic bytes, then the tiny-file rule, then the probe."""
    if _compressed_format(head):
        return False
    if size < TINY or len(head) < TINY:
        return True
    ratio = STORE_RATIO_MEDIA if is_media(path) else STORE_RATIO
    return _compressible(_sample(head, size), ratio)


# -- the policy ----------------------------------------------------------------


class Policy:
    """Decides, per file, whether its data is zstd-compressed or stored as is
    (the rules are in the module's docstring).

    `never` and `always` are gitignore-style patterns (ValueError naming a bad
    one); `roots` are the dataset's source roots, which anchored patterns
    (with a `/`) are relative to, as in `exclude`. Without roots, or for a
    path under none of them, paths are matched relative to `/`.
    """

    __slots__ = ("_always", "_mode", "_never", "_roots")

    #: How many first bytes of a file `decide` wants (the module's HEAD).
    HEAD: ClassVar[int] = HEAD

    def __init__(
        self,
        compression: Compression,
        never: Sequence[str] = (),
        always: Sequence[str] = (),
        *,
        roots: Sequence[bytes] = (),
    ) -> None:
        if compression.mode not in MODES:
            raise ValueError(f"compression mode {compression.mode!r} is not one of {MODES}")
        self._mode = compression.mode
        self._never = _spec(never)
        self._always = _spec(always)
        # deepest first; "/" becomes b"/", "/a/" b"/a/"
        self._roots = tuple(sorted({r.rstrip(b"/") + b"/" for r in roots}, key=len, reverse=True))

    def decide(self, path: bytes, head: bytes, size: int) -> bool:
        """True: compress this file's data; False: store it.

        `path` is the absolute path (bytes, maybe not UTF-8), `head` the
        file's first bytes (min(size, HEAD) of them; may be shorter if the
        file shrank), `size` the file's size."""
        if self._always is not None or self._never is not None:
            rel = self._relative(path)
            if self._always is not None and self._always.match_file(rel):
                return True
            if self._never is not None and self._never.match_file(rel):
                return False
        if self._mode == "auto":
            return _by_content(path, head, size)
        return self._mode == "zstd"

    def _relative(self, path: bytes) -> str:
        """`path` as the patterns see it: relative to its root, or to `/`."""
        for prefix in self._roots:
            if path.startswith(prefix):
                return os.fsdecode(path[len(prefix) :])
        return os.fsdecode(path.lstrip(b"/"))
