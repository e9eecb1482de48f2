"""A Glacier vault's inventory against the log: `eventbak inspect --from-vault`.

Glacier lists a vault only through an inventory-retrieval job that takes
hours (moto: seconds), so this is a job across calls, recorded in the log:

* the first call starts the job (`InventoryRequested`) and returns;
* a later call (or the same one with `wait`) finds the job in the log, asks
  the vault about it, and once it succeeded reads the inventory, compares it
  with the log and records the outcome (`InventoryReceived`); a job the
  vault no longer knows (outputs expire after about a day) or that failed is
  recorded `InventoryLost` and a new one is started.

The comparison: every archive the log says is uploaded to this vault before
the job started must be in the inventory (else it is *missing*); every
archive of the inventory must be in the log (else it is *unknown*: one of
ours that an interrupted upload left behind, a duplicate, when its
description names a session of this state dir; someone else's otherwise).
Glacier's inventory is updated about once a day, so an archive uploaded
shortly before the job may be reported missing although it is there: the
report gives the upload times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from eventbak.core import events as ev
from eventbak.core.state import InventoryState
from eventbak.errors import UsageError, VaultError
from eventbak.statedir import StateDir


class InventoryEntryLike(Protocol):
    archive_id: str
    size: int
    key: str | None


@runtime_checkable
class InventoryVault(Protocol):
    """The steps of a vault that lists itself by an inventory job (Glacier)."""

    ref: str

    def start_inventory(self) -> str: ...

    def job_status(self, job_id: str) -> Literal["InProgress", "Succeeded", "Failed"]: ...

    def read_inventory(self, job_id: str) -> list[InventoryEntryLike]: ...


@dataclass
class Missing:
    archive: str
    key: str
    size: int
    uploaded_at: float


@dataclass
class Unknown:
    key: str  # the vault's archive id
    size: int
    ours: bool  # its description names a session of this state dir
    description_key: str | None


@dataclass
class InventoryReport:
    vault: str
    job: str
    status: Literal["started", "running", "received"]
    requested_at: float
    archives: int = 0
    missing: list[Missing] = field(default_factory=list)
    unknown: list[Unknown] = field(default_factory=list)


def check(
    sd: StateDir,
    vault: object,
    wait: bool = False,
    poll: float = 60.0,
    on_wait: Callable[[InventoryReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> InventoryReport:
    """Start, continue or finish the inventory job of `vault` (see the module)."""
    if not isinstance(vault, InventoryVault):
        raise UsageError(
            "--from-vault needs a glacier:// vault (S3 and local vaults answer from the log "
            "and a listing; Glacier only by an inventory job)"
        )
    from eventbak.vaults.glacier import JobGone

    ref = vault.ref
    pending = [
        i for i in sd.state.inventories.values() if i.vault == ref and i.state == "requested"
    ]
    job = pending[-1] if pending else _start(sd, vault)
    started = not pending  # by this call
    while True:
        try:
            status = vault.job_status(job.job)
        except JobGone as exc:
            status, why = "Failed", f"the vault no longer knows the job ({exc})"
        else:
            why = "the job failed"
        if status == "Succeeded":
            return _receive(sd, vault, job)
        if status == "Failed":
            sd.record(ev.InventoryLost(at=time.time(), vault=ref, job=job.job, reason=why))
            sd.commit()
            if started:
                raise VaultError(f"vault {ref}: inventory job {job.job}: {why}")
            job, started = _start(sd, vault), True
            continue
        status_now: Literal["started", "running"] = "started" if started else "running"
        report = InventoryReport(ref, job.job, status_now, job.requested_at)
        if not wait:
            return report
        if on_wait is not None:
            on_wait(report)
        sleep(poll)


def _start(sd: StateDir, vault: InventoryVault) -> InventoryState:
    job = vault.start_inventory()
    sd.record(ev.InventoryRequested(at=time.time(), vault=vault.ref, job=job))
    sd.commit()
    return sd.state.inventories[job]


def _receive(sd: StateDir, vault: InventoryVault, job: InventoryState) -> InventoryReport:
    entries = vault.read_inventory(job.job)
    state = sd.state
    in_log = {
        a.key: a for a in state.archives.values() if a.state == "uploaded" and a.vault == vault.ref
    }
    # the sessions' manifests are archives of the vault too
    catalogs = {
        s.catalog.key: s.catalog
        for s in state.sessions.values()
        if s.catalog is not None and s.vault == vault.ref
    }
    listed = {e.archive_id for e in entries}
    report = InventoryReport(vault.ref, job.job, "received", job.requested_at, len(entries))
    for key, a in in_log.items():
        if key not in listed and a.uploaded_at < job.requested_at:
            report.missing.append(Missing(a.id, key, a.size, a.uploaded_at))
    for key, c in catalogs.items():
        if key not in listed and c.at < job.requested_at:
            report.missing.append(Missing(f"catalog of {c.session}", key, c.size, c.at))
    for e in entries:
        if e.archive_id in in_log or e.archive_id in catalogs:
            continue
        parts = (e.key or "").split("/")
        if len(parts) == 2 and parts[0] == "catalog":  # catalog/<session>.mf...
            session = parts[1].split(".")[0]
        else:  # archives/<session>/<archive>...
            session = parts[1] if len(parts) >= 3 else ""
        report.unknown.append(Unknown(e.archive_id, e.size, session in state.sessions, e.key))
    sd.record(
        ev.InventoryReceived(
            at=time.time(), vault=vault.ref, job=job.job, archives=len(entries),
            missing=len(report.missing), unknown=len(report.unknown),
        )
    )  # fmt: skip
    sd.commit()
    return report
