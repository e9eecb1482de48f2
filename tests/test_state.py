"""The fold: lifecycles, counters, illegal transitions, and replay == live."""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbak.core import events as ev
from eventbak.core import state as st8
from eventbak.core.log import read_log
from eventbak.core.state import (
    ARCHIVE_STATES,
    ARCHIVE_TABLE,
    SESSION_STATES,
    SESSION_TABLE,
    IllegalTransition,
    State,
    apply,
    fold,
)
from eventbak.statedir import StateDir, log_path, read_state
from tests.eventsamples import (
    A1_MEMBERS,
    A3_MEMBERS,
    NON_UTF8,
    T0,
    member,
    opened,
    part_uploaded,
    sample_events,
    sealed,
    upload_lost,
    upload_started,
    uploaded,
)

# -- the sample history ------------------------------------------------------------


def test_sample_history_folds_to_the_expected_state() -> None:
    events = sample_events()
    s = fold(events)
    assert s.seq == len(events)
    assert list(s.sessions) == ["s-0001", "s-0002", "s-0003"]
    assert s.last_session is s.sessions["s-0003"]
    assert s.unfinished_sessions() == []
    assert s.truncations == [(1234, 17)]

    s1 = s.sessions["s-0001"]
    assert s1.state == "completed"
    assert s1.dataset == "home"
    assert s1.paths == [b"/home/me", b"/data/caf\xe9"]
    assert s1.exclude == ["*.tmp", "node_modules/"]
    assert s1.archives == ["a1", "a2", "a3", "a4"]
    # a1: a.txt, the non-UTF-8 file, the hard link and big.iso's first segment;
    # a2 (big.iso's second segment) was discarded; a3: two more files
    assert s1.files == 6
    assert s1.bytes == 100 + 3_000 + 4_000 + 7 + 0
    assert s1.archives_uploaded == 2
    a1_size = s.archives["a1"].size
    assert s1.bytes_uploaded == a1_size + s.archives["a3"].size
    assert s1.skipped == {b"/home/me/fifo": "fifo", NON_UTF8 + b".gone": "vanished"}
    assert s1.changed == {b"/home/me/z\xe9bra": "mtime moved"}
    # facts as logged; that z\xe9bra was stored again in a3 (sealed after its
    # deletion) is for restore to weigh: see test_restore_leaves_out_deleted_entries
    assert set(s1.deleted) == {b"/home/me/link", b"/home/me/z\xe9bra"}
    assert s1.deleted[b"/home/me/z\xe9bra"] < s.archives["a3"].sealed_seq
    assert s.orphans == [("staging", "a2.tar.zst.partial")]
    assert s1.pauses == ["signal:SIGTERM"]
    assert s1.crashes == 1
    assert s1.interruptions == 2
    assert s1.last_member == A3_MEMBERS[-1]
    assert s1.updated_at == T0 + 18
    assert s1.opened_at == T0
    assert not s1.unfinished

    s2 = s.sessions["s-0002"]
    assert s2.state == "abandoned"
    assert s2.error == "replaced by s-0003"
    assert (s2.files, s2.bytes, s2.archives, s2.last_member) == (0, 0, [], None)

    s3 = s.sessions["s-0003"]
    assert s3.state == "abandoned"
    assert s3.pauses == ["deadline"]
    assert s3.error == "user asked"

    assert {a: x.state for a, x in s.archives.items()} == {
        "a1": "uploaded",
        "a2": "discarded",
        "a3": "uploaded",
        "a4": "discarded",
        "b1": "building",
    }
    a1 = s.archives["a1"]
    assert (a1.count, a1.last) == (len(A1_MEMBERS), A1_MEMBERS[-1])
    assert a1.offset == -1  # folded from events, not read from a log
    assert a1.session == "s-0001"
    assert a1.index == 0
    assert a1.key == "archives/a1"
    assert a1.uploaded_at == T0 + 6
    assert a1.sealed_at == T0 + 4
    assert s.archives["a2"].discard_reason == "staged file is gone"
    assert [a.id for a in s.archives_of("s-0001")] == ["a1", "a2", "a3", "a4"]


def test_fold_is_deterministic_and_in_place() -> None:
    events = sample_events()
    base = State()
    out = fold(events, base)
    assert out is base
    assert fold(events) == fold(sample_events())
    # folding in two halves is folding the whole
    half = len(events) // 2
    assert fold(events[half:], fold(events[:half])) == fold(events)


