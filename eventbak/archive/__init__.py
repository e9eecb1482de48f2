"""Archives: a PAX tar stream (tar.py) through a stack of layers
(layers.py: zstd.py, compressed or stored per the policy in policy.py, then
age.py) into staging (sink.py), filled up to its size limit (writer.py)."""

from eventbak.archive.layers import ArchiveFormat
from eventbak.archive.policy import MEDIA_SUFFIXES, is_media
from eventbak.archive.tar import (
    BLOCK,
    DIRTYPE,
    END_OF_ARCHIVE,
    FORMAT_VERSION,
    LNKTYPE,
    PAXTYPE,
    REGTYPE,
    SEGMENT_MARK,
    SYMTYPE,
    global_header,
    member_name,
    padded,
    tar_header,
)
from eventbak.archive.writer import ArchiveWriter
from eventbak.archive.zstd import ZSTD_THREADS

__all__ = [
    "BLOCK",
    "DIRTYPE",
    "END_OF_ARCHIVE",
    "FORMAT_VERSION",
    "LNKTYPE",
    "MEDIA_SUFFIXES",
    "PAXTYPE",
    "REGTYPE",
    "SEGMENT_MARK",
    "SYMTYPE",
    "ZSTD_THREADS",
    "ArchiveFormat",
    "ArchiveWriter",
    "global_header",
    "is_media",
    "member_name",
    "padded",
    "tar_header",
]
