"""Realistic event sequences for the log and fold tests.

`sample_events()` is one legal history that uses every event type of
`events.EVENT_TYPES`, with paths that are not UTF-8 and archive members of
every kind (a segmented file included). It folds without error, so it can
be fed through `StateDir.record` as well as written to a bare log.
"""

from __future__ import annotations

from eventbak.core import events as ev

T0 = 1_700_000_000.25

#: Paths the OS may hand us that are not UTF-8 (Latin-1 names, stray bytes).
NON_UTF8 = b"/data/caf\xe9/\xff\xfe\x80name.bin"
NON_UTF8_DIR = b"/data/caf\xe9"


def member(
    path: bytes,
    kind: ev.MemberKind = "file",
    size: int = 0,
    *,
    offset: int = 0,
    length: int | None = None,
    target: bytes = b"",
    changed: bool = False,
) -> ev.Member:
    if length is None:
        length = size - offset if kind == "file" else 0
    return ev.Member(
        path=path,
        kind=kind,
        mode=0o644 if kind == "file" else 0o755,
        mtime_ns=1_690_000_000_123_456_789,
        size=size,
        uid=1000,
        gid=1000,
        target=target,
        offset=offset,
        length=length,
        changed=changed,
    )


def opened(session: str, at: float = T0, dataset: str = "home") -> ev.SessionOpened:
    return ev.SessionOpened(
        at=at,
        session=session,
        dataset=dataset,
        vault="file:///mnt/backup/vault",
        paths=[b"/home/me", NON_UTF8_DIR],
        archive_size=64 * 1024 * 1024,
        compression="auto",
        exclude=["*.tmp", "node_modules/"],
        host="nas",
        version="0.1.0",
    )


def sealed(
    archive: str, members: list[ev.Member], at: float = T0, listed: list[ev.Member] | None = None
) -> ev.ArchiveSealed:
    """The seal of `archive` holding `listed` (out in MembersListed before) and `members`."""
    summary = ev.Summary()
    for m in listed or []:
        summary.add(m)
    everything = [*(listed or []), *members]
    raw = sum(m.length for m in everything) + 512 * (len(everything) + 2)
    return ev.ArchiveSealed.of(
        at=at,
        archive=archive,
        staged=f"staging/{archive}.tar.zst",
        size=raw // 2 + 1,
        raw_size=raw,
        sha256="ab" * 32,
        compression="auto",
        members=members,
        listed=summary,
    )


def uploaded(archive: str, size: int, at: float = T0) -> ev.ArchiveUploaded:
    return ev.ArchiveUploaded(
        at=at,
        archive=archive,
        vault="file:///mnt/backup/vault",
        key=f"archives/{archive}",
        size=size,
        sha256="ab" * 32,
    )


def upload_started(archive: str, at: float = T0, multipart: bool = True) -> ev.UploadStarted:
    """Multipart (upload id `up-<archive>`, 5 MiB parts) unless `multipart=False`."""
    return ev.UploadStarted(
        at=at, archive=archive, vault="file:///mnt/backup/vault", key=f"archives/{archive}",
        upload_id=f"up-{archive}" if multipart else "", part_size=5 << 20 if multipart else 0,
    )  # fmt: skip


def part_uploaded(archive: str, part: int = 1, at: float = T0) -> ev.PartUploaded:
    return ev.PartUploaded(
        at=at, archive=archive, upload_id=f"up-{archive}", part=part, size=5 << 20,
        checksum="q83vEjRWeJA=", etag='"e"',
    )  # fmt: skip


def upload_lost(archive: str, at: float = T0) -> ev.UploadLost:
    return ev.UploadLost(
        at=at, archive=archive, upload_id=f"up-{archive}", reason="the vault lost it"
    )


# Members of the sample history (see the expected counters in test_state.py).
A1_MEMBERS = [
    member(b"/home/me", "dir"),
    member(b"/home/me/a.txt", size=100),
    member(NON_UTF8, size=3_000),
    member(b"/home/me/link", "symlink", target=b"a.txt"),
    member(b"/home/me/hard", "hardlink", size=100, target=b"/home/me/a.txt"),
    member(b"/home/me/big.iso", size=10_000, offset=0, length=4_000),  # first segment
]
A2_MEMBERS = [member(b"/home/me/big.iso", size=10_000, offset=4_000, length=6_000)]
A3_MEMBERS = [
    member(b"/home/me/z\xe9bra", size=7, changed=True),
    member(b"/home/me/zz", size=0),
]