def test_session_counters_step_by_step() -> None:
    s = fold([opened("s")])
    sess = s.sessions["s"]
    assert (sess.state, sess.files, sess.bytes) == ("running", 0, 0)
    apply(s, ev.ArchiveStarted(at=T0, session="s", archive="x", index=0))
    assert s.archives["x"].state == "building"
    assert sess.files == 0  # building archives count nothing yet
    apply(s, sealed("x", [member(b"/f", size=10), member(b"/d", "dir")]))
    assert (sess.files, sess.bytes) == (1, 10)
    apply(s, upload_started("x"))
    assert (sess.archives_uploaded, sess.bytes_uploaded) == (0, 0)
    apply(s, uploaded("x", 77))
    assert (sess.archives_uploaded, sess.bytes_uploaded) == (1, 77)
    apply(s, ev.SessionPaused(at=T0, session="s", reason="deadline"))
    apply(s, ev.SessionResumed(at=T0, session="s", after="paused"))
    apply(s, ev.SessionResumed(at=T0, session="s", after="crash"))
    apply(s, ev.SessionResumed(at=T0, session="s", after="crash"))
    assert (sess.pauses, sess.crashes, sess.interruptions) == (["deadline"], 2, 3)
    apply(s, ev.SessionFailed(at=T0 + 5, session="s", error="boom"))
    assert (sess.state, sess.error, sess.updated_at) == ("failed", "boom", T0 + 5)
    assert not sess.unfinished


def test_discarded_members_no_longer_count() -> None:
    s = fold([opened("s")])
    sess = s.sessions["s"]
    kept = [member(b"/a", size=5), member(b"/seg", size=100, offset=0, length=40)]
    lost = [
        member(b"/seg", size=100, offset=40, length=60),  # a later segment: no new file
        member(b"/b", size=8),
        member(b"/h", "hardlink", target=b"/b"),
        member(b"/l", "symlink", target=b"/b"),
        member(b"/d", "dir"),
    ]
    for aid, members in (("k", kept), ("l", lost)):
        apply(s, ev.ArchiveStarted(at=T0, session="s", archive=aid, index=0))
        apply(s, sealed(aid, members))
    assert (sess.files, sess.bytes) == (2 + 2, 5 + 40 + 60 + 8)
    apply(s, upload_started("l"))
    apply(s, ev.ArchiveDiscarded(at=T0, archive="l", reason="bad in staging"))
    assert (sess.files, sess.bytes) == (2, 45)
    assert s.archives["l"].state == "discarded"
    # discarding a building archive (no members yet) changes no counter
    apply(s, ev.ArchiveStarted(at=T0, session="s", archive="p", index=2))
    apply(s, ev.ArchiveDiscarded(at=T0, archive="p", reason="partial at a crash"))
    assert (sess.files, sess.bytes) == (2, 45)
    assert sess.archives == ["k", "l", "p"]


def test_discard_moves_last_member_back() -> None:
    # last_member is the resume point: members of a discarded archive must be packed again
    s = fold([opened("s")])
    for aid, members in (("k", [member(b"/a", size=1)]), ("l", [member(b"/b", size=1)])):
        apply(s, ev.ArchiveStarted(at=T0, session="s", archive=aid, index=0))
        apply(s, sealed(aid, members))
    assert s.sessions["s"].last_member == member(b"/b", size=1)
    apply(s, ev.ArchiveDiscarded(at=T0, archive="l", reason="bad in staging"))
    assert s.sessions["s"].last_member == member(b"/a", size=1)
    apply(s, ev.ArchiveDiscarded(at=T0, archive="k", reason="bad in staging"))
    assert s.sessions["s"].last_member is None


def test_deleted_entries() -> None:
    s = fold([opened("s")])
    apply(s, ev.EntryDeleted(at=T0, session="s", path=b"/gone\xff"))
    apply(s, ev.EntryDeleted(at=T0, session="s", path=b"/back"))
    assert s.sessions["s"].deleted == {b"/gone\xff": 2, b"/back": 3}  # path -> seq
    apply(s, ev.ArchiveStarted(at=T0, session="s", archive="x", index=0))
    apply(s, sealed("x", [member(b"/back", size=2)]))
    assert s.archives["x"].sealed_seq == 5  # later than /back's deletion
    with pytest.raises(IllegalTransition, match="unknown session"):
        apply(s, ev.EntryDeleted(at=T0, session="nope", path=b"/x"))


