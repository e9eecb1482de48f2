"""The age layer: an archive encrypted to X25519 recipients (age v1, by
pyrage: no cryptography of ours), and read back with an identity; the keys.

age's payload is a STREAM of 64 KiB chunks with a 16-byte tag each after a
16-byte nonce, so an encrypted stream of T bytes is exactly
`header + 16 + T + 16 * max(1, ceil(T / 64 KiB))` bytes. The header holds a
stanza per recipient and a random "grease" stanza of under 256 bytes
(age-core's `grease_the_joint`), so its size is bounded, not fixed:
`header_bound` measures it once per set of recipients and adds room for the
largest grease.

pyrage streams between file objects (`encrypt_io`, `decrypt_io`) and keeps
the GIL while it works, giving it up at each read and write it makes (8 KiB
reads). It runs in a thread of the layer's own, fed through a `Pipe`, so the
packer hands over bytes as it makes them and memory stays bounded.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import pyrage

from eventbak.archive.layers import Output

CHUNK = 64 * 1024
TAG = 16
NONCE = 16
#: The grease stanza age-core adds: a line of at most 3 + 17 + 4 * 9 + 1
#: bytes and a body of under 100 bytes (at most 134 base64 characters in
#: lines of 64); 256 bounds it with room to spare.
GREASE_MAX = 256


class AgeError(ValueError):
    """A key or an encrypted stream age refused (the message says why)."""


def encrypted_size(header: int, n: int) -> int:
    """The size of an age file of n plaintext bytes with a header of `header` bytes."""
    return header + NONCE + n + TAG * max(1, -(-n // CHUNK))


@lru_cache(maxsize=8)
def header_bound(recipients: tuple[str, ...]) -> int:
    """An upper bound of the header age writes for these recipients."""
    empty = pyrage.encrypt(b"", [_recipient(r) for r in recipients])
    return len(empty) - NONCE - TAG + GREASE_MAX


# -- keys -----------------------------------------------------------------------


def _recipient(text: str) -> pyrage.x25519.Recipient:
    try:
        return pyrage.x25519.Recipient.from_str(text)
    except pyrage.RecipientError:
        raise AgeError(
            f"{text!r} is not an age recipient (an X25519 public key, age1...)"
        ) from None


def check_recipient(text: str) -> str:
    """The recipient, stripped, if it is an age X25519 public key (AgeError if not)."""
    text = text.strip()
    _recipient(text)
    return text


def read_recipients_file(path: Path) -> list[str]:
    """One recipient per line; blank lines and `#` comments are skipped (as age -R)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AgeError(f"recipients file {path} cannot be read: {_why(exc)}") from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                out.append(check_recipient(line))
            except AgeError as exc:
                raise AgeError(f"{path}, line {n}: {exc}") from None
    if not out:
        raise AgeError(f"recipients file {path} holds no recipient")
    return out


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class Identities:
    """The X25519 identities of an identity file (as `age-keygen` writes it),
    and their recipients. The secret keys never leave this object."""

    def __init__(self, path: Path, keys: list[pyrage.x25519.Identity]) -> None:
        self.path = path
        self.keys = keys
        self.recipients = {str(k.to_public()) for k in keys}

    def __repr__(self) -> str:
        return f"Identities({str(self.path)!r}, {len(self.keys)} keys)"


def load_identities(path: Path) -> tuple[Identities, str]:
    """The identities in `path`, and a warning ("" if none) when the file is
    readable by others. AgeError naming the file if it has none."""
    try:
        st = os.stat(path)
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AgeError(f"identity file {path} cannot be read: {_why(exc)}") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise AgeError(
                f"identity file {path}, line {n} is not an age identity (AGE-SECRET-KEY-1...)"
            ) from None
    if not keys:
        raise AgeError(f"identity file {path} holds no identity")
    warning = ""
    if stat.S_IMODE(st.st_mode) & 0o077:
        warning = (
            f"identity file {path} is readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
        )
    return Identities(path, keys), warning


def generate() -> tuple[str, str]:
    """A new identity: (secret key, its recipient)."""
    key = pyrage.x25519.Identity.generate()
    return str(key), str(key.to_public())


# -- the pipe between the packer (or the tar reader) and pyrage's thread ---------


