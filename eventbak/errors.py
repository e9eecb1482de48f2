"""The errors a user can cause or meet, each with its exit code.

Anything raised as an `EventbakError` is printed by the CLI as one line and
exits with `exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class EventbakError(Exception):
    """A failure the user can understand and act on (exit 1)."""

    exit_code = EXIT_FAILURE


class UsageError(EventbakError):
    """Bad option, path or configuration (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration file that cannot be used (exit 2)."""


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
    """The vault refused or failed an operation."""
