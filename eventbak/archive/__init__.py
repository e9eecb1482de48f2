"""Archives: a PAX tar stream (tar.py), compressed per the policy
(policy.py) into zstd frames and written into staging (writer.py, sink.py)."""

from eventbak.archive.policy import MEDIA_SUFFIXES, is_media
from eventbak.archive.tar import (
    BLOCK,
    DIRTYPE,
    END_OF_ARCHIVE,
    LNKTYPE,
    PAXTYPE,
    REGTYPE,
    SEGMENT_MARK,
    SYMTYPE,
    member_name,
    padded,
    tar_header,
)
from eventbak.archive.writer import ZSTD_THREADS, ArchiveWriter

__all__ = [
    "BLOCK",
    "DIRTYPE",
    "END_OF_ARCHIVE",
    "LNKTYPE",
    "MEDIA_SUFFIXES",
    "PAXTYPE",
    "REGTYPE",
    "SEGMENT_MARK",
    "SYMTYPE",
    "ZSTD_THREADS",
    "ArchiveWriter",
    "is_media",
    "member_name",
    "padded",
    "tar_header",
]
