"""daemon/schedule.py: windows read off the wall clock (midnight, DST, overlaps,
`always`), the cadence, bad config naming its key, and the decision to resume,
start or sleep."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eventbak.daemon.schedule import (
    ALWAYS,
    Decision,
    OpenWindow,
    ScheduleError,
    Windows,
    current_window,
    decide,
    is_open,
    next_opening,
    parse_every,
    parse_timezone,
    parse_windows,
    window_end,
)

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZONES = ["UTC", "Europe/Berlin", "America/New_York"]
# Berlin skips 02:00-03:00 on 03-29 and repeats it on 10-25; New York skips
# 02:00-03:00 on 03-08 and repeats 01:00-02:00 on 11-01.
DST_DAYS = [dt.date(2026, 3, 29), dt.date(2026, 10, 25), dt.date(2026, 3, 8), dt.date(2026, 11, 1)]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- strategies ----------------------------------------------------------------------------------

# Times near the DST changes (01:00-03:30) and midnight come up often.
NEAR_CHANGES = [0, 60, 90, 120, 135, 150, 165, 180, 210, 1380]
minutes_of_day = st.integers(0, 1439) | st.sampled_from(NEAR_CHANGES)
days = st.sampled_from(DST_DAYS) | st.dates(dt.date(2020, 1, 1), dt.date(2035, 12, 31))
instants = st.builds(
    lambda day, s: dt.datetime.combine(day, dt.time(), UTC) + dt.timedelta(seconds=s),
    days,
    st.integers(-86400, 2 * 86400),
)


def hhmm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


@st.composite
def window_texts(draw: st.DrawFn) -> list[str]:
    texts = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(minutes_of_day)
        end = draw(st.integers(1, 1440) | st.sampled_from([*NEAR_CHANGES, 1440]))
        if end == start:  # "22:00-22:00" is an error, tested on its own
            end = (start + 1) % 1440 or 1440
        texts.append(f"{hhmm(start)}-{hhmm(end)}")
    return texts


def spans_of(texts: list[str]) -> list[tuple[int, int]]:
    """The test's own reading of "HH:MM-HH:MM": minutes, the end past the start."""
    spans = []
    for text in texts:
        a, b = (int(t[:2]) * 60 + int(t[3:]) for t in text.split("-"))
        spans.append((a, b if b > a else b + 1440))
    return spans


# -- the reference: the clock read minute by minute ----------------------------------------------


def wall_minute(t: int, zone: dt.tzinfo) -> int:
    """What the clock in `zone` reads at POSIX second `t`, in minutes since 1970-01-01 00:00."""
    wall = dt.datetime.fromtimestamp(t, zone).replace(tzinfo=None)
    return (wall - dt.datetime(1970, 1, 1)) // MINUTE


def reference_open(texts: list[str], zone: dt.tzinfo, start: dt.datetime, n: int) -> list[bool]:
    """Open or not at each of the `n` minutes from `start`, from the definition
    alone: a window that day is open at t when the clock has read its start (or
    later) at some minute <= t, and still reads before its end at some minute >= t.
    No fold, no offsets: only UTC -> wall clock, one minute at a time."""
    margin = 2 * 1440
    first = int(start.timestamp()) // 60 - margin
    readings = [wall_minute(60 * (first + i), zone) for i in range(n + 2 * margin)]
    read_by = list(itertools.accumulate(readings, max))  # latest reading so far
    read_from = list(itertools.accumulate(reversed(readings), min))[::-1]  # earliest to come
    first_day, last_day = readings[margin] // 1440 - 2, readings[margin + n] // 1440 + 1
    occurrences = [
        (day * 1440 + s, day * 1440 + e)
        for day in range(first_day, last_day + 1)
        for s, e in spans_of(texts)
    ]
    return [
        any(read_by[i] >= s and read_from[i] < e for s, e in occurrences)
        for i in range(margin, margin + n)
    ]


@settings(max_examples=20, deadline=None)
@given(texts=window_texts(), zone=st.sampled_from(ZONES), day=days)
@example(["01:30-02:30", "02:15-02:45", "02:30-04:00", "23:00-02:10"], "Europe/Berlin", DST_DAYS[0])
@example(["01:30-02:30", "02:15-02:45", "02:30-04:00", "23:00-02:10"], "Europe/Berlin", DST_DAYS[1])
@example(["02:10-02:20", "03:00-02:00"], "Europe/Berlin", DST_DAYS[1])
@example(
    ["00:30-01:30", "01:15-01:45", "02:30-03:00", "22:00-02:15"], "America/New_York", DST_DAYS[2]
)
@example(
    ["00:30-01:30", "01:15-01:45", "01:30-03:00", "22:00-01:10"], "America/New_York", DST_DAYS[3]
)
@example(["01:10-01:20", "02:00-01:00"], "America/New_York", DST_DAYS[3])
def test_is_open_agrees_with_the_clock_read_minute_by_minute_for_48_hours(
    texts: list[str], zone: str, day: dt.date
) -> None:
    tz = ZoneInfo(zone)
    start = dt.datetime.combine(day, dt.time(), UTC) - dt.timedelta(hours=12)
    expected = reference_open(texts, tz, start, 48 * 60)
    windows = parse_windows(texts)
    for i, want in enumerate(expected):
        t = start + i * MINUTE
        assert is_open(windows, tz, t) == want, f"{texts} in {zone} at {t.astimezone(tz)}"


