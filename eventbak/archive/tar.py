"""PAX tar framing: member names, header blocks, the end of archive.

Header choices (see docs/formats.md):
* member names are the absolute path without its leading "/";
* ustar fields where they fit (raw name bytes, UTF-8 or not), pax records
  where they do not (names over 256 bytes or that cannot be split at a "/",
  link targets over 100 bytes, sizes >= 8 GiB, ids >= 2^21, mtimes before
  1970 or after 2514); a pax record holding bytes that are not UTF-8 comes
  with `hdrcharset=BINARY`; whole-second mtimes in the tar (the catalog
  keeps nanoseconds);
* no user/group names (restore uses the numeric ids, like `tar --numeric-owner`);
* a segment of a split file is named `NAME.eventbak-seg-<15-digit offset>`,
  so `cat NAME.eventbak-seg-* > NAME` joins the parts by hand.
"""

from __future__ import annotations

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
SEGMENT_MARK = b".eventbak-seg-"

REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
DIRTYPE = b"5"
PAXTYPE = b"x"

_TEXT, _MEDIA = 0, 1
_MAX_MTIME = 8**11 - 1
_MAX_NUM = 8**11 - 1  # 11 octal digits: sizes and mtimes
_MAX_ID = 8**7 - 1  # 7 octal digits: uid, gid
#: magic, version, uname, gname, devmajor, devminor, an empty prefix, padding
_USTAR_TAIL = b"ustar\x0000" + b"\0" * 80 + b"\0" * 155 + b"\0" * 12
#: the checksum's share of the constant parts: its own field read as 8
#: spaces, and the tail
_USTAR_SUM = 8 * ord(" ") + sum(_USTAR_TAIL)


def member_name(path: bytes, kind: str, offset: int | None = None) -> bytes:
    """The tar member name of `path` (absolute) as eventbak writes it."""
    name = path.lstrip(b"/") or b"."
    if offset is not None:
        name += SEGMENT_MARK + b"%015d" % offset
    if kind == "dir":
        name += b"/"
    return name


def padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _octal(n: int, width: int) -> bytes | None:
    if n < 0:
        return None
    s = b"%0*o" % (width - 1, n)
    return s + b"\0" if len(s) == width - 1 else None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    # the prefix ends at a "/" which is not stored; the rest must fit in 100
    i = name.find(b"/", len(name) - 101)
    while i != -1:
        if i <= 155 and len(name) - i - 1 <= 100 and i > 0:
            return name[:i], name[i + 1 :]
        i = name.find(b"/", i + 1)
    return None


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def tar_header(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes = b"",
) -> bytes:
    """The header block(s) for one member: ustar, preceded by a pax header
    when a field does not fit. `mtime` is whole seconds."""
    if (
        len(name) <= 100
        and len(linkname) <= 100
        and 0 <= uid <= _MAX_ID
        and 0 <= gid <= _MAX_ID
        and 0 <= size <= _MAX_NUM
        and 0 <= mtime <= _MAX_NUM
    ):  # the common case, per file: keep it lean (the checksum sums the
        # bytes that vary; NUL padding adds nothing, the rest is _USTAR_SUM)
        numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime)
        return b"%s%s%06o\0 %s%s%s" % (
            name.ljust(100, b"\0"),
            numbers,
            _USTAR_SUM + sum(name) + sum(numbers) + typeflag[0] + sum(linkname),
            typeflag,
            linkname.ljust(100, b"\0"),
            _USTAR_TAIL,
        )
    pax: list[bytes] = []
    split = _split_ustar_name(name)
    if split is None:
        pax.append(_pax_record(b"path", name))
        prefix, short = b"", name[-100:]
    else:
        prefix, short = split
    binary = not (_utf8(name) and _utf8(linkname))
    if len(linkname) > 100:
        pax.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    fields: list[bytes] = []
    for key, value, width in (
        (b"uid", uid, 8),
        (b"gid", gid, 8),
        (b"size", size, 12),
        (b"mtime", mtime, 12),
    ):
        enc = _octal(value, width)
        if enc is None:
            pax.append(_pax_record(key, str(value).encode()))
            enc = b"0" * (width - 1) + b"\0"
        fields.append(enc)
    if pax and binary:
        pax.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    mode_enc = _octal(mode & 0o7777, 8)
    assert mode_enc is not None
    header = b"".join(
        (
            short.ljust(100, b"\0"),
            mode_enc,
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            b"        ",
            typeflag,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            b"\0" * 80,  # uname, gname, devmajor, devminor
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        )
    )
    header = header[:148] + b"%06o\0 " % sum(header) + header[156:]
    if not pax:
        return header
    records = b"".join(pax)
    pax_name = (b"PaxHeaders/" + short.rsplit(b"/", 1)[-1])[:100]
    head = tar_header(pax_name, PAXTYPE, 0o644, 0, 0, len(records), min(max(mtime, 0), _MAX_MTIME))
    return head + records + b"\0" * (padded(len(records)) - len(records)) + header


GLOBALTYPE = b"g"
#: The archive format version, in every archive's global header.
FORMAT_VERSION = 1


def global_header(records: dict[str, str]) -> bytes:
    """A pax global header (typeflag `g`, named like GNU tar's) holding
    `records` (vendor keywords: GNU tar and Python's tarfile pass over them)."""
    body = b"".join(_pax_record(k.encode(), v.encode()) for k, v in records.items())
    head = tar_header(b"pax_global_header", GLOBALTYPE, 0o644, 0, 0, len(body), 0)
    return head + body + b"\0" * (padded(len(body)) - len(body))
