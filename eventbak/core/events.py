"""The event catalogue: every fact the event log can hold, and nothing else.

This module is the log's schema. Each event is an immutable msgspec Struct
named in the past tense; the union `Event` is tagged by the field `t` (the
class name). Paths are `bytes` (what the OS gave us), so non-UTF-8 names
survive. Times are float seconds since the epoch, except file mtimes, which
are integer nanoseconds.

Compatibility: new optional fields may be added at the end of a struct (old
readers ignore them, new readers fill in defaults); a field is never renamed
or re-typed. An event kind this version does not know is reported as
corruption ("written by a newer eventbak?"), so a new kind needs a newer
reader; the log's format version (log.py) changes only with its framing.
See docs/formats.md.
"""

from __future__ import annotations

import typing
from typing import Literal

import msgspec

MemberKind = Literal["file", "dir", "symlink", "hardlink"]


class Member(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One entry of an archive, as the catalog knows it.

    A regular file larger than the room in an archive is split: each segment
    is its own member with `offset` and `length` (bytes of this segment);
    `size` is always the whole file's size. For a whole file `offset` is 0
    and `length == size`. `target` is the link target of a symlink (as
    stored) or the path of the first link of a hard-linked file.
    """

    path: bytes
    kind: MemberKind
    mode: int
    mtime_ns: int
    size: int = 0
    uid: int = 0
    gid: int = 0
    target: bytes = b""
    offset: int = 0
    length: int = 0
    changed: bool = False
    #: The member's data went through the zstd compressor (False: stored as
    #: is, or no zstd layer; logs before 0.3 say False whatever was done).
    zstd: bool = False
    #: ctime and inode number at the read (for the incremental comparison;
    #: logs before 0.3 say 0).
    ctime_ns: int = 0
    ino: int = 0
    #: BLAKE3-256 of the whole file's content, on its last member (empty where
    #: unknown: changed while read, resumed mid-file, or logs before 0.3).
    hash: bytes = b""
    #: Not in this archive: the bytes are member `source` (a path) of archive
    #: `ref`, stored by an earlier session (file-level dedup, catalog/dedup.py).
    ref: str = ""
    source: bytes = b""

    @property
    def segmented(self) -> bool:
        return self.kind == "file" and (self.offset != 0 or self.length != self.size)


class _Base(msgspec.Struct, tag=True, tag_field="t", frozen=True, kw_only=True, gc=False):
    at: float


# -- sessions ---------------------------------------------------------------


class SessionOpened(_Base, frozen=True):
    """A backup session began: what it backs up, where to, and how."""

    session: str
    dataset: str
    #: The vault's identity: kind and location (`file:///dir`, `s3://bucket/prefix`,
    #: `glacier://name`), never its options, so that changing `part_size=` or
    #: `concurrency=` does not orphan the session. (Logs before 0.2 hold the
    #: URL here, which for a file vault is the same thing.)
    vault: str
    paths: list[bytes]
    archive_size: int
    compression: str
    exclude: list[str] = []
    host: str = ""
    version: str = ""
    #: The vault URL as given, with its options (never credentials).
    vault_url: str = ""
    #: The age recipients (public keys) every archive of the session is
    #: encrypted to; empty: not encrypted.
    recipients: list[str] = []
    #: The dataset's patterns that force (or forbid) compression per file.
    always_compress: list[str] = []
    never_compress: list[str] = []
    #: The completed session this one stores the changes since (its manifest
    #: is the starting point in time); empty: a full session.
    base: str = ""
    #: The change rule leaves out the inode number / the ctime (file systems
    #: that do not keep them stable: some network and FUSE mounts).
    ignore_inode: bool = False
    ignore_ctime: bool = False
    #: The vault URL as configured when it carries a date tag
    #: (`s3://b/photos-{date:%Y-%m}`): `vault` is the vault it named the day
    #: the session opened, kept for the session's life.
    vault_template: str = ""


class SessionResumed(_Base, frozen=True):
    """An unfinished session continues after a pause or a crash."""

    session: str
    after: str  # "paused" or "crash"
    pid: int = 0
    vault_url: str = ""  # the URL (options) this run uses; its identity is the session's


class SessionPaused(_Base, frozen=True):
    """The session stopped taking work and reached a consistent point."""

    session: str
    reason: str  # "signal SIGTERM", "deadline", "error: No space left on device (...)"


class SessionCompleted(_Base, frozen=True):
    """Every entry of the session is in an uploaded archive (or was skipped)."""

    session: str
    files: int
    bytes: int
    archives: int
    skipped: int
    changed: int


class CatalogStored(_Base, frozen=True):
    """The session's manifest (catalog/manifest.py) is in the vault, in a hot
    class: every entry of its point in time, where its bytes are. Recorded
    before `SessionCompleted`; a session may store it again (the latest
    counts)."""

    session: str
    key: str  # in the vault, as an archive's key (`catalog/<session>.mf.zst[.age]`)
    size: int
    sha256: str  # of the object as stored
    entries: int
    layers: list[str] = []
    checksum: str = ""  # what the vault confirmed
    #: The point in time's totals: files (hard links included) and their bytes.
    files: int = 0
    bytes: int = 0
    #: The state dir's own copy (`catalog/<session>.mf.zst`, never encrypted:
    #: the next session compares the tree with it): its SHA-256.
    local_sha256: str = ""


class ScheduleDecided(_Base, frozen=True):
    """The daemon decided what to do next for a dataset, from the log and the
    clock alone (daemon/schedule.py `decide`): `start` a session, `resume`
    the unfinished one, or `sleep`; `until` is when the window closes (start,
    resume; 0: no window) or when to wake (sleep), `why` says why in words.
    Recorded when the decision differs from the last one for the dataset."""

    dataset: str
    action: Literal["start", "resume", "sleep"]
    until: float
    why: str


class HookRan(_Base, frozen=True):
    """A dataset's `before` or `after` command ran (the daemon, around each
    of its sessions' runs); `output` is the end of what it printed (stdout
    and stderr), at most 4 KiB. A failing `before` skips the run."""

    dataset: str
    when: Literal["before", "after"]
    command: str
    exit_code: int  # 127: the program was not found; -N: killed by signal N
    output: str = ""


class SessionFailed(_Base, frozen=True):
    """The session stopped on an error it could not get past."""

    session: str
    error: str


class SessionAbandoned(_Base, frozen=True):
    """The session will never be resumed; its uploaded archives stay valid."""

    session: str
    reason: str


# -- entries that could not be stored as they were ---------------------------


class EntrySkipped(_Base, frozen=True):
    """An entry was not stored: special file, unreadable, vanished."""

    session: str
    path: bytes
    reason: str
    special: bool = False  # FIFOs, sockets, devices: skipped by design, not an error


class EntryChanged(_Base, frozen=True):
    """A file changed while it was read; what is stored may be inconsistent."""

    session: str
    path: bytes
    detail: str


class EntryDeleted(_Base, frozen=True):
    """A stored entry of an unfinished session was gone when the session resumed;
    a restore of the session leaves it out."""

    session: str
    path: bytes


# -- archives ---------------------------------------------------------------


class ArchiveStarted(_Base, frozen=True):
    """The builder opened a new archive in staging."""

    session: str
    archive: str
    index: int


class ArchiveSealed(_Base, frozen=True):
    """An archive is complete and durable in staging, with its catalog.

    `sha256` and `size` are of the staged file exactly as it will be stored.
    `raw_size` is the size of the uncompressed tar stream. `count`, `files`,
    `bytes` and `last` summarise `members` (entries; files stored from their
    first byte and hard links; bytes of file data; the last entry, where a
    resumed walk continues), so that folding the log never needs the member
    list itself: see `ArchiveSealedHead`.
    """

    archive: str
    staged: str
    size: int
    raw_size: int
    sha256: str
    compression: str
    members: list[Member]
    count: int = 0
    files: int = 0
    bytes: int = 0
    last: Member | None = None
    #: The archive's layers over tar, in writing order ("zstd", "age"); logs
    #: before 0.3 have none: `compression` tells then (see `archive_layers`).
    layers: list[str] = []

    @classmethod
    def of(
        cls, at: float, archive: str, staged: str, size: int, raw_size: int, sha256: str,
        compression: str, members: list[Member], layers: list[str] | None = None,
        listed: Summary | None = None,
    ) -> ArchiveSealed:  # fmt: skip
        """The event with its summary fields computed from `members` and, if
        part of the list went out earlier (`MembersListed`), `listed`."""
        total = Summary() if listed is None else listed.copy()
        for m in members:
            total.add(m)
        return cls(
            at=at, archive=archive, staged=staged, size=size, raw_size=raw_size, sha256=sha256,
            compression=compression, members=members, count=total.count, files=total.files,
            bytes=total.bytes, last=total.last, layers=layers or [],
        )  # fmt: skip


class Summary(msgspec.Struct):
    """Counts over a member list (see `ArchiveSealed`)."""

    count: int = 0
    files: int = 0
    bytes: int = 0
    last: Member | None = None

    def add(self, m: Member) -> None:
        self.count += 1
        if m.kind == "file":
            self.bytes += 0 if m.ref else m.length  # bytes stored in this archive
            self.files += m.offset == 0
        elif m.kind == "hardlink":
            self.files += 1
        self.last = m

    def copy(self) -> Summary:
        return Summary(self.count, self.files, self.bytes, self.last)


class MembersListed(_Base, frozen=True):
    """Part of the member list of an archive still being built, in archive
    order: the builder writes a long list out in pieces of at most
    `MEMBERS_PER_RECORD`, and `ArchiveSealed.members` holds the rest, so no
    record (and no list held in memory) grows with the number of files. The
    summary fields of `ArchiveSealed` cover the whole list."""

    archive: str
    members: list[Member]


class MembersListedHead(_Base, frozen=True, tag="MembersListed"):
    """`MembersListed` without its members: what the fold reads."""

    archive: str


#: The most members one record holds (MembersListed, or the tail in ArchiveSealed).
MEMBERS_PER_RECORD = 4096


class ArchiveSealedHead(_Base, frozen=True, tag="ArchiveSealed"):
    """`ArchiveSealed` without its member list: what the fold reads. Decoding
    into it skips the members without building them (msgspec ignores fields
    a struct does not declare), so replay time and memory do not grow with
    the number of files backed up."""

    archive: str
    staged: str
    size: int
    raw_size: int
    sha256: str
    compression: str
    count: int = 0
    files: int = 0
    bytes: int = 0
    last: Member | None = None
    #: The archive's layers over tar, in writing order ("zstd", "age"); logs
    #: before 0.3 have none: `compression` tells then (see `archive_layers`).
    layers: list[str] = []


class ArchiveDiscarded(_Base, frozen=True):
    """An archive will never be uploaded (partial at a crash, or bad in staging)."""

    archive: str
    reason: str


class UploadStarted(_Base, frozen=True):
    """The uploader began sending an archive to its vault under `key`.

    One part (`upload_id` ""): recorded before the bytes are sent, so every
    attempt is on record. Multipart: recorded once the vault gave the upload
    id, before any part is sent; parts are `part_size` bytes (the last one
    shorter). A crash between the vault's CreateMultipartUpload and this
    event leaves an upload no log knows: the next start aborts it."""

    archive: str
    vault: str  # the vault's identity (SessionOpened.vault)
    key: str
    upload_id: str = ""
    part_size: int = 0


class PartUploaded(_Base, frozen=True):
    """The vault confirmed part `part` (1-based) of a multipart upload, with
    the checksum it verified (S3: base64 SHA-256 of the part)."""

    archive: str
    upload_id: str
    part: int
    size: int
    checksum: str
    etag: str = ""


class UploadLost(_Base, frozen=True):
    """The vault no longer holds the multipart upload `upload_id` (expired,
    aborted, or the server lost its state): the archive is sealed again and
    will be sent anew from staging."""

    archive: str
    upload_id: str
    reason: str


class ArchiveUploaded(_Base, frozen=True):
    """The vault holds the archive: its receipt.

    `sha256` is the archive's own (hex, as sealed); `checksum` is what the
    vault verified, in its own form (vaults/base.py `Receipt`); `key` is
    where to read it back (for Glacier the archive id)."""

    archive: str
    vault: str
    key: str
    size: int
    sha256: str
    checksum: str = ""
    storage_class: str = ""


# -- vault inventories (Glacier) ------------------------------------------------


class InventoryRequested(_Base, frozen=True):
    """An inventory-retrieval job was started in a Glacier vault (`inspect
    --from-vault`); its output is read on a later call, hours later on AWS."""

    vault: str  # the vault's identity
    job: str


class InventoryReceived(_Base, frozen=True):
    """The inventory job's output was read and compared with the log."""

    vault: str
    job: str
    archives: int  # archives the inventory lists
    missing: int  # uploaded in the log, absent from the inventory
    unknown: int  # in the inventory, not in the log


