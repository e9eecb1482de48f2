"""When the daemon works: the `[schedule]` windows and cadence, and the decision
to resume a session, start one or sleep.

Rule 1: every question of *when* lives in this module, and none of it reads
the clock or does I/O. `now` is always a parameter, so the daemon, a status
command and the tests ask the same pure functions. (The one exception is
`local_timezone`, which reads the machine's zone once, when the config is
parsed.)

Theory of operation
-------------------
* **Windows** are wall-clock times in the schedule's time zone, to the
  second: `windows = ["22:00-06:00", "12:00-13:00", "12:30:15-12:30:45"]`
  (`HH:MM[:SS]-HH:MM[:SS]`; seconds left out are zero). A window whose end is
  not after its start crosses midnight; `"00:00-24:00"` is all day; windows that
  overlap or touch merge (`Windows` holds them merged, so equal schedules
  compare equal). `windows = "always"`, or windows covering the whole day,
  means never closed.
* **DST.** Each day's window opens at the first instant the clock reads its
  start time or later, and closes at the last instant the clock reads a time
  before its end. So on a spring-forward day a start the clock skips (02:30
  in Europe/Berlin on the last Sunday of March) opens when the clock jumps
  (03:00 CEST), and an end it skips closes at the jump; a window lying wholly
  inside the skipped hour does not open that day (the clock never shows it).
  On a fall-back day a start that occurs twice opens at its first
  occurrence and an end that occurs twice closes at its second, so the
  window stays open through the repeated hour without a gap (an end exactly
  where the clock goes back, 02:00 in Berlin, closes the first time: the
  clock never reads earlier than that again). Whenever the wall clock reads
  a time inside a window, the window is open; intervals are never empty or
  negative; on days without a change this is exactly the wall clock.
* **Cadence.** `every` is elapsed time (`daily` is 24 hours, across DST
  too): a new session is due `every` after the last one completed.
* **Decision.** Inside a window, an unfinished session is resumed until the
  window closes; otherwise a due session is started; otherwise, and
  whenever the windows are closed, the daemon sleeps until the first moment
  that is inside a window and at or after the work is due (now, if a session
  is unfinished or due). A sleep always ends strictly after `now`.

All datetimes this module returns are aware and in UTC (arithmetic on them
is elapsed time); it accepts any aware datetime. Errors in the config are a
`ScheduleError` whose one-line message names the key and the bad value.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

UTC = dt.UTC
DAY_MINUTES = 24 * 60
DAY_SECONDS = DAY_MINUTES * 60

_SECOND = dt.timedelta(seconds=1)  # windows and zone transitions fall on whole seconds

Interval = tuple[dt.datetime, dt.datetime]


class ScheduleError(ValueError):
    """A `[schedule]` value that does not parse; the message names the key and
    the value (the caller reports it on one line and exits 2)."""


def _q(value: object) -> str:
    """A value as the user wrote it in TOML: strings in double quotes."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


# -- windows -------------------------------------------------------------------------------------


class Windows(msgspec.Struct, frozen=True):
    """Backup windows in wall-clock seconds after local midnight, built by
    `parse_windows`. Each span is `(start, end)` with `0 <= start < 86400` and
    `start < end < start + 86400`; `end > 86400` closes on the next day. Spans
    are sorted, and merged on the 24-hour circle (none overlap or touch).
    `always=True` (and no spans): never closed. `str()` prints them as
    `parse_windows` reads them (`HH:MM`, or `HH:MM:SS` when the seconds are not
    zero)."""

    spans: tuple[tuple[int, int], ...] = ()
    always: bool = False

    def __str__(self) -> str:
        if self.always:
            return "always"
        return ", ".join(
            f"{_hms(s)}-{_hms(e if e <= DAY_SECONDS else e - DAY_SECONDS)}" for s, e in self.spans
        )


ALWAYS = Windows(always=True)

_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
_WINDOW_RE = re.compile(rf"\s*{_TIME}\s*-\s*{_TIME}\s*")
_EXPECTED = "HH:MM[:SS]-HH:MM[:SS]"


