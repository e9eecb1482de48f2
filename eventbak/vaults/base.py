"""The vault steps protocol: what every vault kind offers, as idempotent steps.

A vault never writes the event log. Each step is one blocking call (run in a
worker thread by the pipeline) that either does what it says or raises a
`VaultError` whose message is one line for the user. Steps are idempotent, so
that after any interruption the uploader can ask the vault what it holds
(`head`, `list_parts`) and carry on ("reconcile, then continue",
core/plan.py).

Two ways to send an archive:

* **one part** (`put`): the whole staged file in one request. Every vault
  has it; a vault whose `part_size` is None has only this (the local
  directory, Glacier's UploadArchive), and S3 uses it for archives no larger
  than one part.
* **multipart** (`begin`, `send_part`..., `complete`, or `abort`): parts of
  `part_size` bytes (the last one shorter), numbered from 1, each confirmed
  by the vault with a checksum it verified. `list_parts` tells which parts an
  unfinished upload holds; it returns None once the upload id is gone
  (completed, aborted, expired, or the server lost its state).

The receipt of a finished upload (size, the checksum the vault verified,
storage class) replaces reading the object back: a Deep Archive object
cannot be read without a thaw.

Identity: `ref` names the vault by kind and location only (`file:///dir`,
`s3://bucket/prefix`, `glacier://name`), never by options such as
`part_size=` or `concurrency=`; sessions are tied to their vault by `ref`.
`url` is the URL with its options, as the user gave it (it never holds
credentials: those come from boto3's standard chain).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

#: Where an object is in the cold-storage cycle: readable now; frozen (a thaw
#: must be requested); thawing (requested, not ready yet); thawed (a readable
#: copy exists until the thaw expires).
ThawState = Literal["readable", "frozen", "thawing", "thawed"]

#: How fast a thaw should be (S3 RestoreObject tiers / Glacier job tiers).
Tier = Literal["Standard", "Bulk", "Expedited"]


@dataclass(frozen=True)
class Part:
    """One part the vault confirmed: `checksum` is what it verified (S3: the
    base64 SHA-256 of the part's bytes)."""

    number: int
    size: int
    checksum: str
    etag: str = ""


@dataclass(frozen=True)
class Receipt:
    """What the vault confirmed it holds after an upload.

    `key` is where to read the object back (for Glacier the archive id the
    vault chose); `checksum` is the vault's own checksum in its own form
    (local: hex SHA-256; S3: base64 SHA-256, or for a multipart object the
    base64 SHA-256 of the parts' digests followed by `-N`; Glacier: the hex
    SHA-256 tree hash); `storage_class` is "" where the vault has none."""

    key: str
    size: int
    checksum: str
    storage_class: str = ""


@dataclass(frozen=True)
class Held:
    """What `head` found under a key."""

    size: int
    checksum: str  # same form as Receipt.checksum; "" if the vault cannot say
    storage_class: str = ""
    thaw: ThawState = "readable"


@dataclass(frozen=True)
class Unfinished:
    """A multipart upload the vault still holds open."""

    key: str
    upload_id: str
    size: int = 0  # bytes held, where the vault can tell cheaply


class Vault(Protocol):
    url: str
    ref: str
    #: Bytes per part of a multipart upload; None: one-part only (`put`).
    part_size: int | None
    #: Parts in flight at once.
    concurrency: int
    #: The directory on this machine that holds the vault's bytes, if any
    #: (a backup never reads it); None for remote vaults.
    local_root: Path | None

    def prepare(self) -> None:
        """Create the vault if its kind allows and check it accepts writes
        (VaultError naming the problem if not)."""

    def key_for(self, session: str, archive: str, suffix: str) -> str:
        """Where an archive is stored: ids only, never file names."""

    def expected_checksum(self, sha256: str, parts: list[Part]) -> str:
        """The checksum this vault reports (`Held.checksum`) for an object
        whose bytes hash to `sha256` (hex), sent in `parts` ([] for one part).
        Pure; "" if this vault reports none."""

    # -- one part -----------------------------------------------------------

    def put(self, key: str, source: Path, size: int, sha256: str) -> Receipt:
        """Store the whole of `source` under `key` (atomically: a reader sees
        all of it or nothing), the vault verifying its checksum."""

    # -- multipart ----------------------------------------------------------

    def begin(self, key: str) -> str:
        """Start a multipart upload to `key`; returns its upload id."""

    def send_part(
        self, key: str, upload_id: str, number: int, source: Path, offset: int, length: int
    ) -> Part:
        """Send bytes [offset, offset+length) of `source` as part `number`,
        with its SHA-256 for the vault to verify. `UploadGone` if the upload
        id no longer exists."""

    def list_parts(self, key: str, upload_id: str) -> list[Part] | None:
        """The parts the upload holds, in order; None if the upload id is gone."""

    def complete(
        self, key: str, upload_id: str, parts: list[Part], size: int, sha256: str
    ) -> Receipt:
        """Join `parts` into the object under `key`. `UploadGone` if the upload
        id no longer exists (the caller then asks `head`: it may have completed)."""

    def abort(self, key: str, upload_id: str) -> None:
        """Abandon the upload and free its parts (no error if already gone)."""

    def unfinished(self, sessions: set[str]) -> list[Unfinished]:
        """Open multipart uploads (or other leftovers, which `abort` removes)
        of archives of these sessions only: another state dir's uploads into
        the same vault are never listed."""

    # -- reading and small objects -----------------------------------------

    def head(self, key: str) -> Held | None:
        """What the vault holds under `key`, or None."""

    def put_small(self, key: str, data: bytes) -> Receipt:
        """Store a small object (a catalog, eventbak.json) in a hot class."""

    def get_small(self, key: str) -> bytes | None:
        """A small object's bytes, or None if absent."""

    def list_small(self, prefix: str) -> list[str]:
        """The keys of the small objects under `prefix` (`catalog/`), sorted.
        A vault that cannot list without an inventory job (Glacier) raises
        VaultError saying so."""

    def request_thaw(self, key: str, tier: Tier, days: int) -> None:
        """Ask for a readable copy of a frozen object (idempotent: asking
        while a thaw runs is not an error). A no-op where nothing freezes."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object (VaultError if absent or frozen)."""

    def close(self) -> None:
        """Release connections and threads."""


#: S3's limit on the parts of one multipart upload.
MAX_PARTS = 10_000


@dataclass(frozen=True)
class PartRange:
    number: int
    offset: int
    length: int


def part_ranges(size: int, part_size: int) -> list[PartRange]:
    """The parts of an object of `size` bytes cut at `part_size` (at least one)."""
    if size <= 0:
        return [PartRange(1, 0, 0)]
    return [
        PartRange(i + 1, off, min(part_size, size - off))
        for i, off in enumerate(range(0, size, part_size))
    ]