class InventoryLost(_Base, frozen=True):
    """The vault no longer knows the job (expired after about a day) or it failed."""

    vault: str
    job: str
    reason: str


# -- the log itself ---------------------------------------------------------


class OrphanRemoved(_Base, frozen=True):
    """A leftover the log did not account for (a crash between an effect and
    its event) was removed: a staged file, a vault temp file, an upload."""

    where: str  # "staging" or the vault URL
    name: str
    size: int = 0


class LogTailTruncated(_Base, frozen=True):
    """On open, a torn final record was cut off at `offset` (`dropped` bytes)."""

    offset: int
    dropped: int


_EVERY_OTHER_EVENT = (
    SessionOpened
    | SessionResumed
    | SessionPaused
    | SessionCompleted
    | SessionFailed
    | SessionAbandoned
    | ScheduleDecided
    | HookRan
    | CatalogStored
    | EntrySkipped
    | EntryChanged
    | EntryDeleted
    | ArchiveStarted
    | ArchiveDiscarded
    | UploadStarted
    | PartUploaded
    | UploadLost
    | ArchiveUploaded
    | InventoryRequested
    | InventoryReceived
    | InventoryLost
    | OrphanRemoved
    | LogTailTruncated
)

#: Every event, as written.
Event = _EVERY_OTHER_EVENT | ArchiveSealed | MembersListed
#: The union the fold reads: the heads in place of the records with members.
HeadEvent = _EVERY_OTHER_EVENT | ArchiveSealedHead | MembersListedHead

