"""The errors a user can cause or meet, each with its exit code.

Anything raised as an `EventbakError` is printed by the CLI as one line and
exits with `exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_VAULT_REFUSED = 4
EXIT_VAULT_UNREACHABLE = 5
EXIT_KEY = 6


class EventbakError(Exception):
    """A failure the user can understand and act on (exit 1)."""

    exit_code = EXIT_FAILURE


class UsageError(EventbakError):
    """Bad option, path or configuration (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration file that cannot be used (exit 2)."""


class KeyProblem(EventbakError):
    """An encryption key that cannot be used: a recipient that does not
    parse, an identity file missing or unreadable or matching none of the
    archives' recipients, an archive the identity cannot decrypt (exit 6).
    The message names the key or file, never its secret."""

    exit_code = EXIT_KEY


class LogCorrupt(EventbakError):
    """The event log is damaged before its tail; `offset` names the first bad byte."""

    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__(f"event log {path} is corrupt at offset {offset}: {detail}")
        self.path = path
        self.offset = offset
        self.detail = detail


class LockedError(EventbakError):
    """Another eventbak process holds the state directory."""


class VaultError(EventbakError):
    """The vault refused or failed an operation (exit 1 unless a subclass says)."""


class VaultRefused(VaultError):
    """The vault answered but will not do it: missing bucket or vault, access
    denied, bad credentials (exit 4). Retrying will not help until the user
    fixes something."""

    exit_code = EXIT_VAULT_REFUSED


class VaultUnreachable(VaultError):
    """The vault did not answer (connection refused, DNS, timeouts) or kept
    failing after botocore's retries (exit 5). The next run may succeed."""

    exit_code = EXIT_VAULT_UNREACHABLE


class UploadGone(VaultError):
    """A multipart upload id the log knows is no longer open in the vault
    (completed, aborted, expired, or the server lost its state)."""
