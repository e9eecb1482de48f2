"""The upload limit's syntax and timetable (eventbak/daemon/bandwidth.py)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

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
