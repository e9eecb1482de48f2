"""Vaults: where archives are stored. `open_vault(url)` picks the kind by URL."""

from __future__ import annotations

from eventbak.config import check_vault_url
from eventbak.vaults.base import Stored, Vault
from eventbak.vaults.local import LocalVault

__all__ = ["LocalVault", "Stored", "Vault", "open_vault"]


def open_vault(url: str) -> Vault:
    check_vault_url(url)
    return LocalVault(url)