def test_entries_and_truncations_do_not_touch_lifecycles() -> None:
    s = fold([opened("s")])
    apply(s, ev.EntrySkipped(at=T0, session="s", path=b"/dev/x", reason="device", special=True))
    apply(s, ev.EntryChanged(at=T0, session="s", path=b"/y", detail="size changed"))
    apply(s, ev.LogTailTruncated(at=T0, offset=8, dropped=3))
    assert s.sessions["s"].state == "running"
    assert s.sessions["s"].updated_at == T0  # only lifecycle steps move it
    assert s.truncations == [(8, 3)]
    assert s.seq == 4


# -- every transition, legal and illegal, derived from the tables --------------------------

S = "s"
A = "a"


def _session_event(trigger: str) -> ev.Event:
    return {
        "open": opened(S, T0 + 100),
        "pause": ev.SessionPaused(at=T0 + 100, session=S, reason="deadline"),
        "resume": ev.SessionResumed(at=T0 + 100, session=S, after="paused"),
        "complete": ev.SessionCompleted(
            at=T0 + 100, session=S, files=0, bytes=0, archives=0, skipped=0, changed=0
        ),
        "fail": ev.SessionFailed(at=T0 + 100, session=S, error="e"),
        "abandon": ev.SessionAbandoned(at=T0 + 100, session=S, reason="r"),
    }[trigger]


def _archive_event(trigger: str) -> ev.Event:
    return {
        "start": ev.ArchiveStarted(at=T0 + 100, session=S, archive=A, index=0),
        "seal": sealed(A, [member(b"/f", size=3)]),
        "begin_upload": upload_started(A),
        "confirm_part": part_uploaded(A),
        "lose_upload": upload_lost(A),
        "confirm_upload": uploaded(A, 9),
        "discard": ev.ArchiveDiscarded(at=T0 + 100, archive=A, reason="r"),
    }[trigger]


# How to bring one session / one archive into each state with legal events.
# "new" is the state of a session or archive that has no event yet (absent).
SESSION_PREFIX: dict[str, list[str]] = {
    "new": [],
    "running": ["open"],
    "paused": ["open", "pause"],
    "completed": ["open", "complete"],
    "failed": ["open", "fail"],
    "abandoned": ["open", "pause", "abandon"],
}
ARCHIVE_PREFIX: dict[str, list[str]] = {
    "new": [],
    "building": ["start"],
    "sealed": ["start", "seal"],
    "uploading": ["start", "seal", "begin_upload"],
    "uploaded": ["start", "seal", "begin_upload", "confirm_upload"],
    "discarded": ["start", "seal", "discard"],
}


def _sources(src: str | list[str]) -> set[str]:
    return {src} if isinstance(src, str) else set(src)


def test_prefix_tables_cover_the_machines() -> None:
    assert set(SESSION_PREFIX) == set(SESSION_STATES)
    assert set(ARCHIVE_PREFIX) == set(ARCHIVE_STATES)
    for trigger, _, _ in SESSION_TABLE:
        assert ev.event_name(_session_event(trigger))
    for trigger, _, _ in ARCHIVE_TABLE:
        assert ev.event_name(_archive_event(trigger))


def _session_in(state: str) -> State:
    s = fold([_session_event(t) for t in SESSION_PREFIX[state]])
    assert (s.sessions[S].state if S in s.sessions else "new") == state
    return s


def _archive_in(state: str) -> State:
    s = fold([opened(S), *(_archive_event(t) for t in ARCHIVE_PREFIX[state])])
    assert (s.archives[A].state if A in s.archives else "new") == state
    return s


SESSION_LEGAL = [(t, src, d) for t, s, d in SESSION_TABLE for src in sorted(_sources(s))]
SESSION_ILLEGAL = [
    (t, src) for t, s, _ in SESSION_TABLE for src in SESSION_STATES if src not in _sources(s)
]
ARCHIVE_LEGAL = [(t, src, d) for t, s, d in ARCHIVE_TABLE for src in sorted(_sources(s))]
ARCHIVE_ILLEGAL = [
    (t, src) for t, s, _ in ARCHIVE_TABLE for src in ARCHIVE_STATES if src not in _sources(s)
]