def _hms(seconds: int) -> str:
    """Seconds after midnight -> `HH:MM`, or `HH:MM:SS` when the seconds are not zero."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" if s else f"{h:02d}:{m:02d}"


def parse_windows(value: str | list[str], key: str = "schedule.windows") -> Windows:
    """`"always"`, a list of `"HH:MM[:SS]-HH:MM[:SS]"` windows (or one such
    string) -> `Windows`, merged. ScheduleError naming `key` (and the item's
    index)."""
    if isinstance(value, str):
        if value.strip().lower() == "always":
            return ALWAYS
        return _merge([_parse_window(value, key, f'is not "always" or {_EXPECTED}')])
    if not isinstance(value, list | tuple):
        raise ScheduleError(f'{key}: {_q(value)} is not "always" or a list of "{_EXPECTED}"')
    if not value:
        raise ScheduleError(f'{key}: [] opens no window; write windows = "always" for no limit')
    spans = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item.strip().lower() == "always":
            raise ScheduleError(f'{key}[{i}]: "always" stands alone: windows = "always"')
        spans.append(_parse_window(item, f"{key}[{i}]", f"is not {_EXPECTED}"))
    return _merge(spans)


def _parse_window(text: object, key: str, expected: str) -> tuple[int, int]:
    """`"22:00-06:00"` -> `(79200, 108000)`: seconds, the end past the start."""
    m = _WINDOW_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ScheduleError(f"{key}: {_q(text)} {expected}")
    h1, m1, s1, h2, m2, s2 = (int(g) if g else 0 for g in m.groups())
    for h, mm, ss, written in ((h1, m1, s1, m[3]), (h2, m2, s2, m[6])):
        if mm > 59 or ss > 59 or h > 24 or (h == 24 and (mm or ss)):
            time = f"{h:02d}:{mm:02d}" + (f":{ss:02d}" if written else "")
            raise ScheduleError(f"{key}: {_q(text)} {expected} ({time} is not a time)")
    start, end = h1 * 3600 + m1 * 60 + s1, h2 * 3600 + m2 * 60 + s2
    if start == DAY_SECONDS:
        midnight = "24:00:00" if m[3] else "24:00"
        raise ScheduleError(
            f"{key}: {_q(text)} {expected} ({midnight} only ends a window; write 00:00)"
        )
    if start == end:
        raise ScheduleError(
            f"{key}: {_q(text)} starts where it ends: empty or all day? "
            f'write "00:00-24:00" for all day'
        )
    return start, end if end > start else end + DAY_SECONDS


def _merge(spans: list[tuple[int, int]]) -> Windows:
    """Merge spans on the 24-hour circle: cut at midnight, merge on the line,
    then join a run that ends at midnight to one that starts there."""
    pieces = sorted(
        piece
        for start, end in spans
        for piece in ((start, min(end, DAY_SECONDS)), (0, end - DAY_SECONDS))
        if piece[0] < piece[1]
    )
    runs: list[tuple[int, int]] = []
    for start, end in pieces:
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end))
        else:
            runs.append((start, end))
    if runs == [(0, DAY_SECONDS)]:
        return ALWAYS
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][1] == DAY_SECONDS:
        runs[-1] = (runs[-1][0], DAY_SECONDS + runs.pop(0)[1])
    return Windows(spans=tuple(runs))


# -- time zone and cadence -----------------------------------------------------------------------


def parse_timezone(name: str | None, key: str = "schedule.timezone") -> dt.tzinfo:
    """An IANA zone name -> its `ZoneInfo`; None or "" -> `local_timezone()`.
    ScheduleError naming `key` for a name the zone database does not know."""
    if name is None or (isinstance(name, str) and not name.strip()):
        return local_timezone()
    if not isinstance(name, str):
        raise ScheduleError(f"{key}: {_q(name)} is not a time zone name")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f'{key}: {_q(name)} is not a known IANA time zone (e.g. "Europe/Berlin", "UTC")'
        ) from None


def local_timezone() -> dt.tzinfo:
    """The machine's local time zone, with its DST rules where they can be found.

    The zone libc uses: `$TZ` if set (a zone name, `:name` or a zone file's
    path), else `/etc/localtime` (named by the zone it links to when it is a
    link into the zone database, so logs say "Europe/Berlin"). When neither can
    be read as a zone file (a POSIX rule string in `$TZ`, no zone database) it
    falls back to the current UTC offset, which does not follow DST: better a
    fixed offset than a guess. Reads the environment and the disk: call it
    once, when the config is parsed."""
    tz_env = os.environ.get("TZ")
    if tz_env:
        name = tz_env.removeprefix(":")
        try:
            if os.path.isabs(name):
                with open(name, "rb") as f:
                    return ZoneInfo.from_file(f, key=name)
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            return _current_offset()
    try:
        target = os.path.realpath("/etc/localtime")
        _, sep, zone_key = target.partition("/zoneinfo/")
        if sep:
            try:
                return ZoneInfo(zone_key)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                pass
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (ValueError, OSError):
        return _current_offset()


def _current_offset() -> dt.tzinfo:
    tz = dt.datetime.now().astimezone().tzinfo
    assert tz is not None
    return tz


_EVERY_NAMES = {
    "hourly": dt.timedelta(hours=1),
    "daily": dt.timedelta(days=1),
    "weekly": dt.timedelta(days=7),
}
_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_every(text: str, key: str = "schedule.every") -> dt.timedelta:
    """`hourly`, `daily`, `weekly`, or a duration in d/h/m/s in that order
    (`6h`, `30m`, `1h30m`, `2d`, `90s`) -> timedelta, more than zero.
    ScheduleError naming `key` otherwise."""
    if not isinstance(text, str):
        raise ScheduleError(f'{key}: {_q(text)} is not a string like "daily" or "6h"')
    t = "".join(text.split()).lower()
    if t in _EVERY_NAMES:
        return _EVERY_NAMES[t]
    if t.startswith("-"):
        raise ScheduleError(f"{key}: {_q(text)} must be more than zero")
    m = _DURATION_RE.fullmatch(t)
    if not t or m is None:
        raise ScheduleError(
            f"{key}: {_q(text)} is not daily, weekly, hourly or a duration like 6h, 30m, 1h30m, 2d"
        )
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    try:
        every = dt.timedelta(days=d, hours=h, minutes=mi, seconds=s)
    except OverflowError:
        raise ScheduleError(f"{key}: {_q(text)} is too long") from None
    if every <= dt.timedelta(0):
        raise ScheduleError(f"{key}: {_q(text)} must be more than zero")
    return every


# -- window arithmetic ---------------------------------------------------------------------------


class OpenWindow(NamedTuple):
    """The open window containing an instant, in UTC: `start <= now < end`.
    With `always` both are None: it never opened and never closes."""

    start: dt.datetime | None
    end: dt.datetime | None


def is_open(w: Windows, tz: dt.tzinfo, now: dt.datetime) -> bool:
    """Whether a window is open at `now` (aware)."""
    return current_window(w, tz, now) is not None


def current_window(w: Windows, tz: dt.tzinfo, now: dt.datetime) -> OpenWindow | None:
    """The open window containing `now` (start inclusive, end exclusive, in
    UTC), or None when every window is closed. `OpenWindow(None, None)` with
    `always`."""
    if w.always:
        return OpenWindow(None, None)
    t = _utc(now)
    for start, end in _intervals_near(w, tz, t.astimezone(tz).date()):
        if start <= t < end:
            return OpenWindow(start, end)
        if start > t:
            break
    return None


def next_opening(w: Windows, tz: dt.tzinfo, now: dt.datetime) -> dt.datetime:
    """The first moment at or after `now` at which a window is open (in UTC):
    `now` itself when a window is open now, else the next window's start."""
    t = _utc(now)
    if w.always:
        return t
    for start, end in _intervals_near(w, tz, t.astimezone(tz).date()):
        if t < end:
            return max(start, t)
    raise AssertionError(f"no window opens within 3 days of {t}: {w}")  # every day has one


