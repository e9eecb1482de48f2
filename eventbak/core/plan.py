"""The upload plan: the next step for one archive, from its folded state and
what the vault reported. Pure: no I/O, no clock, no vault.

"Reconcile, then continue" is one function used three ways:

* the live upload of an archive just sealed (nothing to ask: the vault cannot
  hold what we never sent);
* recovery after a crash, a signal or a deadline (an archive `uploading` in
  the log may be anything in the vault: stored whole, partly, or not at all);
* settling an abandoned session (`goal="settle"`): whatever the vault holds
  whole is recorded as uploaded, everything else is aborted and discarded.

The executor (pipeline/uploader.py) asks `next_step`, performs the step in a
worker thread, records the events it yields on the Trio thread, folds what it
learnt into `Observed`, and asks again, until `Done`.

Why each question is asked:

* `Head` for an archive the log says is `uploading` and whose outcome this
  run has not seen: a put or CompleteMultipartUpload may have finished just
  before the crash, unrecorded. A one-part vault that cannot answer (Glacier)
  says None and the archive is sent again: its resume granularity is the
  whole archive.
* `CheckStaged` before sending anything from staging after an interruption:
  the staged bytes must still be the bytes sealed (and hashed) before.
* `ListParts` before continuing a multipart upload: the vault's list is the
  truth; a part the log records but the vault lacks is sent again; a part
  the vault holds but the log does not (sent, crash before its event) is
  adopted if its size is right and the vault lists its checksum (completing
  needs every part's checksum), else sent again; a part whose listed
  checksum disagrees with the log's is sent again; an upload id the vault
  no longer knows is `Forget`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from eventbak.core import events as ev
from eventbak.core.state import ArchiveState
from eventbak.vaults.base import MAX_PARTS, Held, Part, PartRange, part_ranges

Goal = Literal["upload", "settle"]


@dataclass
class Observed:
    """What this run learnt about one archive from the vault and from staging.

    `head` says whether the vault was asked; `held` is what it said (None:
    nothing there). `parts` likewise for the upload's parts: `vault_parts`
    (None: the upload id is gone) holds what ListParts said, then each part
    this run sent as the vault confirmed it."""

    head: bool = False
    held: Held | None = None
    parts: bool = False
    vault_parts: list[Part] | None = None
    staged: Literal["unchecked", "ok", "missing", "damaged"] = "unchecked"

    @classmethod
    def fresh(cls) -> Observed:
        """For an archive this run sealed: staged bytes known good, nothing
        in the vault."""
        return cls(head=True, held=None, staged="ok")


# -- steps --------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """Ask what the vault holds under the archive's key."""


@dataclass(frozen=True)
class CheckStaged:
    """Hash the staged file against the sealed SHA-256."""


@dataclass(frozen=True)
class ListParts:
    upload_id: str


@dataclass(frozen=True)
class Adopt:
    """The vault holds the archive whole: record it as uploaded."""

    held: Held


@dataclass(frozen=True)
class Put:
    """Send the whole staged file in one request (recording UploadStarted first
    unless `again`: a one-part upload already on record being sent again)."""

    again: bool = False


@dataclass(frozen=True)
class Begin:
    """Start a multipart upload with parts of `part_size` bytes."""

    part_size: int


@dataclass(frozen=True)
class SendParts:
    upload_id: str
    ranges: tuple[PartRange, ...]
    #: parts the vault holds that the log lacks: record them first
    adopt: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Complete:
    upload_id: str
    parts: tuple[Part, ...]
    adopt: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Forget:
    """Record that the upload id is gone; the archive is sealed again."""

    upload_id: str
    reason: str


@dataclass(frozen=True)
class Abort:
    """Abort the multipart upload (settling), then discard."""

    upload_id: str


@dataclass(frozen=True)
class Discard:
    reason: str


@dataclass(frozen=True)
class Done:
    pass


Step = (
    Head | CheckStaged | ListParts | Adopt | Put | Begin | SendParts | Complete | Forget | Abort
    | Discard | Done
)  # fmt: skip


def part_size_for(size: int, part_size: int) -> int:
    """`part_size`, raised (in whole MiB) if the archive would need more than
    S3's 10,000 parts."""
    if size <= part_size * MAX_PARTS:
        return part_size
    mib = 1024 * 1024
    need = -(-size // MAX_PARTS)
    return -(-need // mib) * mib


def _holds_archive(a: ArchiveState, held: Held, expected: Callable[[list[Part]], str]) -> bool:
    if held.size != a.size:
        return False
    if not held.checksum:
        return True  # a vault that reports none (Glacier) is trusted on size
    parts = [_part(p) for _, p in sorted(a.parts.items())] if a.upload_id else []
    want = expected(parts)
    return not want or held.checksum == want


def _part(e: ev.PartUploaded) -> Part:
    return Part(e.part, e.size, e.checksum, e.etag)


def next_step(
    a: ArchiveState,
    obs: Observed,
    vault_part_size: int | None,
    expected: Callable[[list[Part]], str],
    goal: Goal = "upload",
) -> Step:
    """The next step for archive `a`. `vault_part_size` is the vault's (None:
    one part only); `expected(parts)` the checksum the vault would report for
    the archive sent in `parts` (the vault's `expected_checksum` with the
    archive's SHA-256 bound)."""
    if a.state in ("uploaded", "discarded", "new", "building"):
        return Done()
    if a.state == "uploading" and not obs.head:
        return Head()
    # Something else under our key (damage, or a put cut short on a vault
    # without atomic puts) is overwritten, or left alone when settling.
    if obs.held is not None and a.state == "uploading" and _holds_archive(a, obs.held, expected):
        return Adopt(obs.held)
    if goal == "settle":
        if a.state == "uploading" and a.upload_id:
            return Abort(a.upload_id)
        return Discard("session abandoned")
    if obs.staged == "unchecked":
        return CheckStaged()
    if obs.staged != "ok":
        if a.state == "uploading" and a.upload_id:
            return Abort(a.upload_id)
        return Discard(f"staged file {obs.staged}")
    if a.state == "sealed":
        if vault_part_size is None or a.size <= vault_part_size:
            return Put()
        return Begin(part_size_for(a.size, vault_part_size))
    # uploading
    if not a.upload_id:
        return Put(again=True)
    if not obs.parts:
        return ListParts(a.upload_id)
    if obs.vault_parts is None:
        return Forget(a.upload_id, "the vault no longer has the upload")
    ranges = part_ranges(a.size, a.part_size)
    held = {p.number: p for p in obs.vault_parts}  # a later entry (sent since) wins
    adopt: list[Part] = []
    missing: list[PartRange] = []
    done: list[Part] = []
    for r in ranges:
        p = held.get(r.number)
        logged = a.parts.get(r.number)
        if p is None or p.size != r.length:
            missing.append(r)
        elif logged is not None:
            if p.checksum and logged.checksum and p.checksum != logged.checksum:
                missing.append(r)  # not the bytes the log confirmed
            else:  # the log's checksum: listings often lack one (moto, SeaweedFS)
                done.append(Part(r.number, r.length, logged.checksum, logged.etag or p.etag))
        elif p.checksum:
            done.append(p)
            adopt.append(p)
        else:
            # sent just before an interruption, unrecorded, and the vault lists
            # no checksum to complete it with: sent again (at most the parts
            # that were in flight)
            missing.append(r)
    if missing:
        return SendParts(a.upload_id, tuple(missing), tuple(adopt))
    return Complete(a.upload_id, tuple(done), tuple(adopt))
