"""The state of everything eventbak did, as a fold over the event log.

Rule 1: every lifecycle and every state change lives in this module, and
none of it does I/O. The live pipeline and `eventbak replay` both call
`apply(state, event)`, so what the daemon believes and what replay
reconstructs cannot drift apart.

Theory of operation
-------------------
Two lifecycles, each a `transitions` state machine declared as a table:

* A **session** is one backup of one dataset into one vault. It is opened
  `running`; it is `paused` by a signal or a deadline and `running` again
  when resumed; it ends `completed` (every entry stored or skipped),
  `failed` (an error it could not get past) or `abandoned` (a deliberate
  new session replaced it). A crash leaves it `running` in the log: the next
  start resumes it from there (`SessionResumed(after="crash")`).
* An **archive** is `building` in staging, `sealed` once durable there with
  its member list (the catalog), `uploading` while the vault receives it and
  `uploaded` when the vault's receipt is recorded. A building archive lost
  in a crash, or a sealed one whose staged bytes are gone or wrong, is
  `discarded` and its members are packed again.
* Its **upload** is the part of that lifecycle from `sealed` on:
  `UploadStarted` (with the multipart upload id, or none for a one-part
  put) makes it `uploading`; each `PartUploaded` confirms one part and
  stays `uploading`; `ArchiveUploaded` (the receipt: size, the checksum the
  vault verified, storage class) makes it `uploaded`. `UploadLost` (the
  vault no longer has the upload id) makes it `sealed` again: sent anew from
  staging. What to do next in each state, given what the vault reports, is
  decided by core/plan.py, not here.

* An **inventory** job of a Glacier vault is `requested` when started and
  `received` once its output was read and compared with the log, or `lost`
  when the vault no longer knows it (or it failed).

Each event names one trigger of one machine (`_TRIGGERS`). An event that is
illegal in the current state raises `IllegalTransition`: that is a bug or a
damaged log, never something to skip.

The fold mutates and returns the state it is given (replaying a million
events by copying would be too slow); it is deterministic and I/O-free.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from transitions import Machine, MachineError

from eventbak.core import events as ev

SESSION_STATES = ["new", "running", "paused", "completed", "failed", "abandoned"]
SESSION_TABLE: list[tuple[str, str | list[str], str]] = [
    # trigger    source(s)                          destination
    ("open", "new", "running"),
    ("pause", "running", "paused"),
    ("resume", ["paused", "running"], "running"),  # from running: after a crash
    ("complete", "running", "completed"),
    ("fail", ["running", "paused"], "failed"),  # paused: by errors, too many in a row
    ("abandon", ["running", "paused", "failed"], "abandoned"),
]

ARCHIVE_STATES = ["new", "building", "sealed", "uploading", "uploaded", "discarded"]
ARCHIVE_TABLE: list[tuple[str, str | list[str], str]] = [
    ("start", "new", "building"),
    ("seal", "building", "sealed"),
    # from uploading: a one-part put sent again after a crash
    ("begin_upload", ["sealed", "uploading"], "uploading"),
    ("confirm_part", "uploading", "uploading"),
    ("lose_upload", "uploading", "sealed"),
    ("confirm_upload", "uploading", "uploaded"),
    ("discard", ["building", "sealed", "uploading"], "discarded"),
]

INVENTORY_STATES = ["new", "requested", "received", "lost"]
INVENTORY_TABLE: list[tuple[str, str | list[str], str]] = [
    ("request", "new", "requested"),
    ("receive", "requested", "received"),
    ("lose", "requested", "lost"),
]

SESSION_FINAL = frozenset({"completed", "failed", "abandoned"})


class IllegalTransition(Exception):
    """An event that its lifecycle does not allow in the current state."""

    def __init__(self, what: str, state: str, trigger: str, event: ev.Event) -> None:
        super().__init__(
            f"{ev.event_name(event)} is illegal for {what} in state {state!r} (trigger {trigger!r})"
        )
        self.event = event


class _Cursor:
    """The one model object a lifecycle machine steps; states live in the fold."""

    state: str


class Lifecycle:
    """A `transitions` machine built from a table, used to step stored states."""

    def __init__(
        self, name: str, states: list[str], table: list[tuple[str, str | list[str], str]]
    ) -> None:
        self.name = name
        self.states = states
        self.table = table
        self._model = _Cursor()
        self.machine = Machine(
            model=self._model,
            states=states,
            transitions=[{"trigger": t, "source": s, "dest": d} for t, s, d in table],
            initial=states[0],
            auto_transitions=False,
            send_event=False,
        )

    def step(self, what: str, state: str, trigger: str, event: ev.Event) -> str:
        """The state after `trigger` from `state`, or IllegalTransition."""
        self.machine.set_state(state, model=self._model)
        try:
            ok = self._model.trigger(trigger)  # type: ignore[attr-defined]
        except MachineError:
            ok = False
        if not ok:
            raise IllegalTransition(what, state, trigger, event)
        return str(self._model.state)


SESSION_MACHINE = Lifecycle("session", SESSION_STATES, SESSION_TABLE)
ARCHIVE_MACHINE = Lifecycle("archive", ARCHIVE_STATES, ARCHIVE_TABLE)
INVENTORY_MACHINE = Lifecycle("inventory", INVENTORY_STATES, INVENTORY_TABLE)


@dataclass
class SessionState:
    id: str
    dataset: str
    vault: str  # identity (kind and location)
    paths: list[builtins.bytes]  # (the field `bytes` below shadows the type for msgspec)
    exclude: list[str]
    archive_size: int
    compression: str
    opened_at: float
    state: str = "new"
    updated_at: float = 0.0
    archives: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    archives_uploaded: int = 0
    bytes_uploaded: int = 0
    # `builtins.bytes`: the field `bytes` above shadows the type in this class body
    skipped: dict[builtins.bytes, str] = field(default_factory=dict)  # path -> reason
    changed: dict[builtins.bytes, str] = field(default_factory=dict)  # path -> detail
    # path -> seq of its EntryDeleted: gone since stored (unless stored again later)
    deleted: dict[builtins.bytes, int] = field(default_factory=dict)
    pauses: list[str] = field(default_factory=list)
    crashes: int = 0
    last_member: ev.Member | None = None
    error: str = ""
    vault_url: str = ""  # the URL (with options) of its latest run
    recipients: list[str] = field(default_factory=list)  # age public keys; empty: not encrypted
    catalog: ev.CatalogStored | None = None  # its manifest in the vault
    always_compress: list[str] = field(default_factory=list)
    never_compress: list[str] = field(default_factory=list)
    base: str = ""  # the completed session it stores the changes since
    vault_template: str = ""  # the configured vault URL, with its date tag
    ignore_inode: bool = False
    ignore_ctime: bool = False

    @property
    def interruptions(self) -> int:
        return len(self.pauses) + self.crashes

    @property
    def unfinished(self) -> bool:
        return self.state in ("running", "paused")


@dataclass
class ArchiveState:
    id: str
    session: str
    index: int
    state: str = "new"
    started_at: float = 0.0
    # which run of its session built it (interruptions so far): the members of
    # one run are in walk order; a resumed run starts over from the top
    run: int = 0
    staged: str = ""
    size: int = 0
    raw_size: int = 0
    sha256: str = ""
    compression: str = ""
    layers: list[str] = field(default_factory=list)  # over tar, in writing order
    # the member list stays in the log (records at `listed` then the seal's
    # at `offset`: statedir.members); the fold keeps its summary only, so
    # memory does not grow with files
    offset: int = -1
    listed: list[int] = field(default_factory=list)
    count: int = 0
    files: int = 0
    bytes: int = 0
    last: ev.Member | None = None
    sealed_seq: int = 0
    sealed_at: float = 0.0
    vault: str = ""
    key: str = ""
    # the upload in progress: its id ("" for a one-part put), part size and
    # the parts the vault confirmed (number -> part); cleared once uploaded
    upload_id: str = ""
    part_size: int = 0
    parts: dict[int, ev.PartUploaded] = field(default_factory=dict)
    # the receipt
    checksum: str = ""
    storage_class: str = ""
    uploaded_at: float = 0.0
    discard_reason: str = ""

    @property
    def suffix(self) -> str:
        """The name suffix of its staged file and vault object."""
        return ev.archive_suffix(self.layers)


@dataclass
class InventoryState:
    job: str
    vault: str
    requested_at: float
    state: str = "new"
    received_at: float = 0.0
    archives: int = 0
    missing: int = 0
    unknown: int = 0
    reason: str = ""


@dataclass
class State:
    sessions: dict[str, SessionState] = field(default_factory=dict)
    archives: dict[str, ArchiveState] = field(default_factory=dict)
    inventories: dict[str, InventoryState] = field(default_factory=dict)
    seq: int = 0
    truncations: list[tuple[int, int]] = field(default_factory=list)
    #: the daemon's latest decision per dataset
    decisions: dict[str, ev.ScheduleDecided] = field(default_factory=dict)
    orphans: list[tuple[str, str]] = field(default_factory=list)

    @property
    def last_session(self) -> SessionState | None:
        return next(reversed(self.sessions.values()), None)

    def unfinished_sessions(self) -> list[SessionState]:
        return [s for s in self.sessions.values() if s.unfinished]

    def archives_of(self, session: str) -> list[ArchiveState]:
        s = self.sessions[session]
        return [self.archives[a] for a in s.archives]


def _session(state: State, sid: str, event: ev.Event) -> SessionState:
    try:
        return state.sessions[sid]
    except KeyError:
        raise IllegalTransition(f"unknown session {sid}", "absent", "-", event) from None


def _archive(state: State, aid: str, event: ev.Event) -> ArchiveState:
    try:
        return state.archives[aid]
    except KeyError:
        raise IllegalTransition(f"unknown archive {aid}", "absent", "-", event) from None


def _step_session(s: SessionState, trigger: str, event: ev.Event) -> None:
    s.state = SESSION_MACHINE.step(f"session {s.id}", s.state, trigger, event)
    s.updated_at = event.at


def _step_archive(a: ArchiveState, trigger: str, event: ev.Event) -> None:
    a.state = ARCHIVE_MACHINE.step(f"archive {a.id}", a.state, trigger, event)


def apply(state: State, event: ev.Event | ev.HeadEvent, offset: int = -1) -> State:
    """Fold one event, found at `offset` in the log, into `state` (in place)
    and return it."""
    _HANDLERS[type(event)](state, event, offset)
    state.seq += 1  # only once the event was accepted
    return state


def _opened(state: State, e: Any, offset: int = -1) -> None:
    if e.session in state.sessions:
        raise IllegalTransition(f"session {e.session}", "exists", "open", e)
    if e.base:  # a session builds on a completed one only
        b = state.sessions.get(e.base)
        if b is None or b.state != "completed":
            raise IllegalTransition(
                f"base session {e.base}", "absent" if b is None else b.state, "build on", e
            )
    s = SessionState(
        id=e.session,
        dataset=e.dataset,
        vault=e.vault,
        vault_url=e.vault_url or e.vault,
        paths=list(e.paths),
        exclude=list(e.exclude),
        archive_size=e.archive_size,
        compression=e.compression,
        opened_at=e.at,
        recipients=list(e.recipients),
        always_compress=list(e.always_compress),
        never_compress=list(e.never_compress),
        base=e.base,
        vault_template=e.vault_template,
        ignore_inode=e.ignore_inode,
        ignore_ctime=e.ignore_ctime,
    )
    _step_session(s, "open", e)
    state.sessions[e.session] = s


def _resumed(state: State, e: Any, offset: int = -1) -> None:
    s = _session(state, e.session, e)
    _step_session(s, "resume", e)
    if e.vault_url:
        s.vault_url = e.vault_url
    if e.after == "crash":
        s.crashes += 1


def _paused(state: State, e: Any, offset: int = -1) -> None:
    s = _session(state, e.session, e)
    _step_session(s, "pause", e)
    s.pauses.append(e.reason)


def _completed(state: State, e: Any, offset: int = -1) -> None:
    _step_session(_session(state, e.session, e), "complete", e)


def _failed(state: State, e: Any, offset: int = -1) -> None:
    s = _session(state, e.session, e)
    _step_session(s, "fail", e)
    s.error = e.error


def _abandoned(state: State, e: Any, offset: int = -1) -> None:
    s = _session(state, e.session, e)
    _step_session(s, "abandon", e)
    s.error = e.reason


def _skipped(state: State, e: Any, offset: int = -1) -> None:
    _session(state, e.session, e).skipped[e.path] = e.reason


def _changed(state: State, e: Any, offset: int = -1) -> None:
    _session(state, e.session, e).changed[e.path] = e.detail


def _deleted(state: State, e: Any, offset: int = -1) -> None:
    _session(state, e.session, e).deleted[e.path] = state.seq + 1


def _catalog(state: State, e: ev.CatalogStored, offset: int = -1) -> None:
    s = _session(state, e.session, e)
    if s.state != "running":
        raise IllegalTransition(f"session {s.id}", s.state, "store catalog", e)
    s.catalog = e


def _started(state: State, e: Any, offset: int = -1) -> None:
    s = _session(state, e.session, e)
    if e.archive in state.archives:
        raise IllegalTransition(f"archive {e.archive}", "exists", "start", e)
    a = ArchiveState(
        id=e.archive, session=e.session, index=e.index, started_at=e.at, run=s.interruptions
    )
    _step_archive(a, "start", e)
    state.archives[e.archive] = a
    s.archives.append(e.archive)


def _sealed(state: State, e: Any, offset: int) -> None:
    a = _archive(state, e.archive, e)
    _step_archive(a, "seal", e)
    a.staged = e.staged
    a.size = e.size
    a.raw_size = e.raw_size
    a.sha256 = e.sha256
    a.compression = e.compression
    a.layers = ev.archive_layers(e.layers, e.compression)
    a.offset = offset
    a.count = e.count
    a.files = e.files
    a.bytes = e.bytes
    a.last = e.last
    a.sealed_seq = state.seq + 1
    a.sealed_at = e.at
    s = state.sessions[a.session]
    s.files += e.files
    s.bytes += e.bytes
    if e.last is not None:
        s.last_member = e.last


def _listed(state: State, e: Any, offset: int = -1) -> None:
    a = _archive(state, e.archive, e)
    if a.state != "building":
        raise IllegalTransition(f"archive {a.id}", a.state, "list members", e)
    a.listed.append(offset)


def _discarded(state: State, e: Any, offset: int = -1) -> None:
    a = _archive(state, e.archive, e)
    _step_archive(a, "discard", e)
    a.discard_reason = e.reason
    if a.count:  # its members no longer count as stored
        s = state.sessions[a.session]
        s.files -= a.files
        s.bytes -= a.bytes
        s.last_member = None
        for aid in reversed(s.archives):
            other = state.archives[aid]
            if other.state in ("sealed", "uploading", "uploaded") and other.last is not None:
                s.last_member = other.last
                break


def _upload_started(state: State, e: ev.UploadStarted, offset: int = -1) -> None:
    a = _archive(state, e.archive, e)
    _step_archive(a, "begin_upload", e)
    a.vault = e.vault
    a.key = e.key
    a.upload_id = e.upload_id
    a.part_size = e.part_size
    a.parts = {}


def _part_uploaded(state: State, e: ev.PartUploaded, offset: int = -1) -> None:
    a = _archive(state, e.archive, e)
    if a.state == "uploading" and (not a.upload_id or e.upload_id != a.upload_id):
        raise IllegalTransition(
            f"archive {a.id} (upload {a.upload_id or 'in one part'})", a.state, "confirm_part", e
        )
    _step_archive(a, "confirm_part", e)
    a.parts[e.part] = e


def _upload_lost(state: State, e: ev.UploadLost, offset: int = -1) -> None:
    a = _archive(state, e.archive, e)
    if a.state == "uploading" and e.upload_id != a.upload_id:
        raise IllegalTransition(f"archive {a.id} (upload {a.upload_id})", a.state, "lose_upload", e)
    _step_archive(a, "lose_upload", e)
    a.upload_id = ""
    a.part_size = 0
    a.parts = {}


def _uploaded(state: State, e: ev.ArchiveUploaded, offset: int = -1) -> None:
    a = _archive(state, e.archive, e)
    _step_archive(a, "confirm_upload", e)
    a.vault = e.vault
    a.key = e.key
    a.checksum = e.checksum
    a.storage_class = e.storage_class
    a.upload_id = ""
    a.parts = {}
    a.uploaded_at = e.at
    s = state.sessions[a.session]
    s.archives_uploaded += 1
    s.bytes_uploaded += e.size


def _inventory(state: State, e: ev.Event, job: str) -> InventoryState:
    try:
        return state.inventories[job]
    except KeyError:
        raise IllegalTransition(f"unknown inventory job {job}", "absent", "-", e) from None


def _step_inventory(i: InventoryState, trigger: str, e: ev.Event) -> None:
    i.state = INVENTORY_MACHINE.step(f"inventory {i.job}", i.state, trigger, e)


def _inventory_requested(state: State, e: ev.InventoryRequested, offset: int = -1) -> None:
    if e.job in state.inventories:
        raise IllegalTransition(f"inventory {e.job}", "exists", "request", e)
    i = InventoryState(job=e.job, vault=e.vault, requested_at=e.at)
    _step_inventory(i, "request", e)
    state.inventories[e.job] = i


def _inventory_received(state: State, e: ev.InventoryReceived, offset: int = -1) -> None:
    i = _inventory(state, e, e.job)
    _step_inventory(i, "receive", e)
    i.received_at, i.archives, i.missing, i.unknown = e.at, e.archives, e.missing, e.unknown


def _inventory_lost(state: State, e: ev.InventoryLost, offset: int = -1) -> None:
    i = _inventory(state, e, e.job)
    _step_inventory(i, "lose", e)
    i.reason = e.reason


def _decided(state: State, e: ev.ScheduleDecided, offset: int = -1) -> None:
    state.decisions[e.dataset] = e


def _hook_ran(state: State, e: ev.HookRan, offset: int = -1) -> None:
    return None  # the audit trail only: no lifecycle steps


def _truncated(state: State, e: Any, offset: int = -1) -> None:
    state.truncations.append((e.offset, e.dropped))


def _orphan(state: State, e: Any, offset: int = -1) -> None:
    state.orphans.append((e.where, e.name))


_HANDLERS: dict[type, Any] = {
    ev.SessionOpened: _opened,
    ev.SessionResumed: _resumed,
    ev.SessionPaused: _paused,
    ev.SessionCompleted: _completed,
    ev.SessionFailed: _failed,
    ev.SessionAbandoned: _abandoned,
    ev.CatalogStored: _catalog,
    ev.EntrySkipped: _skipped,
    ev.EntryChanged: _changed,
    ev.EntryDeleted: _deleted,
    ev.ArchiveStarted: _started,
    ev.ArchiveSealed: _sealed,
    ev.ArchiveSealedHead: _sealed,
    ev.MembersListed: _listed,
    ev.MembersListedHead: _listed,
    ev.ArchiveDiscarded: _discarded,
    ev.UploadStarted: _upload_started,
    ev.PartUploaded: _part_uploaded,
    ev.UploadLost: _upload_lost,
    ev.ArchiveUploaded: _uploaded,
    ev.InventoryRequested: _inventory_requested,
    ev.InventoryReceived: _inventory_received,
    ev.InventoryLost: _inventory_lost,
    ev.OrphanRemoved: _orphan,
    ev.LogTailTruncated: _truncated,
    ev.ScheduleDecided: _decided,
    ev.HookRan: _hook_ran,
}


def fold(events: list[ev.Event], state: State | None = None) -> State:
    """Fold events that are not read from a log (archive offsets stay -1)."""
    state = state if state is not None else State()
    for e in events:
        apply(state, e)
    return state


def describe_machines() -> str:
    """The lifecycle tables as text (for docs and `eventbak replay --machines`)."""
    lines: list[str] = []
    for lc in (SESSION_MACHINE, ARCHIVE_MACHINE, INVENTORY_MACHINE):
        lines.append(f"{lc.name}: states {', '.join(lc.states)}")
        for trigger, src, dst in lc.table:
            srcs = src if isinstance(src, str) else " | ".join(src)
            lines.append(f"  {srcs:<30} --{trigger}--> {dst}")
    return "\n".join(lines)