def test_final_states_stay_final() -> None:
    # independent of the tables: what the design promises about the ends of the lifecycles
    def exits(table: list[tuple[str, str | list[str], str]], state: str) -> set[str]:
        return {t for t, src, _ in table if state in _sources(src)}

    assert exits(SESSION_TABLE, "completed") == set()
    assert exits(SESSION_TABLE, "abandoned") == set()
    assert exits(SESSION_TABLE, "failed") == {"abandon"}
    assert exits(ARCHIVE_TABLE, "uploaded") == set()
    assert exits(ARCHIVE_TABLE, "discarded") == set()
    # a session paused by errors too many times in a row is failed (the daemon)
    assert exits(SESSION_TABLE, "paused") == {"resume", "abandon", "fail"}
    assert {"completed", "failed", "abandoned"} == st8.SESSION_FINAL


def test_the_tables_leave_illegal_pairs_to_test() -> None:
    # guards against a table change that makes the parametrized tests vacuous
    assert len(SESSION_ILLEGAL) >= 20
    assert len(ARCHIVE_ILLEGAL) >= 20


@pytest.mark.parametrize(("trigger", "src", "dst"), SESSION_LEGAL)
def test_session_legal_transition(trigger: str, src: str, dst: str) -> None:
    s = _session_in(src)
    apply(s, _session_event(trigger))
    assert s.sessions[S].state == dst
    assert s.sessions[S].updated_at == T0 + 100


@pytest.mark.parametrize(("trigger", "src"), SESSION_ILLEGAL)
def test_session_illegal_transition(trigger: str, src: str) -> None:
    s = _session_in(src)
    event = _session_event(trigger)
    with pytest.raises(IllegalTransition) as info:
        apply(s, event)
    assert info.value.event is event
    assert ev.event_name(event) in str(info.value)
    if src != "new":
        assert s.sessions[S].state == src  # the machine did not move


@pytest.mark.parametrize(("trigger", "src", "dst"), ARCHIVE_LEGAL)
def test_archive_legal_transition(trigger: str, src: str, dst: str) -> None:
    s = _archive_in(src)
    apply(s, _archive_event(trigger))
    assert s.archives[A].state == dst


@pytest.mark.parametrize(("trigger", "src"), ARCHIVE_ILLEGAL)
def test_archive_illegal_transition(trigger: str, src: str) -> None:
    s = _archive_in(src)
    event = _archive_event(trigger)
    with pytest.raises(IllegalTransition) as info:
        apply(s, event)
    assert info.value.event is event
    if src != "new":
        assert s.archives[A].state == src
        assert f"{src!r}" in str(info.value) or "exists" in str(info.value)


def test_resume_after_crash_is_legal_from_running_and_paused() -> None:
    for src in ("running", "paused"):
        s = _session_in(src)
        apply(s, ev.SessionResumed(at=T0, session=S, after="crash"))
        assert (s.sessions[S].state, s.sessions[S].crashes) == ("running", 1)


UNKNOWN_SESSION: list[ev.Event] = [
    ev.SessionResumed(at=T0, session="nope", after="crash"),
    ev.SessionPaused(at=T0, session="nope", reason="r"),
    ev.SessionCompleted(at=T0, session="nope", files=0, bytes=0, archives=0, skipped=0, changed=0),
    ev.SessionFailed(at=T0, session="nope", error="e"),
    ev.SessionAbandoned(at=T0, session="nope", reason="r"),
    ev.EntrySkipped(at=T0, session="nope", path=b"/x", reason="r"),
    ev.EntryChanged(at=T0, session="nope", path=b"/x", detail="d"),
    ev.ArchiveStarted(at=T0, session="nope", archive="fresh", index=0),
]
UNKNOWN_ARCHIVE: list[ev.Event] = [
    sealed("nope", []),
    ev.ArchiveDiscarded(at=T0, archive="nope", reason="r"),
    upload_started("nope"),
    uploaded("nope", 1),
]


@pytest.mark.parametrize("event", UNKNOWN_SESSION, ids=ev.event_name)
def test_event_for_unknown_session_raises(event: ev.Event) -> None:
    s = fold([opened("other")])
    with pytest.raises(IllegalTransition, match="unknown session nope"):
        apply(s, event)
    assert list(s.sessions) == ["other"]
    assert s.archives == {}