@settings(max_examples=60, deadline=None)
@given(texts=window_texts(), zone=st.sampled_from(ZONES), now=instants)
def test_a_window_is_open_whenever_the_clock_reads_a_time_inside_it_and_only_then_without_dst(
    texts: list[str], zone: str, now: dt.datetime
) -> None:
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    minute = local.hour * 60 + local.minute
    reads_inside = any(s <= m < e for s, e in spans_of(texts) for m in (minute, minute + 1440))
    day = dt.timedelta(days=1)
    no_change_near = (now - day).astimezone(tz).utcoffset() == (now + day).astimezone(
        tz
    ).utcoffset()
    if reads_inside or no_change_near:
        assert is_open(parse_windows(texts), tz, now) == reads_inside


def test_a_start_the_clock_skips_opens_when_it_jumps() -> None:
    windows = parse_windows(["02:30-05:00"])  # Berlin jumps 02:00 CET -> 03:00 CEST (01:00 UTC)
    assert next_opening(windows, BERLIN, utc(2026, 3, 28, 23)) == utc(2026, 3, 29, 1)
    assert current_window(windows, BERLIN, utc(2026, 3, 29, 2)) == (
        utc(2026, 3, 29, 1),
        utc(2026, 3, 29, 3),
    )


def test_an_end_the_clock_skips_closes_when_it_jumps() -> None:
    windows = parse_windows(["01:00-02:30"])  # New York jumps 02:00 EST -> 03:00 EDT (07:00 UTC)
    assert window_end(windows, NEW_YORK, utc(2026, 3, 8, 6, 30)) == utc(2026, 3, 8, 7)


def test_a_window_wholly_inside_the_skipped_hour_does_not_open_that_day() -> None:
    windows = parse_windows(["02:10-02:40"])
    assert next_opening(windows, BERLIN, utc(2026, 3, 28, 23)) == utc(2026, 3, 30, 0, 10)


def test_on_a_fall_back_day_a_window_opens_at_the_first_occurrence_and_closes_at_the_last() -> None:
    # Berlin repeats 02:00-03:00: 02:30 CEST is 00:30 UTC, 02:30 CET is 01:30 UTC.
    evening = parse_windows(["22:00-02:30"])
    assert current_window(evening, BERLIN, utc(2026, 10, 25, 1)) == (
        utc(2026, 10, 24, 20),
        utc(2026, 10, 25, 1, 30),
    )
    night = parse_windows(["02:30-05:00"])
    assert next_opening(night, BERLIN, utc(2026, 10, 24, 22)) == utc(2026, 10, 25, 0, 30)
    # New York repeats 01:00-02:00: 01:30 EDT is 05:30 UTC, 01:45 EST is 06:45 UTC.
    short = parse_windows(["01:30-01:45"])
    assert current_window(short, NEW_YORK, utc(2026, 11, 1, 6)) == (
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 6, 45),
    )


def test_a_window_crossing_midnight_is_one_window() -> None:
    windows = parse_windows(["22:00-06:00"])
    assert current_window(windows, ZoneInfo("UTC"), utc(2026, 6, 1, 23)) == (
        utc(2026, 6, 1, 22),
        utc(2026, 6, 2, 6),
    )
    assert current_window(windows, ZoneInfo("UTC"), utc(2026, 6, 2, 5)) == (
        utc(2026, 6, 1, 22),
        utc(2026, 6, 2, 6),
    )


def test_now_in_any_zone_means_the_same_instant() -> None:
    windows = parse_windows(["22:00-06:00", "12:00-13:00"])
    for now in (utc(2026, 10, 25, 0, 30), utc(2026, 7, 1, 11)):
        local = now.astimezone(NEW_YORK)
        assert current_window(windows, BERLIN, local) == current_window(windows, BERLIN, now)
        assert next_opening(windows, BERLIN, local) == next_opening(windows, BERLIN, now)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        is_open(parse_windows(["01:00-02:00"]), BERLIN, dt.datetime(2026, 1, 1))


# -- next opening and window end -----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(texts=window_texts(), zone=st.sampled_from(ZONES), now=instants)
def test_next_opening_is_the_first_open_moment_at_or_after_now(
    texts: list[str], zone: str, now: dt.datetime
) -> None:
    windows, tz = parse_windows(texts), ZoneInfo(zone)
    opening = next_opening(windows, tz, now)
    assert opening >= now
    assert is_open(windows, tz, opening)
    if opening != now:
        assert not is_open(windows, tz, opening - MINUTE)
        assert not is_open(windows, tz, opening - dt.timedelta(microseconds=1))
        t = now
        while t < opening:
            assert not is_open(windows, tz, t), t
            t += MINUTE


