"""The vault interface every kind implements (blocking; called from threads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class Stored:
    """What the vault confirmed it holds under `key`."""

    key: str
    size: int
    sha256: str


class Vault(Protocol):
    url: str

    def prepare(self) -> None:
        """Create the vault if needed and check it accepts writes (VaultError if not)."""

    def key_for(self, session: str, archive: str, suffix: str) -> str:
        """Where an archive is stored in this vault."""

    def put(self, key: str, source: Path, sha256: str) -> Stored:
        """Store `source` under `key` atomically; confirm the stored bytes hash to `sha256`."""

    def confirm(self, key: str, sha256: str) -> Stored | None:
        """What the vault holds under `key` if its checksum is `sha256`, else None."""

    def remove_orphans(self, sessions: set[str]) -> list[tuple[str, int]]:
        """Remove leftovers of interrupted uploads of these sessions (never
        another state dir's); returns (name, size) of each."""

    def stat(self, key: str) -> int | None:
        """Size of the object under `key`, or None if absent."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object under `key` (VaultError if absent)."""
