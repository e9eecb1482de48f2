"""Which keys a command uses: the recipients a backup encrypts to (config,
recipients file, `--recipient`, the passphrase key), the identity a restore
decrypts with (`--identity`, then `[encryption] identity_file`, then the
passphrase key), and `key generate`.

Recipients are public: they go into the event log (`SessionOpened`), so a
resumed session keeps encrypting to the keys it began with. Identities are
secret: read here, handed to the restore as an object, never printed or
logged (errors name the file, not its content).

**The passphrase key.** With `passphrase_command`, the first backup makes
an X25519 identity, encrypts it with the passphrase in age's scrypt mode
(the identity file as plaintext, so `age -d` opens it), keeps it in the
state directory as `keys/<recipient>.age` and stores the same object in
each vault it backs up to, at `keys/<recipient>.age`; archives are
encrypted to its recipient. A backup needs the passphrase only that first
time (only the public key is needed afterwards); a restore runs the command
and opens the key, from the state directory or else from the vault. One
scrypt per restore, not per archive: archives stream through X25519 at
full speed, and pyrage offers scrypt only on whole messages in memory.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pyrage

from eventbak.archive.age import (
    AgeError,
    Identities,
    check_recipient,
    generate,
    read_recipients_file,
)
from eventbak.archive.age import load_identities as _load
from eventbak.config import EncryptionConfig
from eventbak.core.state import State
from eventbak.errors import KeyProblem, UsageError
from eventbak.fsutil import fsync_dir, private_dir

#: Where a passphrase key lives, in the state directory and in a vault.
KEYS = "keys"


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


def _identity_text() -> tuple[str, str]:
    secret, recipient = generate()
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"# created: {created}\n# public key: {recipient}\n{secret}\n", recipient


def write_identity(path: Path | None) -> tuple[str, str]:
    """A new identity written to `path` (0600, never over an existing file),
    or returned for stdout when `path` is None: (file text, recipient)."""
    text, recipient = _identity_text()
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


# -- the passphrase key -------------------------------------------------------------


def passphrase_from(command: str) -> str:
    """The first line `command` prints (run by the shell); KeyProblem if it
    fails or prints nothing. What it prints is never shown."""
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command], capture_output=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyProblem(f"passphrase_command could not run: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        detail = f": {why[-1][:200]}" if why else ""
        raise KeyProblem(f"passphrase_command failed (exit {done.returncode}){detail}")
    lines = done.stdout.decode(errors="replace").splitlines()
    if not lines or not lines[0]:
        raise KeyProblem("passphrase_command printed no passphrase")
    return lines[0]


def key_name(recipient: str) -> str:
    """The passphrase key's name in the state directory and in a vault."""
    return f"{KEYS}/{recipient}.age"


def passphrase_recipient(state_dir: Path, command: str) -> str:
    """The passphrase key's recipient: the one in the state directory, or a
    new key made now (the passphrase is asked for then only)."""
    keys = state_dir / KEYS
    existing = sorted(keys.glob("age1*.age")) if keys.is_dir() else []
    if existing:
        return existing[0].name.removesuffix(".age")
    passphrase = passphrase_from(command)
    text, recipient = _identity_text()
    wrapped = pyrage.passphrase.encrypt(text.encode(), passphrase)
    private_dir(keys)
    _write_key(keys / f"{recipient}.age", wrapped)
    fsync_dir(keys)
    return recipient


def _write_key(path: Path, data: bytes) -> None:
    """A key file, 0600 whatever the umask, durable under its name (written
    under a temporary one first)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _Store(Protocol):
    ref: str

    def get_small(self, key: str) -> bytes | None: ...

    def put_small(self, key: str, data: bytes) -> object: ...


def has_passphrase_key(state_dir: Path, recipients: tuple[str, ...]) -> bool:
    """Some of `recipients` is a passphrase key of this state directory."""
    return any((state_dir / key_name(r)).exists() for r in recipients)


def store_passphrase_keys(state_dir: Path, recipients: tuple[str, ...], vault: _Store) -> None:
    """Put the passphrase keys among `recipients` into the vault (once per
    vault: the state directory remembers where each is), before any archive
    encrypted to them is stored there."""
    for r in recipients:
        if (state_dir / key_name(r)).exists():
            _store_passphrase_key(state_dir, r, vault)


def _store_passphrase_key(state_dir: Path, recipient: str, vault: _Store) -> None:
    ref = vault.ref
    path = state_dir / KEYS / f"{recipient}.age"
    stored_in = path.with_name(path.name + ".vaults")
    known = stored_in.read_text().splitlines() if stored_in.exists() else []
    if ref in known:
        return
    data = path.read_bytes()
    if vault.get_small(key_name(recipient)) != data:
        vault.put_small(key_name(recipient), data)
    fd = os.open(stored_in, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, "".join(f"{r}\n" for r in [*known, ref]).encode())
    finally:
        os.close(fd)


def passphrase_identities(
    state_dir: Path,
    command: str,
    state: State,
    vault_for: Callable[[str], _Store],
) -> Identities | None:
    """The passphrase keys among the sessions' recipients (the state
    directory's copy, or else the one in a vault of a session encrypted to
    it), opened with the passphrase; None if no recipient is a passphrase key."""
    wrapped: dict[str, bytes] = {}
    for r in dict.fromkeys(r for s in state.sessions.values() for r in s.recipients):
        try:
            data: bytes | None = (state_dir / key_name(r)).read_bytes()
        except FileNotFoundError:
            data = None
            for s in state.sessions.values():
                if data is None and r in s.recipients:  # a vault error is the user's to see
                    data = vault_for(s.vault).get_small(key_name(r))
        if data is not None:
            wrapped[r] = data
    if not wrapped:
        return None
    keys = _open_keys({key_name(r): data for r, data in wrapped.items()}, command)
    return Identities(state_dir / KEYS, keys)


def _open_keys(wrapped: dict[str, bytes], command: str) -> list[pyrage.x25519.Identity]:
    """Passphrase keys (name -> the scrypt-wrapped identity) opened with the
    passphrase `command` prints (asked once)."""
    passphrase = passphrase_from(command)
    keys = []
    for name, data in wrapped.items():
        try:
            text = pyrage.passphrase.decrypt(data, passphrase).decode()
            keys.append(pyrage.x25519.Identity.from_str(text.strip().splitlines()[-1]))
        except (pyrage.DecryptError, pyrage.IdentityError, UnicodeDecodeError, IndexError):
            raise KeyProblem(
                f"the passphrase does not open the key {name} (wrong passphrase?)"
            ) from None
    return keys


class _Listing(_Store, Protocol):
    def list_small(self, prefix: str) -> list[str]: ...


def recover_passphrase_keys(state_dir: Path, command: str, vault: _Listing) -> Identities | None:
    """The vault's passphrase keys (`keys/age1....age`), opened with the
    passphrase and kept in the state directory as they were (`eventbak
    recover`: later backups go on encrypting to the same key); None if the
    vault holds none."""
    names = [k for k in vault.list_small(f"{KEYS}/") if k.endswith(".age")]
    wrapped = {k: vault.get_small(k) for k in names}
    found = {k: d for k, d in wrapped.items() if d is not None}
    if not found:
        return None
    keys = _open_keys(found, command)
    private_dir(state_dir / KEYS)
    for k, data in found.items():
        _write_key(state_dir / k, data)
    fsync_dir(state_dir / KEYS)
    return Identities(state_dir / KEYS, keys)
