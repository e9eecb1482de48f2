"""Which files are compressed: the compression policy."""

from __future__ import annotations

#: Name suffixes of formats that are already compressed.
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
#: zstd worker threads (compression runs beside the Python work; 0 = inline)


def is_media(path: bytes) -> bool:
    dot = path.rfind(b".")
    return dot > path.rfind(b"/") and path[dot:].lower() in MEDIA_SUFFIXES
