"""Checkpoints of the fold: the state as folded up to a point of the event
log, kept beside it (`<state dir>/checkpoint`), so that opening the state
dir (`status`, `restore`, a backup's start) folds only the records after it.

A checkpoint is a cache, never the truth: it is used only if the log still
holds, at the checkpoint's `last` offset, a record of the length and CRC it
recorded that ends exactly at its `offset` (a log replaced, cut or rewritten
fails that), and if it decodes as this version's (a checkpoint of another
format or a damaged one is ignored, and the log is folded from its start).
Folding from a checkpoint gives the state folding from the start gives
(tests/test_checkpoint.py holds them together).

Layout: MessagePack of `Checkpoint` (the `State` dataclasses as maps),
written to a temporary name and renamed; not fsynced (losing it only costs
a longer fold).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

from eventbak.core.log import FRAME
from eventbak.core.state import State

NAME = "checkpoint"
FORMAT = 1


class Checkpoint(msgspec.Struct):
    format: int
    offset: int  # where the first record not folded in starts (the log's end then)
    seq: int  # how many records are folded in
    last: int  # where the last record folded in starts
    head: bytes  # that record's frame head (length and CRC)
    state: State


def path_of(root: Path) -> Path:
    return root / NAME


def save(root: Path, state: State, offset: int, seq: int, last: int, head: bytes) -> None:
    """Write a checkpoint of `state`, folded from the log's `seq` records up
    to `offset` (best effort: a checkpoint that cannot be written is not)."""
    data = msgspec.msgpack.encode(Checkpoint(FORMAT, offset, seq, last, head, state))
    tmp = path_of(root).with_name(NAME + ".tmp")
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path_of(root))


def load(root: Path, log: Path) -> Checkpoint | None:
    """The checkpoint of `root`, if there is one that fits the log `log`."""
    try:
        data = path_of(root).read_bytes()
        cp = msgspec.msgpack.decode(data, type=Checkpoint)
    except (OSError, msgspec.DecodeError):
        return None
    if cp.format != FORMAT or len(cp.head) != FRAME.size or cp.last < 0:
        return None
    try:
        with open(log, "rb") as f:
            f.seek(cp.last)
            head = f.read(FRAME.size)
    except OSError:
        return None
    length, _ = FRAME.unpack(cp.head)
    if head != cp.head or cp.last + FRAME.size + length != cp.offset:
        return None
    return cp