@settings(max_examples=40, deadline=None)
@given(texts=window_texts(), zone=st.sampled_from(ZONES), now=instants)
def test_a_window_closes_at_its_end_and_is_open_until_then(
    texts: list[str], zone: str, now: dt.datetime
) -> None:
    windows, tz = parse_windows(texts), ZoneInfo(zone)
    end, window = window_end(windows, tz, now), current_window(windows, tz, now)
    if windows.always:
        assert end is None and window == OpenWindow(None, None)
        return
    if not is_open(windows, tz, now):
        assert end is None and window is None
        return
    assert window is not None and window.start is not None and end is not None
    assert window.start <= now < end == window.end
    assert not is_open(windows, tz, end)
    assert is_open(windows, tz, end - MINUTE)
    assert not is_open(windows, tz, window.start - dt.timedelta(microseconds=1))
    t = now
    while t < end:
        assert is_open(windows, tz, t), t
        t += MINUTE


def test_always_is_open_forever() -> None:
    now = utc(2026, 3, 29, 1, 30)
    assert is_open(ALWAYS, BERLIN, now)
    assert current_window(ALWAYS, BERLIN, now) == OpenWindow(None, None)
    assert next_opening(ALWAYS, BERLIN, now) == now
    assert window_end(ALWAYS, BERLIN, now) is None


# -- parsing windows -----------------------------------------------------------------------------


def test_overlapping_windows_merge() -> None:
    assert parse_windows(["22:00-02:00", "01:00-03:00"]) == parse_windows(["22:00-03:00"])
    assert parse_windows(["01:00-02:00", "02:00-03:00"]) == parse_windows(["01:00-03:00"])
    assert parse_windows(["12:00-13:00", "12:15-12:45"]) == parse_windows(["12:00-13:00"])
    assert (
        str(parse_windows(["22:00-06:00", "12:00-13:00", "05:00-07:00"]))
        == "12:00-13:00, 22:00-07:00"
    )


def test_a_whole_day_of_windows_is_always() -> None:
    assert parse_windows("always") == parse_windows(" Always ") == ALWAYS
    assert parse_windows(["00:00-24:00"]) == ALWAYS
    assert parse_windows(["20:00-08:00", "07:00-21:00"]) == ALWAYS


def test_a_single_window_string_is_one_window() -> None:
    assert parse_windows("22:00-06:00") == parse_windows(["22:00-06:00"])
    assert parse_windows(["7:05 - 8:00"]) == Windows(spans=((425 * 60, 480 * 60),))
    assert parse_windows(["22:00-24:00"]) == Windows(spans=((1320 * 60, 1440 * 60),))
    assert parse_windows(["22:00-00:00"]) == Windows(spans=((1320 * 60, 1440 * 60),))