EVENT_TYPES: tuple[type[_Base], ...] = typing.get_args(Event)


#: The suffix each layer adds to an archive's name, after `.tar`.
LAYER_SUFFIXES = {"zstd": ".zst", "age": ".age"}


def archive_layers(layers: list[str], compression: str) -> list[str]:
    """An archive's layers, also for logs that did not record them."""
    if layers:
        return layers
    return [] if compression == "none" else ["zstd"]


def archive_suffix(layers: list[str]) -> str:
    """`.tar`, `.tar.zst`, `.tar.age`, `.tar.zst.age`."""
    return ".tar" + "".join(LAYER_SUFFIXES[n] for n in layers)


def event_name(event: Event | HeadEvent) -> str:
    """The event's tag (an `ArchiveSealedHead` is an `ArchiveSealed`)."""
    return str(type(event).__struct_config__.tag)


def show_path(path: bytes) -> str:
    """A path for people: UTF-8 where it is, backslash escapes where not."""
    return path.decode("utf-8", "backslashreplace")


def to_jsonable(obj: object) -> object:
    """Builtins for JSON output, with paths shown as text (see `show_path`)."""
    if isinstance(obj, bytes):
        return show_path(obj)
    if isinstance(obj, list | tuple):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, msgspec.Struct):
        out: dict[str, object] = {}
        cfg = getattr(type(obj), "__struct_config__", None)
        if cfg is not None and cfg.tag is not None and cfg.tag_field is not None:
            out[cfg.tag_field] = cfg.tag
        for field in obj.__struct_fields__:
            out[field] = to_jsonable(getattr(obj, field))
        return out
    return obj
