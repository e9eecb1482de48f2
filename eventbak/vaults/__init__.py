"""Vaults: where archives are stored. `open_vault(url)` picks the kind by URL
(vaults/url.py); every kind implements the steps of vaults/base.py."""

from __future__ import annotations

from collections.abc import Mapping

from eventbak.vaults.base import Held, Part, Receipt, Unfinished, Vault
from eventbak.vaults.local import LocalVault
from eventbak.vaults.url import VaultSpec, parse_vault

__all__ = [
    "Held", "LocalVault", "Part", "Receipt", "Unfinished", "Vault", "VaultSpec", "open_vault",
    "parse_vault",
]  # fmt: skip


def open_vault(url: str, options: Mapping[str, object] | None = None) -> Vault:
    """The vault a URL names (UsageError if malformed). No network access yet:
    `prepare` is the first step that talks to it."""
    spec = parse_vault(url, options)
    if spec.kind == "s3":
        from eventbak.vaults.s3 import S3Vault

        return S3Vault(spec)
    if spec.kind == "glacier":
        from eventbak.vaults.glacier import GlacierVault

        return GlacierVault(spec)
    return LocalVault(spec.path, url)
