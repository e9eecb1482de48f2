"""The upload limit: `upload_limit = "10MiB/s"`, `"off"`, or a timetable in
rclone's `--bwlimit` syntax: parsing and the limit in force at a given
local time (pure), and `Throttle`, which the uploader awaits before each
part or one-part upload, shared by all of them.

A timetable is entries separated by spaces, each `[DAY-]HH:MM,RATE`: from
that time on (that day of the week, or every day) the limit is RATE, until
the next entry; before the first entry of a day (or week), the last one
applies, carried over. RATE is `off` (no limit) or a size per second with a
unit: `512KiB/s`, `10MiB/s`, or rclone's `512k`, `10M`, `1G` (KiB, MiB,
GiB; `/s` optional). A bare number is refused rather than guessed (rclone
reads it as KiB/s, most people as bytes/s). DAY is `Mon` ... `Sun`.

    "08:00,512KiB/s 23:00,off"
    "Mon-00:00,512k Fri-23:59,10M Sat-10:00,1M Sun-20:00,off"
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import trio

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|k|K|M|G)(?:/s)?$")
_UNIT = {"B": 1, "KiB": 1024, "k": 1024, "K": 1024, "MiB": 1024**2, "M": 1024**2}
_UNIT.update({"GiB": 1024**3, "G": 1024**3})
_ENTRY = re.compile(r"^(?:(?P<day>[A-Za-z]{3})-)?(?P<h>\d{1,2}):(?P<m>\d{2}),(?P<rate>\S+)$")
_WEEK = 7 * 24 * 60


class LimitError(ValueError):
    """An upload limit that does not parse (the message names the key)."""


@dataclass(frozen=True)
class Timetable:
    """Limits from minutes of the week on (sorted; bytes per second, None:
    no limit). One entry at minute 0: a constant limit."""

    entries: tuple[tuple[int, int | None], ...]

    @property
    def constant(self) -> bool:
        return len({rate for _, rate in self.entries}) == 1


def parse_rate(text: str, key: str = "upload_limit") -> int | None:
    """`off` -> None; `10MiB/s`, `512k` -> bytes per second."""
    t = text.strip()
    if t.lower() == "off":
        return None
    m = _RATE.match(t)
    if m is None:
        why = "a number needs a unit" if re.fullmatch(r"\d+(\.\d+)?", t) else "not a rate"
        raise LimitError(f"{key}: {text!r} is {why} (examples: 10MiB/s, 512k, off)")
    rate = int(float(m.group(1)) * _UNIT[m.group(2)])
    if rate <= 0:
        raise LimitError(f"{key}: {text!r} is not a positive rate (use off for no limit)")
    return rate


def parse_limit(text: str, key: str = "upload_limit") -> Timetable:
    """A rate or a timetable (see the module's docstring); LimitError names
    `key` and the part that does not parse."""
    parts = text.split()
    if not parts:
        raise LimitError(f'{key}: empty (examples: 10MiB/s, off, "08:00,512KiB/s 23:00,off")')
    if len(parts) == 1 and "," not in parts[0]:
        return Timetable(((0, parse_rate(parts[0], key)),))
    found: dict[int, int | None] = {}
    for part in parts:
        m = _ENTRY.match(part)
        if m is None:
            raise LimitError(f"{key}: {part!r} is not [DAY-]HH:MM,RATE")
        h, mi = int(m["h"]), int(m["m"])
        if h > 23 or mi > 59:
            raise LimitError(f"{key}: {part!r}: {m['h']}:{m['m']} is not a time of day")
        rate = parse_rate(m["rate"], key)
        day = m["day"]
        if day is not None and day.lower() not in DAYS:
            raise LimitError(f"{key}: {part!r}: {day!r} is not a day (Mon ... Sun)")
        days = [DAYS.index(day.lower())] if day else range(7)
        for d in days:
            at = d * 24 * 60 + h * 60 + mi
            if at in found:
                raise LimitError(f"{key}: {part!r}: two entries for the same time")
            found[at] = rate
    return Timetable(tuple(sorted(found.items())))


def limit_at(table: Timetable, local: datetime) -> int | None:
    """The limit in force at `local` (wall-clock time where the timetable
    applies): the last entry at or before it in the week, else the week's
    last entry, carried over."""
    minute = local.weekday() * 24 * 60 + local.hour * 60 + local.minute
    current = table.entries[-1][1]
    for at, rate in table.entries:
        if at > minute:
            break
        current = rate
    return current


def next_change(table: Timetable, local: datetime) -> int:
    """Minutes from `local`'s minute to the next entry's (a week if constant)."""
    minute = local.weekday() * 24 * 60 + local.hour * 60 + local.minute
    later = [at for at, _ in table.entries if at > minute]
    return (later[0] if later else table.entries[0][0] + _WEEK) - minute


class Throttle:
    """The upload limit enforced across every upload of a process, on Trio's
    clock: `take(n)` waits until n more bytes may start going out. Each
    call reserves the next n / rate seconds of the link, first come first
    served (a virtual schedule, so no credit piles up while idle): however
    many parts are in flight, the bytes started per second stay at the rate
    in force (read from the timetable at each call), give or take one part.
    """

    def __init__(self, table: Timetable, local_now: Callable[[], datetime]) -> None:
        self.table = table
        self.local_now = local_now
        self._lock = trio.Lock()
        self._free_at = -math.inf  # on Trio's clock: when the link is free again

    async def take(self, n: int) -> None:
        rate = limit_at(self.table, self.local_now())
        if rate is None or n <= 0:
            return
        async with self._lock:  # in order: a part waits for those before it
            start = max(trio.current_time(), self._free_at)
            self._free_at = start + n / rate
            await trio.sleep_until(start)
