"""Which keys a command uses: the recipients a backup encrypts to (config,
recipients file, `--recipient`), the identity a restore decrypts with
(`--identity`, then `[encryption] identity_file`), and `key generate`.

Recipients are public: they go into the event log (`SessionOpened`), so a
resumed session keeps encrypting to the keys it began with. Identities are
secret: read here, handed to the restore as an object, never printed or
logged (errors name the file, not its content).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from eventbak.archive.age import (
    AgeError,
    Identities,
    check_recipient,
    generate,
    read_recipients_file,
)
from eventbak.archive.age import load_identities as _load
from eventbak.config import EncryptionConfig
from eventbak.errors import KeyProblem, UsageError


def recipients_for(cfg: EncryptionConfig, given: tuple[str, ...]) -> tuple[str, ...]:
    """`--recipient`s if given, else the config's (`recipients` and
    `recipients_file`); () means no encryption. UsageError naming the bad one."""
    out: list[str] = []
    try:
        if given:
            out = [check_recipient(r) for r in given]
        else:
            out = [check_recipient(r) for r in cfg.recipients]
            if cfg.recipients_file:
                out += read_recipients_file(Path(cfg.recipients_file).expanduser())
    except AgeError as exc:
        where = "--recipient" if given else "[encryption]"
        raise UsageError(f"{where}: {exc}") from None
    return tuple(dict.fromkeys(out))


def identities_for(cfg: EncryptionConfig, given: Path | None) -> tuple[Identities | None, str]:
    """The identity file to restore with (None when neither `--identity` nor
    the config names one), and a warning if others can read it."""
    path = given or (Path(cfg.identity_file).expanduser() if cfg.identity_file else None)
    if path is None:
        return None, ""
    try:
        return _load(path)
    except AgeError as exc:
        raise KeyProblem(str(exc)) from None


def write_identity(path: Path | None) -> tuple[str, str]:
    """A new identity written to `path` (0600, never over an existing file),
    or returned for stdout when `path` is None: (file text, recipient)."""
    secret, recipient = generate()
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {recipient}\n{secret}\n"
    if path is not None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise UsageError(f"--output {path} exists: not overwriting a key") from None
        except OSError as exc:
            raise UsageError(f"--output {path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return text, recipient