@settings(max_examples=100, deadline=None)
@given(texts=window_texts())
def test_merged_windows_do_not_depend_on_order_and_print_back_to_themselves(
    texts: list[str],
) -> None:
    windows = parse_windows(texts)
    assert parse_windows(texts[::-1]) == windows
    assert parse_windows(texts + texts[:1]) == windows
    reparsed = (
        parse_windows("always") if windows.always else parse_windows(str(windows).split(", "))
    )
    assert reparsed == windows


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            ["24:30-01:00"],
            'schedule.windows[0]: "24:30-01:00" is not HH:MM[:SS]-HH:MM[:SS] (24:30 is not a time)',
        ),
        (
            ["01:00-02:00", "25:00-06:00"],
            'schedule.windows[1]: "25:00-06:00" is not HH:MM[:SS]-HH:MM[:SS]',
        ),
        (["12:60-13:00"], 'schedule.windows[0]: "12:60-13:00" is not HH:MM[:SS]-HH:MM[:SS] (12:60'),
        (
            ["24:00-06:00"],
            'schedule.windows[0]: "24:00-06:00" is not HH:MM[:SS]-HH:MM[:SS] (24:00 only ends',
        ),
        (["7-8"], 'schedule.windows[0]: "7-8" is not HH:MM[:SS]-HH:MM[:SS]'),
        ([""], 'schedule.windows[0]: "" is not HH:MM[:SS]-HH:MM[:SS]'),
        (["22:00"], 'schedule.windows[0]: "22:00" is not HH:MM[:SS]-HH:MM[:SS]'),
        ([2200], "schedule.windows[0]: 2200 is not HH:MM[:SS]-HH:MM[:SS]"),
        (
            ["22:00-22:00"],
            'schedule.windows[0]: "22:00-22:00" starts where it ends: empty or all day?',
        ),
        (["00:00-00:00"], 'schedule.windows[0]: "00:00-00:00" starts where it ends'),
        (["always", "01:00-02:00"], 'schedule.windows[0]: "always" stands alone'),
        ([], 'schedule.windows: [] opens no window; write windows = "always"'),
        ("", 'schedule.windows: "" is not "always" or HH:MM[:SS]-HH:MM[:SS]'),
        ("sometimes", 'schedule.windows: "sometimes" is not "always" or HH:MM[:SS]-HH:MM[:SS]'),
        (5, 'schedule.windows: 5 is not "always" or a list'),
    ],
)
def test_a_bad_window_names_the_key_and_the_value(value: object, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_windows(value)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_bad_window_names_the_key_it_was_given() -> None:
    with pytest.raises(ScheduleError, match=r'^datasets\.home\.windows\[0\]: "x"'):
        parse_windows(["x"], key="datasets.home.windows")


# -- windows to the second -----------------------------------------------------------------------

SECOND = dt.timedelta(seconds=1)
HALF_SECOND = dt.timedelta(milliseconds=500)


def at(
    year: int, month: int, day: int, hour: int, minute: int, second: int, tz: dt.tzinfo = UTC
) -> dt.datetime:
    """An instant, in UTC: `tz`'s wall clock (fold=0) when given."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=tz).astimezone(UTC)


def hms(seconds: int, *, always_seconds: bool = False) -> str:
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{sec:02d}" if sec or always_seconds else f"{h:02d}:{m:02d}"


def seconds_of(texts: list[str]) -> list[tuple[int, int]]:
    """The test's own reading of "HH:MM[:SS]-HH:MM[:SS]": seconds, the end past the start."""
    spans = []
    for text in texts:
        a, b = (
            sum(int(part) * unit for part, unit in zip(t.split(":"), (3600, 60, 1), strict=False))
            for t in text.split("-")
        )
        spans.append((a, b if b > a else b + 86400))
    return spans


@st.composite
def second_window_texts(draw: st.DrawFn, seconds: st.SearchStrategy[int]) -> list[str]:
    """1-4 windows with start and end drawn from `seconds`, or ends 1-20 s after
    the start; whole minutes written as HH:MM or HH:MM:00."""
    texts = []
    for _ in range(draw(st.integers(1, 4))):
        start = draw(seconds)
        end = draw(seconds | st.integers(start + 1, start + 20)) % 86400
        if end == start:
            end = (start + 1) % 86400
        pad = draw(st.booleans())
        texts.append(f"{hms(start, always_seconds=pad)}-{hms(end or 86400, always_seconds=pad)}")
    return texts


any_seconds = st.integers(0, 86399) | st.sampled_from([0, 59, 60, 86340, 86399])
# Seconds of the day within 15 s of 02:00 and 03:00, where Berlin's clock jumps or goes back.
near_changes = st.sampled_from([7200, 10800]).flatmap(lambda c: st.integers(c - 15, c + 15))


def wall_second(t: int, zone: dt.tzinfo) -> int:
    """What the clock in `zone` reads at POSIX second `t`, in seconds since 1970-01-01 00:00."""
    wall = dt.datetime.fromtimestamp(t, zone).replace(tzinfo=None)
    return (wall - dt.datetime(1970, 1, 1)) // SECOND


def reference_open_by_second(
    texts: list[str], zone: dt.tzinfo, start: dt.datetime, n: int
) -> list[bool]:
    """`reference_open`, one second at a time: open or not at each of the `n`
    seconds from `start`. The clock never goes back by more than an hour here,
    so what it reads more than an hour before (after) a second is never the
    latest (earliest): two hours of readings either side are enough."""
    margin = 2 * 3600
    first = int(start.timestamp()) - margin
    readings = [wall_second(first + i, zone) for i in range(n + 2 * margin)]
    read_by = list(itertools.accumulate(readings, max))
    read_from = list(itertools.accumulate(reversed(readings), min))[::-1]
    first_day, last_day = readings[margin] // 86400 - 2, readings[margin + n] // 86400 + 1
    occurrences = [
        (day * 86400 + s, day * 86400 + e)
        for day in range(first_day, last_day + 1)
        for s, e in seconds_of(texts)
    ]
    return [
        any(read_by[i] >= s and read_from[i] < e for s, e in occurrences)
        for i in range(margin, margin + n)
    ]


def assert_agrees_second_by_second(
    texts: list[str], zone: dt.tzinfo, start: dt.datetime, n: int, check: list[range]
) -> None:
    """`is_open`, `current_window`, `next_opening` and `window_end` at the
    seconds `check` (and half a second after each) of the `n` from `start`,
    against the reference: a window opens at the first open second of a run and
    closes at the first closed second after it (or outside the `n` seconds when
    the run reaches their ends)."""
    windows = parse_windows(texts)
    expected = reference_open_by_second(texts, zone, start, n)
    if windows.always:
        assert all(expected)
        return
    # The second the state changes next, and the first second of the current run.
    next_flip: list[int | None] = [None] * n
    for i in range(n - 2, -1, -1):
        next_flip[i] = i + 1 if expected[i + 1] != expected[i] else next_flip[i + 1]
    run_start: list[int | None] = [None] * n
    for i in range(1, n):
        run_start[i] = i if expected[i - 1] != expected[i] else run_start[i - 1]

    for i in itertools.chain.from_iterable(check):
        t = start + i * SECOND
        want, flip, since = expected[i], next_flip[i], run_start[i]
        where = f"{texts} in {zone} at {t.astimezone(zone)}"
        for u in (t, t + HALF_SECOND):
            assert is_open(windows, zone, u) == want, where
            window = current_window(windows, zone, u)
            if want:
                assert window is not None and window.start is not None, where
                assert next_opening(windows, zone, u) == u, where
                assert window.end == window_end(windows, zone, u), where
                if flip is None:
                    assert window.end is not None and window.end >= start + n * SECOND, where
                else:
                    assert window.end == start + flip * SECOND, where
                if since is None:
                    assert window.start <= start, where
                else:
                    assert window.start == start + since * SECOND, where
            else:
                assert window is None and window_end(windows, zone, u) is None, where
                opening = next_opening(windows, zone, u)
                if flip is None:
                    assert opening >= start + n * SECOND, where
                else:
                    assert opening == start + flip * SECOND, where


# Berlin's clock jumps from 02:00 CET to 03:00 CEST at 01:00 UTC on 2026-03-29 and goes back
# from 03:00 CEST to 02:00 CET at 01:00 UTC on 2026-10-25 (02:00 CEST is 00:00 UTC, 03:00 CET
# 02:00 UTC).
SPRING, FALL = DST_DAYS[0], DST_DAYS[1]


@pytest.mark.parametrize(
    ("texts", "zone", "day", "centers"),
    [
        # Three windows a few seconds long, and one across midnight (and the year's end).
        (
            ["12:00:30-12:00:45", "12:01:10-12:01:12", "12:02-12:02:01"],
            "UTC",
            dt.date(2026, 7, 1),
            [12],
        ),
        (["23:59:58-00:00:03"], "UTC", dt.date(2027, 1, 1), [0]),
        (["11:59:59-12:00:01", "12:00:30-12:00:45"], "Europe/Berlin", dt.date(2026, 7, 1), [10]),
        # Spring forward: an end the clock skips closes at the jump, a start it skips opens
        # there, a window wholly inside the skipped hour never opens.
        (["01:59:55-02:00:05"], "Europe/Berlin", SPRING, [1]),
        (["01:59:59-02:00"], "Europe/Berlin", SPRING, [1]),
        (["02:59:58-03:00:03"], "Europe/Berlin", SPRING, [1]),
        (["03:00-03:00:02"], "Europe/Berlin", SPRING, [1]),
        (["02:00-02:00:05", "02:59:59-03:00"], "Europe/Berlin", SPRING, [1]),
        # Fall back: a start met twice opens at the first, an end met twice closes at the
        # second; an end at 02:00 exactly closes the first time.
        (["02:59:58-03:00:03"], "Europe/Berlin", FALL, [1, 2]),
        (["01:59:58-02:00:02"], "Europe/Berlin", FALL, [0, 1]),
        (["01:59:55-02:00"], "Europe/Berlin", FALL, [0, 1]),
        (["02:00-02:00:05", "03:00-03:00:05"], "Europe/Berlin", FALL, [0, 1, 2]),
        (["02:59:59-03:00"], "Europe/Berlin", FALL, [1, 2]),
        (
            ["01:59:58-02:00:02", "02:59:58-03:00:03", "03:00:10-03:00:12"],
            "Europe/Berlin",
            FALL,
            [0, 1, 2],
        ),
    ],
)
def test_short_windows_agree_with_the_clock_read_second_by_second(
    texts: list[str], zone: str, day: dt.date, centers: list[int]
) -> None:
    # From 3 minutes before the first center (an hour, UTC) to 3 minutes after the last.
    start = dt.datetime.combine(day, dt.time(centers[0]), UTC) - 3 * MINUTE
    n = (centers[-1] - centers[0]) * 3600 + 6 * 60
    check = [range((c - centers[0]) * 3600, (c - centers[0]) * 3600 + 6 * 60) for c in centers]
    assert_agrees_second_by_second(texts, ZoneInfo(zone), start, n, check)


@settings(max_examples=15, deadline=None)
@given(
    texts=second_window_texts(near_changes),
    zone=st.sampled_from(["UTC", "Europe/Berlin"]),
    day=st.sampled_from([SPRING, FALL]),
)
def test_windows_of_seconds_near_the_dst_changes_agree_with_the_clock_second_by_second(
    texts: list[str], zone: str, day: dt.date
) -> None:
    # Every start and end lies within 15 s of 00:00, 01:00 or 02:00 UTC that day.
    start = dt.datetime.combine(day, dt.time(), UTC) - 3 * MINUTE
    check = [range(h * 3600, h * 3600 + 6 * 60) for h in (0, 1, 2)]
    assert_agrees_second_by_second(texts, ZoneInfo(zone), start, 2 * 3600 + 6 * 60, check)


def test_next_opening_and_window_end_are_exact_to_the_second() -> None:
    windows = parse_windows(["12:00:30-12:00:45"])
    tz = ZoneInfo("UTC")
    assert next_opening(windows, tz, at(2026, 7, 1, 12, 0, 0)) == at(2026, 7, 1, 12, 0, 30)
    assert next_opening(windows, tz, at(2026, 7, 1, 12, 0, 29) + HALF_SECOND) == at(
        2026, 7, 1, 12, 0, 30
    )
    assert next_opening(windows, tz, at(2026, 7, 1, 12, 0, 45)) == at(2026, 7, 2, 12, 0, 30)
    assert current_window(windows, tz, at(2026, 7, 1, 12, 0, 30)) == (
        at(2026, 7, 1, 12, 0, 30),
        at(2026, 7, 1, 12, 0, 45),
    )
    end = window_end(windows, tz, at(2026, 7, 1, 12, 0, 44) + HALF_SECOND)
    assert end == at(2026, 7, 1, 12, 0, 45)
    assert not is_open(windows, tz, end)
    assert is_open(windows, tz, end - dt.timedelta(microseconds=1))
    # Berlin, spring: "02:59:58-03:00:03" opens at the jump (03:00:00 CEST) and closes 3 s later.
    jumped = parse_windows(["02:59:58-03:00:03"])
    assert next_opening(jumped, BERLIN, at(2026, 3, 29, 0, 0, 0)) == at(2026, 3, 29, 1, 0, 0)
    assert window_end(jumped, BERLIN, at(2026, 3, 29, 1, 0, 0)) == at(2026, 3, 29, 1, 0, 3)
    # Berlin, fall: "02:00-02:00:05" opens at 02:00:00 CEST and closes at 02:00:05 CET.
    repeated = parse_windows(["02:00-02:00:05"])
    assert current_window(repeated, BERLIN, at(2026, 10, 25, 0, 30, 0)) == (
        at(2026, 10, 25, 0, 0, 0),
        at(2026, 10, 25, 1, 0, 5),
    )
    assert next_opening(repeated, BERLIN, at(2026, 10, 25, 1, 0, 5)) == at(2026, 10, 26, 1, 0, 0)


def test_windows_parse_to_the_second() -> None:
    assert parse_windows("12:00:30-12:00:45") == Windows(spans=((43230, 43245),))
    assert parse_windows(["22:00:00-06:00:00"]) == parse_windows(["22:00-06:00"])
    assert parse_windows(["22:00-06:00"]) == Windows(spans=((79200, 108000),))
    assert parse_windows([" 7:05:09 - 8:00 "]) == Windows(spans=((25509, 28800),))
    assert parse_windows(["23:59:59-00:00:01"]) == Windows(spans=((86399, 86401),))
    assert parse_windows(["23:59:59-24:00:00"]) == parse_windows(["23:59:59-24:00"])
    assert parse_windows(["00:00:00-24:00:00"]) == ALWAYS
    assert parse_windows(["12:00-12:00:30", "12:00:30-12:01"]) == parse_windows(["12:00-12:01"])
    assert parse_windows(["23:59:50-24:00", "00:00-00:00:10"]) == parse_windows(
        ["23:59:50-00:00:10"]
    )
    assert parse_windows(["00:00:01-00:00"]) == Windows(spans=((1, 86400),))
    assert parse_windows(["00:00:01-00:00", "23:59:59-00:00:02"]) == ALWAYS


def test_windows_print_seconds_only_when_they_are_not_zero() -> None:
    three = ["12:00:20-12:00:25", "12:00-12:00:05", "12:00:10-12:00:15"]
    assert str(parse_windows(three)) == "12:00-12:00:05, 12:00:10-12:00:15, 12:00:20-12:00:25"
    assert str(parse_windows(["22:00:00-06:00:00"])) == "22:00-06:00"
    assert str(parse_windows(["23:59:59-24:00:00"])) == "23:59:59-24:00"
    assert str(parse_windows(["23:59:59-00:00:01"])) == "23:59:59-00:00:01"
    assert str(parse_windows(["12:00-12:00:01", "12:00:01-12:00:02"])) == "12:00-12:00:02"


@settings(max_examples=100, deadline=None)
@given(texts=second_window_texts(any_seconds))
def test_windows_of_seconds_merge_to_what_they_cover_and_print_back_to_themselves(
    texts: list[str],
) -> None:
    windows = parse_windows(texts)
    covered = bytearray(86400)
    for s, e in seconds_of(texts):
        covered[s : min(e, 86400)] = b"\1" * (min(e, 86400) - s)
        covered[: max(e - 86400, 0)] = b"\1" * max(e - 86400, 0)
    if windows.always:
        assert all(covered)
        return
    merged = bytearray(86400)
    for s, e in windows.spans:
        assert 0 <= s < 86400 and s < e < s + 86400
        for a, b in ((s, min(e, 86400)), (0, max(e - 86400, 0))):
            assert not any(merged[a:b])  # no two spans overlap
            merged[a:b] = b"\1" * (b - a)
    assert merged == covered
    assert [s for s, _ in windows.spans] == sorted(s for s, _ in windows.spans)
    ends = {e % 86400 for _, e in windows.spans}
    assert not ends & {s for s, _ in windows.spans}  # none touch
    assert parse_windows(texts[::-1]) == windows
    assert parse_windows(str(windows).split(", ")) == windows
    assert str(parse_windows(str(windows).split(", "))) == str(windows)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            ["12:00:60-13:00"],
            'schedule.windows[0]: "12:00:60-13:00" is not HH:MM[:SS]-HH:MM[:SS] '
            "(12:00:60 is not a time)",
        ),
        (
            ["12:00-13:60:00"],
            'schedule.windows[0]: "12:00-13:60:00" is not HH:MM[:SS]-HH:MM[:SS] '
            "(13:60:00 is not a time)",
        ),
        (
            ["01:00-02:00", "24:00:01-06:00"],
            'schedule.windows[1]: "24:00:01-06:00" is not HH:MM[:SS]-HH:MM[:SS] '
            "(24:00:01 is not a time)",
        ),
        (
            ["22:00-24:00:30"],
            'schedule.windows[0]: "22:00-24:00:30" is not HH:MM[:SS]-HH:MM[:SS] '
            "(24:00:30 is not a time)",
        ),
        (
            ["24:00:00-06:00"],
            'schedule.windows[0]: "24:00:00-06:00" is not HH:MM[:SS]-HH:MM[:SS] '
            "(24:00:00 only ends a window; write 00:00)",
        ),
        (["12:00:5-13:00"], 'schedule.windows[0]: "12:00:5-13:00" is not HH:MM[:SS]-HH:MM[:SS]'),
        (["12:00:00:00-13:00"], 'schedule.windows[0]: "12:00:00:00-13:00" is not HH:MM[:SS]'),
        (["12:00:30"], 'schedule.windows[0]: "12:00:30" is not HH:MM[:SS]-HH:MM[:SS]'),
        (
            ["12:00:30-12:00:30"],
            'schedule.windows[0]: "12:00:30-12:00:30" starts where it ends: empty or all day? '
            'write "00:00-24:00" for all day',
        ),
        (["12:00-12:00:00"], 'schedule.windows[0]: "12:00-12:00:00" starts where it ends'),
        ("12:00:60-13:00", 'schedule.windows: "12:00:60-13:00" is not "always" or HH:MM[:SS]-'),
    ],
)
def test_a_bad_window_with_seconds_names_the_key_and_the_value(value: object, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_windows(value)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# -- time zone and cadence -----------------------------------------------------------------------


def test_a_named_time_zone_is_the_iana_zone() -> None:
    assert parse_timezone("Europe/Berlin") == BERLIN
    assert parse_timezone("UTC").utcoffset(dt.datetime(2026, 1, 1)) == dt.timedelta(0)


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe", "../etc/passwd", "/etc/localtime"])
def test_an_unknown_time_zone_names_the_key_and_the_value(name: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_timezone(name)
    assert str(info.value).startswith(f'schedule.timezone: "{name}" is not a known IANA time zone')


def test_no_time_zone_is_the_machine_local_one_from_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    assert parse_timezone(None) == NEW_YORK
    assert parse_timezone("") == NEW_YORK
    monkeypatch.setenv("TZ", ":Europe/Berlin")
    assert parse_timezone(None) == BERLIN


def test_no_time_zone_and_no_tz_reads_the_machine_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TZ", raising=False)
    assert parse_timezone(None).utcoffset(dt.datetime(2026, 1, 1)) is not None


def test_a_tz_zoneinfo_cannot_read_falls_back_to_the_current_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    assert isinstance(parse_timezone(None), dt.timezone)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("daily", dt.timedelta(days=1)),
        ("Weekly", dt.timedelta(days=7)),
        ("hourly", dt.timedelta(hours=1)),
        ("6h", dt.timedelta(hours=6)),
        ("30m", dt.timedelta(minutes=30)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("1h 30m", dt.timedelta(hours=1, minutes=30)),
        ("2d", dt.timedelta(days=2)),
        ("90s", dt.timedelta(seconds=90)),
        ("1d12h", dt.timedelta(days=1, hours=12)),
    ],
)
def test_every_reads_names_and_durations(text: str, expected: dt.timedelta) -> None:
    assert parse_every(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0h", 'schedule.every: "0h" must be more than zero'),
        ("0s", 'schedule.every: "0s" must be more than zero'),
        ("-1h", 'schedule.every: "-1h" must be more than zero'),
        ("fortnightly", 'schedule.every: "fortnightly" is not daily, weekly, hourly or a duration'),
        ("", 'schedule.every: "" is not daily'),
        ("6", 'schedule.every: "6" is not daily'),
        ("30m1h", 'schedule.every: "30m1h" is not daily'),
        ("1.5h", 'schedule.every: "1.5h" is not daily'),
        ("99999999999d", 'schedule.every: "99999999999d" is too long'),
    ],
)
def test_a_bad_every_names_the_key_and_the_value(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_every(text)
    assert str(info.value).startswith(message)


# -- the decision --------------------------------------------------------------------------------

everies = st.sampled_from(
    [MINUTE, dt.timedelta(hours=1), dt.timedelta(hours=6), dt.timedelta(days=1)]
) | st.timedeltas(dt.timedelta(seconds=1), dt.timedelta(days=8))


@settings(max_examples=150, deadline=None)
@given(
    texts=window_texts() | st.just("always"),
    zone=st.sampled_from(ZONES),
    now=instants,
    every=everies,
    unfinished=st.none() | st.just("s-0007"),
    ago=st.none() | st.timedeltas(dt.timedelta(days=-1), dt.timedelta(days=10)),
)
def test_decide_resumes_inside_a_window_starts_when_due_and_otherwise_sleeps_into_the_future(
    texts: list[str] | str,
    zone: str,
    now: dt.datetime,
    every: dt.timedelta,
    unfinished: str | None,
    ago: dt.timedelta | None,
) -> None:
    windows, tz = parse_windows(texts), ZoneInfo(zone)
    last = None if ago is None else now - ago
    d = decide(now, windows, tz, every, unfinished, last)
    open_now = is_open(windows, tz, now)
    due = last is None or now >= last + every

    assert (d.action == "resume") == (open_now and unfinished is not None)
    assert (d.action == "start") == (open_now and unfinished is None and due)
    if d.action != "sleep":
        assert d.until == window_end(windows, tz, now)
    else:
        assert d.until is not None and d.until > now
        assert is_open(windows, tz, d.until)
        if unfinished is not None or due:
            assert d.until == next_opening(windows, tz, now)
        else:
            assert last is not None
            assert d.until == next_opening(windows, tz, last + every) >= last + every
    assert d.why and "\n" not in d.why


def test_always_resumes_at_once_and_starts_when_due() -> None:
    now, every = utc(2026, 3, 29, 1, 30), dt.timedelta(hours=6)
    assert decide(now, ALWAYS, BERLIN, every, "s-1", None) == Decision(
        "resume", None, "no windows (always); session s-1 unfinished"
    )
    assert decide(now, ALWAYS, BERLIN, every, None, None).action == "start"
    assert decide(now, ALWAYS, BERLIN, every, None, now - every).action == "start"
    sleep = decide(now, ALWAYS, BERLIN, every, None, now - dt.timedelta(hours=1))
    assert (sleep.action, sleep.until) == ("sleep", now + dt.timedelta(hours=5))


NIGHTS = ["22:00-06:00", "12:00-13:00"]


def test_an_unfinished_session_resumes_until_the_window_closes() -> None:
    d = decide(
        utc(2026, 3, 29, 21), parse_windows(NIGHTS), BERLIN, dt.timedelta(days=1), "s-1", None
    )
    assert d == Decision(
        "resume",
        utc(2026, 3, 30, 4),
        "window 22:00-06:00 (Europe/Berlin) open until 2026-03-30 06:00 CEST; "
        "session s-1 unfinished",
    )


def test_outside_the_windows_an_unfinished_session_waits_for_the_next() -> None:
    d = decide(
        utc(2026, 3, 29, 14), parse_windows(NIGHTS), BERLIN, dt.timedelta(days=1), "s-1", None
    )
    assert (d.action, d.until) == ("sleep", utc(2026, 3, 29, 20))
    assert d.why.startswith("outside the windows (12:00-13:00, 22:00-06:00, Europe/Berlin) until")


def test_a_session_due_after_the_window_closes_waits_for_the_window_after() -> None:
    # Completed at 05:00 CEST; due at 05:00 the next day, inside 22:00-06:00? yes: wake then.
    windows, every = parse_windows(NIGHTS), dt.timedelta(days=1)
    d = decide(utc(2026, 3, 30, 3, 30), windows, BERLIN, every, None, utc(2026, 3, 30, 3))
    assert (d.action, d.until) == ("sleep", utc(2026, 3, 31, 3))
    # Completed at 05:50 CEST, every 1d: due 05:50 next day, still inside; every 25h: due
    # 06:50, outside, so the next window (12:00) wakes it.
    d = decide(
        utc(2026, 3, 30, 3, 55),
        windows,
        BERLIN,
        dt.timedelta(hours=25),
        None,
        utc(2026, 3, 30, 3, 50),
    )
    assert (d.action, d.until) == ("sleep", utc(2026, 3, 31, 10))
    assert "the windows (12:00-13:00, 22:00-06:00) are closed then" in d.why


def test_a_session_is_started_when_none_ever_completed() -> None:
    d = decide(
        utc(2026, 7, 1, 10, 30), parse_windows(NIGHTS), BERLIN, dt.timedelta(days=1), None, None
    )
    assert d == Decision(
        "start",
        utc(2026, 7, 1, 11),
        "window 12:00-13:00 (Europe/Berlin) open until 2026-07-01 13:00 CEST; "
        "no session completed yet",
    )


def test_decide_in_a_five_second_window_works_until_its_end_to_the_second() -> None:
    windows, every = parse_windows(["12:00:30-12:00:35"]), dt.timedelta(days=1)
    end = at(2026, 7, 1, 12, 0, 35, BERLIN)  # 10:00:35 UTC
    now = at(2026, 7, 1, 12, 0, 31, BERLIN) + HALF_SECOND
    assert decide(now, windows, BERLIN, every, None, None) == Decision(
        "start",
        end,
        "window 12:00:30-12:00:35 (Europe/Berlin) open until 2026-07-01 12:00:35 CEST; "
        "no session completed yet",
    )
    d = decide(end - dt.timedelta(microseconds=1), windows, BERLIN, every, "s-1", None)
    assert (d.action, d.until) == ("resume", end)
    d = decide(end, windows, BERLIN, every, "s-1", None)
    assert (d.action, d.until) == ("sleep", at(2026, 7, 2, 12, 0, 30, BERLIN))
    assert d.why == (
        "outside the windows (12:00:30-12:00:35, Europe/Berlin) until 2026-07-02 12:00:30 CEST; "
        "session s-1 unfinished"
    )


def test_a_session_runs_across_three_windows_a_few_seconds_long() -> None:
    # What a daemon test does: resume in each window until it closes, sleep until the next.
    windows = parse_windows(["12:00:10-12:00:15", "12:00-12:00:03", "12:00:20-12:00:25"])
    every, now = dt.timedelta(days=1), at(2026, 7, 1, 11, 59, 58, BERLIN)
    steps = []
    for _ in range(6):
        d = decide(now, windows, BERLIN, every, "s-1", None)
        assert d.until is not None and d.until > now
        steps.append((d.action, f"{d.until.astimezone(BERLIN):%H:%M:%S}"))
        now = d.until
    assert steps == [
        ("sleep", "12:00:00"),
        ("resume", "12:00:03"),
        ("sleep", "12:00:10"),
        ("resume", "12:00:15"),
        ("sleep", "12:00:20"),
        ("resume", "12:00:25"),
    ]