@pytest.mark.parametrize("event", UNKNOWN_ARCHIVE, ids=ev.event_name)
def test_event_for_unknown_archive_raises(event: ev.Event) -> None:
    s = fold([opened("s"), ev.ArchiveStarted(at=T0, session="s", archive="other", index=0)])
    with pytest.raises(IllegalTransition, match="unknown archive nope"):
        apply(s, event)
    assert list(s.archives) == ["other"]


def test_duplicate_session_and_archive_ids_raise() -> None:
    s = fold([opened("s"), ev.ArchiveStarted(at=T0, session="s", archive="x", index=0)])
    with pytest.raises(IllegalTransition):
        apply(s, opened("s"))
    with pytest.raises(IllegalTransition):
        apply(s, ev.ArchiveStarted(at=T0, session="s", archive="x", index=1))


def test_describe_machines_lists_every_trigger() -> None:
    text = st8.describe_machines()
    for trigger, _, dst in SESSION_TABLE + ARCHIVE_TABLE:
        assert f"--{trigger}--> {dst}" in text


# -- an illegal event is refused without a trace -------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        ev.SessionResumed(at=T0 + 50, session="s-0001", after="crash"),
        ev.SessionPaused(at=T0 + 50, session="s-0001", reason="deadline"),
    ],
    ids=["resumed-after-crash", "paused"],
)
def test_refused_event_leaves_live_state_equal_to_replay(tmp_path: Path, event: ev.Event) -> None:
    sd = StateDir.open(tmp_path)
    try:
        for e in sample_events():
            sd.record(e)
        sd.commit()
        before = copy.deepcopy(sd.state)
        with pytest.raises(IllegalTransition):
            sd.record(event)  # s-0001 is completed
        assert sd.log.pending == 0  # never written ...
        assert sd.state == before  # ... and never applied
        sd.commit()
        assert read_state(tmp_path)[0] == sd.state
    finally:
        sd.close()


# -- replay == live ------------------------------------------------------------------------


def _no_offsets(state: State) -> State:
    """The state as folded from events that were never in a log file."""
    for a in state.archives.values():
        a.offset = -1
        a.listed = [-1] * len(a.listed)
    return state


def _live_and_replayed(root: Path, events: list[ev.Event], commit_every: int = 3) -> None:
    sd = StateDir.open(root)
    try:
        for i, e in enumerate(events, 1):
            sd.record(e)
            if i % commit_every == 0:
                sd.commit()
        sd.commit()
        live = sd.state
        replayed, image = read_state(root)
        assert image.torn is None
        assert [r.event for r in read_log(log_path(root), full=True).records] == events
        assert replayed == live
        assert _no_offsets(replayed) == fold(events)
    finally:
        sd.close()
    reopened = StateDir.open(root)
    try:
        assert reopened.state == live
        assert reopened.torn is None
    finally:
        reopened.close()


def test_replay_equals_live_for_the_sample(tmp_path: Path) -> None:
    _live_and_replayed(tmp_path, sample_events())


def test_replay_until_is_a_prefix_fold(tmp_path: Path) -> None:
    events = sample_events()
    _live_and_replayed(tmp_path, events)
    for k in (0, 1, 7, 13, len(events)):
        assert _no_offsets(read_state(tmp_path, until=k)[0]) == fold(events[:k])


@dataclass
class Model:
    """An independent model of the fold, driven by the tables alone."""

    sessions: dict[str, str] = field(default_factory=dict)
    archives: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (session, state)
    files: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    uploaded: dict[str, tuple[int, int]] = field(default_factory=dict)
    members: dict[str, list[ev.Member]] = field(default_factory=dict)
    crashes: dict[str, int] = field(default_factory=dict)
    pauses: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[bytes, str]] = field(default_factory=dict)
    deleted: dict[str, dict[bytes, int]] = field(default_factory=dict)  # path -> seq
    orphans: list[tuple[str, str]] = field(default_factory=list)


def _next(table: list[tuple[str, str | list[str], str]], trigger: str, cur: str) -> str | None:
    for t, src, dst in table:
        if t == trigger and cur in _sources(src):
            return dst
    return None


def _count(members: list[ev.Member]) -> tuple[int, int]:
    files = sum(1 for m in members if (m.kind == "file" and m.offset == 0) or m.kind == "hardlink")
    return files, sum(m.length for m in members if m.kind == "file")


_paths = st.binary(min_size=1, max_size=2).map(lambda b: b"/" + bytes(0xFD + c % 3 for c in b))