class Pipe:
    """A bounded byte pipe between two threads: one writes, the other reads.

    Writes are gathered into pieces of about BATCH bytes; at most BACKLOG
    bytes wait. `close` ends the stream (the reader sees b""), `fail` ends it
    with an error the reader raises, `abort` (either side) drops what waits
    and makes every later call on the other side raise BrokenPipeError.
    """

    BATCH = 1024 * 1024
    BACKLOG = 4 * 1024 * 1024

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pieces: deque[bytes] = deque()
        self._waiting = 0
        self._eof = False
        self._broken = False
        self._error: BaseException | None = None
        self._batch: list[bytes | memoryview] = []
        self._batched = 0
        self._cur = memoryview(b"")
        self._off = 0

    # writer side
    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if n:
            self._batch.append(data)
            self._batched += n
            if self._batched >= self.BATCH:
                self._push()
        return n

    def flush(self) -> None:
        pass

    def _push(self) -> None:
        if not self._batch:
            return
        piece = b"".join(self._batch)
        self._batch, self._batched = [], 0
        with self._cv:
            while self._waiting >= self.BACKLOG and not self._broken:
                self._cv.wait()
            if self._broken:
                raise BrokenPipeError("the reading side stopped")
            self._pieces.append(piece)
            self._waiting += len(piece)
            self._cv.notify_all()

    def close(self) -> None:
        self._push()
        with self._cv:
            self._eof = True
            self._cv.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cv:
            self._error = error
            self._eof = True
            self._cv.notify_all()

    # reader side
    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._off >= len(self._cur):
            with self._cv:
                while not self._pieces and not self._eof and not self._broken:
                    self._cv.wait()
                if self._broken:
                    raise BrokenPipeError("the writing side stopped")
                if self._error is not None:
                    raise self._error
                if not self._pieces:
                    return b""
                piece = self._pieces.popleft()
                self._waiting -= len(piece)
                self._cv.notify_all()
            self._cur, self._off = memoryview(piece), 0
        end = len(self._cur) if n < 0 else self._off + n
        out = self._cur[self._off : end]
        self._off += len(out)
        return bytes(out)

    def abort(self) -> None:
        with self._cv:
            self._broken = True
            self._pieces.clear()
            self._waiting = 0
            self._cv.notify_all()


# -- encrypting -------------------------------------------------------------------


class _Into:
    """pyrage's writer: hands each write to the layer's output."""

    def __init__(self, out: Output) -> None:
        self._out = out

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self._out.take(data)
        return len(data)

    def flush(self) -> None:
        pass


class AgeLayer:
    """The stream encrypted to `recipients` into `out`, by pyrage in a thread."""

    name = "age"
    suffix = ".age"

    def __init__(self, out: Output, recipients: Sequence[str]) -> None:
        self._out = out
        self.given = 0
        self._header = header_bound(tuple(recipients))
        keys = [_recipient(r) for r in recipients]
        self._pipe = Pipe()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(keys,), name="eventbak-age", daemon=True
        )
        self._thread.start()

    def _run(self, keys: list[pyrage.x25519.Recipient]) -> None:
        try:
            pyrage.encrypt_io(self._pipe, _Into(self._out), keys)  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the packer at its next call
            # without its traceback, whose frames hold this layer (a cycle)
            self._error = exc.with_traceback(None)
            self._pipe.abort()

    def _raise(self) -> None:
        if self._error is not None:
            raise AgeError(f"encryption failed: {self._error}") from self._error

    def take(self, data: bytes | memoryview) -> None:
        self.given += len(data)
        try:
            self._pipe.write(data)
        except BrokenPipeError:
            self._thread.join()
            self._raise()
            raise

    def final(self, extra: int) -> int:
        return encrypted_size(self._header, self.given + extra)

    @staticmethod
    def expand(n: int) -> int:
        return n + TAG * -(-n // CHUNK)

    @staticmethod
    def fresh(n: int, recipients: Sequence[str]) -> int:
        return encrypted_size(header_bound(tuple(recipients)), n)

    def tighten(self) -> None:
        pass  # `final` is exact but for the grease

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # the thread failed: raised below
            self._pipe.close()
        self._thread.join()
        self._raise()
        self._out.close()

    def abort(self) -> None:
        self._pipe.abort()
        self._thread.join()
        self._out.abort()


# -- decrypting -------------------------------------------------------------------


class Source(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Decrypting:
    """The plaintext of the age stream read from `source`: a file object for
    zstd or tar. pyrage reads `source` in a thread of its own; a key that does
    not match or a damaged stream is an AgeError at the read that meets it.
    `close` stops the thread (the rest of `source` is left unread)."""

    def __init__(self, source: Source, identities: Identities) -> None:
        self._pipe = Pipe()
        self._thread = threading.Thread(
            target=self._run, args=(source, identities.keys), name="eventbak-unage", daemon=True
        )
        self._thread.start()

    def _run(self, source: Source, keys: list[pyrage.x25519.Identity]) -> None:
        try:
            pyrage.decrypt_io(source, self._pipe, keys)  # type: ignore[arg-type]
        except BaseException as exc:
            self._pipe.fail(AgeError(str(exc)))
        else:
            self._pipe.close()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._pipe.read(n)

    def readinto(self, buffer: memoryview) -> int:
        data = self._pipe.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._pipe.abort()
        self._thread.join()
