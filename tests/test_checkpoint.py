"""Checkpoints of the fold (core/checkpoint.py): folding from one equals
folding from the start; one that does not fit the log is ignored."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from eventbak.core import checkpoint
from eventbak.core.log import FRAME, EventLog, read_log
from eventbak.core.state import State, apply
from eventbak.statedir import StateDir, log_path, read_state
from tests.eventsamples import sample_events
from tests.treeutil import backup


def _write(root: Path, events: list, split: int) -> None:
    """The events in a log, a checkpoint after the first `split` of them."""
    log, _ = EventLog.open(log_path(root))
    state = State()
    try:
        for i, e in enumerate(events, 1):
            apply(state, e, log.next_offset)
            log.append(e)
            if i == split:
                log.commit()
                head = log.frame_head(log.last_offset)
                checkpoint.save(root, state, log.durable_end, log.seq, log.last_offset, head)
        log.commit()
    finally:
        log.close()


@settings(max_examples=30, deadline=None)
@given(split=st.integers(min_value=1, max_value=len(sample_events())))
def test_folding_from_a_checkpoint_equals_folding_from_the_start(split: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, sample_events(), split)
        whole, image = read_state(root)
        from_cp, tail = read_state(root, from_checkpoint=True)
        assert from_cp == whole
        assert len(tail.records) == len(sample_events()) - split
        assert [r.seq for r in tail.records] == [r.seq for r in image.records][split:]


def test_a_real_state_dir_opens_from_its_checkpoint_to_the_same_state(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("alpha\n")
    backup(tmp_path / "state", tmp_path / "vault", [src])  # closing writes the checkpoint
    (src / "d" / "b.txt").write_text("beta\n")
    backup(tmp_path / "state", tmp_path / "vault", [src])
    state = tmp_path / "state"
    assert checkpoint.load(state, log_path(state)) is not None
    whole, _ = read_state(state)
    from_cp, tail = read_state(state, from_checkpoint=True)
    assert from_cp == whole and tail.records == []
    sd = StateDir.open(state)
    try:
        assert sd.state == whole
        assert sd.log.seq == len(read_log(log_path(state)).records)
    finally:
        sd.close()


def test_a_checkpoint_that_does_not_fit_the_log_is_ignored(tmp_path: Path) -> None:
    events = sample_events()
    _write(tmp_path, events, len(events) // 2)
    cp = checkpoint.load(tmp_path, log_path(tmp_path))
    assert cp is not None
    data = bytearray(log_path(tmp_path).read_bytes())
    data[cp.last + FRAME.size] ^= 0xFF  # the anchor record differs (its CRC no longer fits)
    data[cp.last + 4 : cp.last + 8] = bytes(4)
    log_path(tmp_path).write_bytes(bytes(data))
    assert checkpoint.load(tmp_path, log_path(tmp_path)) is None
    checkpoint.path_of(tmp_path).write_bytes(b"garbage")
    assert checkpoint.load(tmp_path, log_path(tmp_path)) is None
    _write(tmp_path / "b", events, 3)
    assert read_state(tmp_path / "b", from_checkpoint=True)[0] == read_state(tmp_path / "b")[0]


def test_damage_after_the_checkpoint_is_still_found(tmp_path: Path) -> None:
    """What follows a checkpoint is read as always: a damaged record with a
    valid one after it names its offset; before it, a writer checks frames."""
    import pytest

    from eventbak.errors import LogCorrupt

    events = sample_events()
    _write(tmp_path, events, 3)
    image = read_log(log_path(tmp_path))
    victim = image.records[len(events) // 2].offset
    data = bytearray(log_path(tmp_path).read_bytes())
    data[victim + FRAME.size] ^= 0xFF
    log_path(tmp_path).write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match=f"offset {victim}"):
        read_state(tmp_path, from_checkpoint=True)
    _write(tmp_path / "b", events, len(events) - 2)
    early = read_log(log_path(tmp_path / "b")).records[2].offset
    data = bytearray(log_path(tmp_path / "b").read_bytes())
    data[early + FRAME.size] ^= 0xFF
    log_path(tmp_path / "b").write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match=f"offset {early}"):
        StateDir.open(tmp_path / "b")