_members = st.lists(
    st.one_of(
        st.builds(
            lambda p, n: member(p, size=n),
            _paths,
            st.integers(0, 10**9),
        ),
        st.builds(
            lambda p, n, off: member(p, size=n + off + 1, offset=off + 1, length=n),
            _paths,
            st.integers(0, 10**6),
            st.integers(0, 10**6),
        ),  # a later segment of a split file
        st.builds(
            lambda p, n: member(p, size=n, offset=0, length=n // 2),
            _paths,
            st.integers(2, 10**6),
        ),  # a first segment
        st.builds(lambda p: member(p, "dir"), _paths),
        st.builds(lambda p: member(p, "symlink", target=b"t"), _paths),
        st.builds(lambda p: member(p, "hardlink", target=b"/x"), _paths),
    ),
    max_size=5,
)


@st.composite
def legal_histories(draw: st.DrawFn) -> tuple[list[ev.Event], Model]:
    m = Model()
    events: list[ev.Event] = []
    at = T0
    for _ in range(draw(st.integers(1, 45))):
        at += 1
        groups: dict[str, list[tuple[str, ...]]] = {
            "open": [("open",)],
            "log": [("truncated",), ("orphan",)],
            "session": [],
            "entry": [],
            "start": [],
            "archive": [],
        }
        for sid, cur in m.sessions.items():
            for trigger, _, _ in SESSION_TABLE:
                if trigger != "open" and _next(SESSION_TABLE, trigger, cur):
                    groups["session"].append(("session", trigger, sid))
            groups["start"].append(("start", sid))
            groups["entry"] += [("skip", sid), ("change", sid), ("delete", sid)]
        for aid, (_, cur) in m.archives.items():
            for trigger, _, _ in ARCHIVE_TABLE:
                if trigger != "start" and _next(ARCHIVE_TABLE, trigger, cur):
                    groups["archive"].append(("archive", trigger, aid))
        # archives have the longest lifecycle: give them most of the steps
        weighted = ["archive"] * 6 + ["start"] * 2 + ["session"] * 2 + ["entry", "open", "log"]
        group = draw(st.sampled_from([g for g in weighted if groups[g]]))
        choice = draw(st.sampled_from(groups[group]))
        kind = choice[0]
        e: ev.Event
        if kind == "open":
            sid = f"s{len(m.sessions)}"
            e = opened(sid, at)
            m.sessions[sid] = "running"
            for d in (m.files, m.bytes, m.crashes, m.pauses):
                d[sid] = 0
            m.skipped[sid] = {}
            m.deleted[sid] = {}
            m.uploaded[sid] = (0, 0)
        elif kind == "truncated":
            e = ev.LogTailTruncated(at=at, offset=draw(st.integers(8, 10**6)), dropped=1)
        elif kind == "start":
            sid = choice[1]
            aid = f"a{len(m.archives)}"
            e = ev.ArchiveStarted(at=at, session=sid, archive=aid, index=len(m.archives))
            m.archives[aid] = (sid, "building")
        elif kind == "orphan":
            e = ev.OrphanRemoved(at=at, where="staging", name=f"o{at}")
            m.orphans.append(("staging", f"o{at}"))
        elif kind == "skip":
            sid = choice[1]
            path, reason = draw(_paths), draw(st.sampled_from(["fifo", "EACCES"]))
            e = ev.EntrySkipped(at=at, session=sid, path=path, reason=reason)
            m.skipped[sid][path] = reason
        elif kind == "delete":
            sid = choice[1]
            path = draw(_paths)
            e = ev.EntryDeleted(at=at, session=sid, path=path)
            m.deleted[sid][path] = len(events) + 1  # the seq this event gets
        elif kind == "change":
            e = ev.EntryChanged(at=at, session=choice[1], path=b"/c\xff", detail="d")
        elif kind == "session":
            trigger, sid = choice[1], choice[2]
            if trigger == "pause":
                e = ev.SessionPaused(at=at, session=sid, reason="deadline")
                m.pauses[sid] += 1
            elif trigger == "resume":
                after = draw(st.sampled_from(["paused", "crash"]))
                e = ev.SessionResumed(at=at, session=sid, after=after)
                m.crashes[sid] += after == "crash"
            elif trigger == "complete":
                e = ev.SessionCompleted(
                    at=at, session=sid, files=0, bytes=0, archives=0, skipped=0, changed=0
                )
            elif trigger == "fail":
                e = ev.SessionFailed(at=at, session=sid, error="e")
            else:
                assert trigger == "abandon"
                e = ev.SessionAbandoned(at=at, session=sid, reason="r")
            nxt = _next(SESSION_TABLE, trigger, m.sessions[sid])
            assert nxt is not None
            m.sessions[sid] = nxt
        else:
            trigger, aid = choice[1], choice[2]
            sid, cur = m.archives[aid]
            if trigger == "seal":
                members = draw(_members)
                e = sealed(aid, members, at)
                m.members[aid] = members
                f, b = _count(members)
                m.files[sid] += f
                m.bytes[sid] += b
            elif trigger == "begin_upload":
                e = upload_started(aid, at)
            elif trigger == "confirm_part":
                e = part_uploaded(aid, draw(st.integers(1, 10_000)), at)
            elif trigger == "lose_upload":
                e = upload_lost(aid, at)
            elif trigger == "confirm_upload":
                size = draw(st.integers(0, 10**9))
                e = uploaded(aid, size, at)
                n, total = m.uploaded[sid]
                m.uploaded[sid] = (n + 1, total + size)
            else:
                assert trigger == "discard"
                e = ev.ArchiveDiscarded(at=at, archive=aid, reason="r")
                f, b = _count(m.members.pop(aid, []))
                m.files[sid] -= f
                m.bytes[sid] -= b
            nxt = _next(ARCHIVE_TABLE, trigger, cur)
            assert nxt is not None
            m.archives[aid] = (sid, nxt)
        events.append(e)
    return events, m


@settings(max_examples=150, deadline=None)
@given(history=legal_histories(), commit_every=st.integers(1, 7))
def test_random_legal_histories(history: tuple[list[ev.Event], Model], commit_every: int) -> None:
    events, m = history
    s = fold(events)
    assert s.seq == len(events)
    assert s.orphans == m.orphans
    assert {k: v.state for k, v in s.sessions.items()} == m.sessions
    assert {k: (v.session, v.state) for k, v in s.archives.items()} == m.archives
    for sid, sess in s.sessions.items():
        assert (sess.files, sess.bytes) == (m.files[sid], m.bytes[sid])
        assert (sess.archives_uploaded, sess.bytes_uploaded) == m.uploaded[sid]
        assert (sess.crashes, len(sess.pauses)) == (m.crashes[sid], m.pauses[sid])
        assert sess.skipped == m.skipped[sid]
        assert sess.deleted == m.deleted[sid]
        assert sess.files >= 0 and sess.bytes >= 0
        assert sess.archives == [a for a, (owner, _) in m.archives.items() if owner == sid]
    with tempfile.TemporaryDirectory() as tmp:
        _live_and_replayed(Path(tmp), events, commit_every)


def test_a_part_of_another_upload_id_is_illegal() -> None:
    s = fold([opened(S), *(_archive_event(t) for t in ARCHIVE_PREFIX["uploading"])])
    stray = msgspec.structs.replace(part_uploaded(A), upload_id="up-someone-else")
    with pytest.raises(IllegalTransition, match="confirm_part"):
        apply(s, stray)
    one_part = fold([opened(S), *(_archive_event(t) for t in ARCHIVE_PREFIX["sealed"])])
    apply(one_part, upload_started(A, multipart=False))
    with pytest.raises(IllegalTransition, match="in one part"):
        apply(one_part, part_uploaded(A))


def test_a_lost_upload_is_sealed_again_and_forgets_its_parts() -> None:
    s = fold([opened(S), *(_archive_event(t) for t in ARCHIVE_PREFIX["uploading"])])
    apply(s, part_uploaded(A, 1))
    assert set(s.archives[A].parts) == {1}
    apply(s, upload_lost(A))
    a = s.archives[A]
    assert (a.state, a.upload_id, a.parts) == ("sealed", "", {})


def test_an_inventory_job_is_received_once_and_only_after_it_was_requested() -> None:
    got = ev.InventoryReceived(at=T0, vault="glacier://v", job="j", archives=0, missing=0,
                               unknown=0)  # fmt: skip
    with pytest.raises(IllegalTransition, match="unknown inventory job j"):
        fold([got])
    s = fold([ev.InventoryRequested(at=T0, vault="glacier://v", job="j"), got])
    assert s.inventories["j"].state == "received"
    with pytest.raises(IllegalTransition, match="receive"):
        apply(s, got)
