"""`eventbak.json`: what a vault says about itself, at its top, never secret
and never encrypted: the vault format's version and the vault's id.

A backup writes it once, when the vault lacks it; `eventbak recover` reads
it first, and refuses a vault whose format is newer than this eventbak
knows. A Glacier vault has none: its archives cannot be read back without
a retrieval job, so a marker there could be neither checked nor found.
"""

from __future__ import annotations

import secrets
import time

import msgspec

from eventbak.errors import VaultError
from eventbak.vaults import Vault

MARKER = "eventbak.json"
VAULT_FORMAT = 1


class Marker(msgspec.Struct, frozen=True):
    format: int
    vault_id: str
    created: float = 0.0
    tool: str = "eventbak"


def read(vault: Vault) -> Marker | None:
    """The vault's marker; None if it has none (VaultError if it is not ours
    or of a newer format)."""
    data = vault.get_small(MARKER)
    if data is None:
        return None
    try:
        marker = msgspec.json.decode(data, type=Marker)
    except msgspec.DecodeError as exc:
        raise VaultError(f"vault {vault.ref}: {MARKER} is not eventbak's ({exc})") from None
    if marker.format > VAULT_FORMAT:
        raise VaultError(
            f"vault {vault.ref} has format {marker.format}; this eventbak reads up to "
            f"{VAULT_FORMAT}: use a newer eventbak"
        )
    return marker


def ensure(vault: Vault) -> Marker | None:
    """The vault's marker, written now if it has none (not on Glacier)."""
    if vault.ref.startswith("glacier://"):
        return None
    marker = read(vault)
    if marker is None:
        marker = Marker(VAULT_FORMAT, secrets.token_hex(16), time.time())
        vault.put_small(MARKER, msgspec.json.encode(marker) + b"\n")
    return marker