def sample_events() -> list[ev.Event]:
    """A legal history using every event type."""
    t = T0
    out: list[ev.Event] = []

    def add(e: ev.Event) -> None:
        out.append(e)

    s1 = "s-0001"
    add(opened(s1, t))
    add(ev.EntrySkipped(at=t + 1, session=s1, path=b"/home/me/fifo", reason="fifo", special=True))
    add(ev.EntrySkipped(at=t + 1, session=s1, path=NON_UTF8 + b".gone", reason="vanished"))
    add(ev.EntryChanged(at=t + 2, session=s1, path=b"/home/me/z\xe9bra", detail="mtime moved"))
    add(ev.ArchiveStarted(at=t + 3, session=s1, archive="a1", index=0))
    a1 = sealed("a1", A1_MEMBERS, t + 4)
    add(a1)
    add(upload_started("a1", t + 5, multipart=False))
    add(uploaded("a1", a1.size, t + 6))
    add(ev.ArchiveStarted(at=t + 7, session=s1, archive="a2", index=1))
    add(sealed("a2", A2_MEMBERS, t + 8))
    add(ev.SessionPaused(at=t + 9, session=s1, reason="signal:SIGTERM"))
    add(ev.ArchiveDiscarded(at=t + 10, archive="a2", reason="staged file is gone"))
    add(ev.SessionResumed(at=t + 11, session=s1, after="paused", pid=4242))
    # found gone on resume: one is stored again below (a3), one stays deleted
    add(ev.EntryDeleted(at=t + 11, session=s1, path=b"/home/me/z\xe9bra"))
    add(ev.EntryDeleted(at=t + 11, session=s1, path=b"/home/me/link"))
    add(ev.OrphanRemoved(at=t + 11, where="staging", name="a2.tar.zst.partial", size=4096))
    add(ev.ArchiveStarted(at=t + 12, session=s1, archive="a3", index=2))
    add(ev.ArchiveStarted(at=t + 12, session=s1, archive="a4", index=3))
    add(ev.ArchiveDiscarded(at=t + 13, archive="a4", reason="partial at a crash"))
    # a3's list in two records: a piece listed while it was built, the rest in its seal
    add(ev.MembersListed(at=t + 12.5, archive="a3", members=A3_MEMBERS[:1]))
    a3 = sealed("a3", A3_MEMBERS[1:], t + 13, listed=A3_MEMBERS[:1])
    add(a3)
    add(upload_started("a3", t + 14))
    add(part_uploaded("a3", 1, t + 14))
    add(ev.SessionResumed(at=t + 15, session=s1, after="crash", pid=4243))
    add(upload_lost("a3", t + 15))  # the vault forgot the upload: sealed again
    add(upload_started("a3", t + 16, multipart=False))  # sent anew, in one part
    add(uploaded("a3", a3.size, t + 17))
    add(
        ev.CatalogStored(
            at=t + 17.5, session=s1, key=f"catalog/{s1}.mf.zst", size=900, sha256="c" * 64,
            entries=8, layers=["zstd"], checksum="c" * 64,
        )
    )  # fmt: skip
    add(
        ev.SessionCompleted(
            at=t + 18, session=s1, files=6, bytes=7_107, archives=2, skipped=2, changed=1
        )
    )
    add(
        ev.ScheduleDecided(
            at=t + 19, dataset="home", action="sleep", until=t + 3600,
            why="window 22:00-06:00 (UTC) closed; the next session is due at 22:00",
        )
    )  # fmt: skip
    add(
        ev.HookRan(
            at=t + 19.5, dataset="home", when="before", command="zfs snapshot tank@eventbak",
            exit_code=1, output="cannot create snapshot: dataset is busy\n",
        )
    )  # fmt: skip
    add(opened("s-0002", t + 20, dataset="photos"))
    add(ev.SessionFailed(at=t + 21, session="s-0002", error="vault: permission denied"))
    add(ev.SessionAbandoned(at=t + 22, session="s-0002", reason="replaced by s-0003"))
    add(opened("s-0003", t + 23))
    add(ev.ArchiveStarted(at=t + 24, session="s-0003", archive="b1", index=0))
    add(ev.LogTailTruncated(at=t + 25, offset=1234, dropped=17))
    add(ev.InventoryRequested(at=t + 25, vault="glacier://v", job="j1"))
    add(ev.InventoryLost(at=t + 25, vault="glacier://v", job="j1", reason="expired"))
    add(ev.InventoryRequested(at=t + 25, vault="glacier://v", job="j2"))
    add(
        ev.InventoryReceived(at=t + 26, vault="glacier://v", job="j2", archives=3, missing=1,
                             unknown=0)
    )  # fmt: skip
    add(ev.SessionPaused(at=t + 26, session="s-0003", reason="deadline"))
    add(ev.SessionAbandoned(at=t + 27, session="s-0003", reason="user asked"))
    return out


def numbered(n: int) -> list[ev.Event]:
    """`n` small legal events (one session, then skipped entries)."""
    out: list[ev.Event] = [opened("s-num")]
    for i in range(1, n):
        out.append(
            ev.EntrySkipped(at=T0 + i, session="s-num", path=b"/x/%d\xff" % i, reason=f"r{i}")
        )
    return out[:n]