def window_end(w: Windows, tz: dt.tzinfo, now: dt.datetime) -> dt.datetime | None:
    """When the window open at `now` closes (in UTC); None when none is open
    or with `always` (it never closes)."""
    window = current_window(w, tz, now)
    return None if window is None else window.end


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now={now.isoformat()} is naive: the schedule needs an aware datetime")
    return now.astimezone(UTC)


@functools.lru_cache(maxsize=64)
def _intervals_near(w: Windows, tz: dt.tzinfo, day: dt.date) -> tuple[Interval, ...]:
    """The open intervals (UTC, merged, sorted) of the windows opening on the
    local dates `day - 3` to `day + 3`. Those from `day - 1` to `day + 1` are
    complete: a window lasts less than a day (two merged across a DST change,
    less than two), so nothing from outside the range reaches them."""
    raw: list[Interval] = []
    for k in range(-3, 4):
        midnight = dt.datetime.combine(day + dt.timedelta(days=k), dt.time())
        for s, e in w.spans:
            start = _opens(midnight + dt.timedelta(seconds=s), tz)
            end = _closes(midnight + dt.timedelta(seconds=e), tz)
            if start < end:  # else wholly inside a skipped hour: not today
                raw.append((start, end))
    raw.sort()
    merged: list[Interval] = []
    for start, end in raw:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _opens(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The first instant the clock in `tz` reads `wall` or later."""
    return _occurrence(wall, tz, fold=0) or _jump_over(wall, tz)


def _closes(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The instant after which the clock in `tz` never again reads before `wall`:
    just after the last occurrence of the second before `wall`. (Not the last
    occurrence of `wall` itself: when the clock goes back to exactly `wall`, as
    Berlin's goes back to 02:00, it never reads earlier again after the first.)"""
    before = wall - _SECOND
    last = _occurrence(before, tz, fold=1)
    return last + _SECOND if last is not None else _jump_over(before, tz)


def _occurrence(wall: dt.datetime, tz: dt.tzinfo, fold: int) -> dt.datetime | None:
    """The instant the clock reads `wall`: its first occurrence (fold=0) or its
    last (fold=1) when the clock goes back; None when the clock skips it."""
    t = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
    if t.astimezone(tz).replace(tzinfo=None, fold=0) != wall:
        return None
    return t


def _jump_over(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The instant the clock jumps over `wall`, a wall time it skips: the first
    instant it reads later. Bisected to the second between the two readings of
    `wall` by the offsets before and after the jump."""
    lo, hi = sorted(int(wall.replace(tzinfo=tz, fold=f).timestamp()) for f in (0, 1))
    # The clock reads before `wall` at lo and after it at hi.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return dt.datetime.fromtimestamp(hi, UTC)


# -- the decision --------------------------------------------------------------------------------


class Decision(msgspec.Struct, frozen=True):
    """What the daemon does next. `until`: for `sleep` when to wake (always
    after `now`); for `resume` and `start` when the window closes (None: never,
    with `always`). `why` says it in one line, for the log."""

    action: Literal["resume", "start", "sleep"]
    until: dt.datetime | None
    why: str


def decide(
    now: dt.datetime,
    windows: Windows,
    tz: dt.tzinfo,
    every: dt.timedelta,
    unfinished: str | None,
    last_completed_at: dt.datetime | None,
) -> Decision:
    """Resume the unfinished session, start a new one, or sleep, from the log
    (`unfinished`: the id of a session not yet completed; `last_completed_at`:
    when the last one completed) and the clock alone. See the module docstring
    for the rule; `every` must be more than zero."""
    if every <= dt.timedelta(0):
        raise ValueError(f"every={every} must be more than zero")
    t = _utc(now)
    window = current_window(windows, tz, t)
    due = None if last_completed_at is None else _utc(last_completed_at) + every
    work = _pending(unfinished, last_completed_at, due, t, tz, every)

    if window is not None:
        here = _describe_window(window, tz)
        if unfinished is not None:
            return Decision("resume", window.end, f"{here}; {work}")
        if due is None or t >= due:
            return Decision("start", window.end, f"{here}; {work}")

    work_from = t if unfinished is not None or due is None or t >= due else due
    wake = next_opening(windows, tz, work_from)
    if window is None:
        why = f"outside the windows ({windows}, {_zone_name(tz)}) until {_fmt_s(wake, tz)}; {work}"
    elif wake != work_from:
        why = f"{work}; the windows ({windows}) are closed then: sleeping until {_fmt_s(wake, tz)}"
    else:
        why = f"{_describe_window(window, tz)}; {work}"
    return Decision("sleep", wake, why)


def _pending(
    unfinished: str | None,
    last: dt.datetime | None,
    due: dt.datetime | None,
    t: dt.datetime,
    tz: dt.tzinfo,
    every: dt.timedelta,
) -> str:
    """The work side of a `why`: what is unfinished or due."""
    if unfinished is not None:
        return f"session {unfinished} unfinished"
    if last is None or due is None:
        return "no session completed yet"
    since = f"last session completed {_fmt(last, tz)}, every {_fmt_every(every)}"
    if _utc(last) > t:
        since += " (after now: did the clock go back?)"
    if t >= due:
        return f"a session is due ({since})"
    return f"next session due {_fmt(due, tz)} ({since})"


def _describe_window(window: OpenWindow, tz: dt.tzinfo) -> str:
    if window.start is None or window.end is None:
        return "no windows (always)"
    span = f"{_clock(window.start, tz)}-{_clock(window.end, tz)}"
    return f"window {span} ({_zone_name(tz)}) open until {_fmt_s(window.end, tz)}"


def _zone_name(tz: dt.tzinfo) -> str:
    return getattr(tz, "key", None) or str(tz)


def _fmt(t: dt.datetime, tz: dt.tzinfo) -> str:
    return f"{t.astimezone(tz):%Y-%m-%d %H:%M %Z}"


def _fmt_s(t: dt.datetime, tz: dt.tzinfo) -> str:
    """A window's bound or a wake time: as `_fmt`, with the seconds when they
    are not zero (a window may be a few seconds long)."""
    local = t.astimezone(tz)
    return f"{local:%Y-%m-%d} {_clock(t, tz)} {local:%Z}"


def _clock(t: dt.datetime, tz: dt.tzinfo) -> str:
    """The wall clock at `t`: `HH:MM`, or `HH:MM:SS` when the seconds are not zero."""
    local = t.astimezone(tz)
    return f"{local:%H:%M:%S}" if local.second else f"{local:%H:%M}"


def _fmt_every(every: dt.timedelta) -> str:
    """`timedelta(days=1, minutes=30)` -> `1d30m`, as `parse_every` reads it."""
    seconds = int(every.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or str(every)
