"""The upload limit's syntax and timetable (eventbak/daemon/bandwidth.py)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbak.daemon.bandwidth import LimitError, limit_at, next_change, parse_limit

KiB, MiB = 1024, 1024 * 1024
MONDAY = datetime(2026, 12, 7)  # a Monday


def test_a_single_rate_or_off_is_a_constant_limit() -> None:
    for text, rate in [("10MiB/s", 10 * MiB), ("512k", 512 * KiB), ("1.5M", int(1.5 * MiB)),
                       ("off", None), ("OFF", None), ("100B/s", 100)]:  # fmt: skip
        table = parse_limit(text)
        assert table.constant and limit_at(table, MONDAY) == rate, text


def test_the_issues_timetable() -> None:
    table = parse_limit("08:00,512KiB/s 23:00,off")
    at = lambda h, m=0: limit_at(table, MONDAY.replace(hour=h, minute=m))  # noqa: E731
    assert at(7, 59) is None  # before 08:00: the day before's 23:00 entry, carried over
    assert at(8) == at(22, 59) == 512 * KiB
    assert at(23) is None
    assert next_change(table, MONDAY.replace(hour=7)) == 60


def test_weekday_entries_carry_over_the_week() -> None:
    table = parse_limit("Mon-00:00,512k Fri-23:59,10M Sat-10:00,1M Sun-20:00,off")
    assert limit_at(table, MONDAY) == 512 * KiB
    assert limit_at(table, MONDAY + timedelta(days=4, hours=23, minutes=59)) == 10 * MiB
    assert limit_at(table, MONDAY + timedelta(days=5, hours=9)) == 10 * MiB
    assert limit_at(table, MONDAY + timedelta(days=6, hours=21)) is None


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty"),
        ("10", "needs a unit"),
        ("fast", "not a rate"),
        ("0k", "positive"),
        ("25:00,1M", "not a time of day"),
        ("08:00;1M", "not a rate"),
        ("08:00,1M 9-00,off", "not [DAY-]HH:MM,RATE"),
        ("Xyz-08:00,1M", "not a day"),
        ("08:00,1M 08:00,off", "same time"),
        ("08:00,10", "needs a unit"),
    ],
)
def test_bad_limits_name_the_key_and_the_part(text: str, needle: str) -> None:
    with pytest.raises(LimitError, match=re.escape(needle)) as err:
        parse_limit(text, key="vaults.cold.upload_limit")
    assert str(err.value).startswith("vaults.cold.upload_limit: ")
    assert "\n" not in str(err.value)


_times = st.tuples(st.sampled_from(["", "Mon-", "Wed-", "Sun-"]), st.integers(0, 23),
                   st.integers(0, 59))  # fmt: skip
_rates = st.sampled_from(["off", "1k", "2M", "3MiB/s", "5G"])


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(st.tuples(_times, _rates), min_size=1, max_size=6),
    offset=st.integers(0, 7 * 24 * 60 - 1),
)
def test_the_limit_is_the_latest_entry_before_now_in_the_week(
    entries: list[tuple[tuple[str, int, int], str]], offset: int
) -> None:
    text = " ".join(f"{d}{h:02d}:{m:02d},{r}" for (d, h, m), r in entries)
    try:
        table = parse_limit(text)
    except LimitError as exc:
        assert "same time" in str(exc)
        return
    now = MONDAY + timedelta(minutes=offset)
    # the reference: walk back minute by minute (over a week) to the latest entry
    at = dict(table.entries)
    for back in range(7 * 24 * 60):
        minute = (offset - back) % (7 * 24 * 60)
        if minute in at:
            assert limit_at(table, now) == at[minute]
            break
    step = next_change(table, now)
    assert 0 < step <= 7 * 24 * 60
    later = now + timedelta(minutes=step)
    assert ((later - MONDAY).total_seconds() // 60) % (7 * 24 * 60) in at


# -- Throttle: on Trio's clock, driven by pytest-trio's autojump clock -----------


async def test_parts_in_flight_together_go_at_the_rate_in_order(autojump_clock: object) -> None:
    """Four parts of 1 MiB taken at once at 1MiB/s start at 0, 1, 2, 3 s."""
    import trio

    from eventbak.daemon.bandwidth import Throttle

    throttle = Throttle(parse_limit("1MiB/s"), lambda: MONDAY)
    started: list[float] = []
    t0 = trio.current_time()

    async def part() -> None:
        await throttle.take(1 * MiB)
        started.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(part)
    assert started == pytest.approx([0.0, 1.0, 2.0, 3.0])


async def test_off_in_the_timetable_lets_parts_go_at_once(autojump_clock: object) -> None:
    import trio

    from eventbak.daemon.bandwidth import Throttle

    now = [MONDAY.replace(hour=7)]
    throttle = Throttle(parse_limit("08:00,1MiB/s 23:00,off"), lambda: now[0])
    t0 = trio.current_time()
    for _ in range(3):
        await throttle.take(10 * MiB)  # 07:00: off (the 23:00 entry carried over)
    assert trio.current_time() == t0
    now[0] = MONDAY.replace(hour=9)
    await throttle.take(2 * MiB)
    await throttle.take(2 * MiB)  # waits for the first 2 MiB's two seconds
    assert trio.current_time() - t0 == pytest.approx(2.0)


def test_backup_with_an_upload_limit_takes_at_least_its_time(tmp_path: Path) -> None:
    """4 MiB of random bytes in 1 MiB archives at 1MiB/s: the last upload
    cannot start before 3 s have passed (unlimited, the whole run takes well
    under a second here; a lower bound: a busy machine only adds). The
    archives restore identical; a limit that does not parse is exit 2."""
    import os
    import subprocess
    import sys
    import time

    from tests.treeutil import describe, restore_all

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(os.urandom(MiB - 4096))

    def backup(state: str, *extra: str) -> float:
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "eventbak", "--state-dir", str(tmp_path / state), "backup",
             str(src), "--vault", f"file://{tmp_path / state}-vault", "--archive-size", "1MiB",
             "--compression", "none", *extra],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return time.monotonic() - t0

    assert backup("limited", "--upload-limit", "1MiB/s") >= 3.0
    restore_all(tmp_path / "limited", tmp_path / "back")
    assert describe(tmp_path / "back" / str(src).lstrip("/")) == describe(src)
    bad = subprocess.run(
        [sys.executable, "-m", "eventbak", "--state-dir", str(tmp_path / "x"), "backup",
         str(src), "--upload-limit", "fast"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--upload-limit" in bad.stderr
