"""DA / DT / TM values as instants and ranges, for range matching and the search order.

A DT value covers the whole period of its precision: ``20261125`` is all of that day, so it can be
used as either end of a range. Values without a UTC offset are read in the gateway's configured
offset (``ups.timezone_offset``); the identifier's Timezone Offset From UTC overrides it.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from datetime import datetime, timedelta, timezone

_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")

UTC = timezone.utc


@functools.lru_cache(maxsize=256)
def parse_offset(text: str | None, default: timezone = UTC) -> timezone:
    """A UTC offset (+HHMM / -HHMM, -1200 … +1400, PS3.5 DT) as a timezone; ``default`` for
    none."""
    if not text:
        return default
    sign = -1 if text[0] == "-" else 1
    digits = text[1:] if text[0] in "+-" else text
    if len(digits) != 4 or not digits.isdigit():
        raise ValueError(f"invalid UTC offset {text!r}")
    hours, minutes = int(digits[:2]), int(digits[2:])
    limit = 12 if sign < 0 else 14
    if minutes >= 60 or hours > limit or (hours == limit and minutes):
        raise ValueError(f"UTC offset {text!r} is out of range (-1200 to +1400)")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def split_dt_range(raw: str, tz: timezone = UTC) -> tuple[str, str] | None:
    """How a DT matching value reads: (low, high) texts of a range (either may be empty: an
    open end), or None for a single value. A hyphen is a range separator or the sign of a UTC
    offset; every reading is tried: a range whose ends are valid DT values (each may carry its
    own offset) and that does not end before it starts comes first — so year-only and date-only
    ranges (``2026-2027``, ``20261125-20261130``) are ranges, never a value with an offset —
    then a single value with a negative offset (``20261125100000-0500``), then any other range
    (which the caller refuses as ending before it starts). ValueError when none is valid."""
    ranges = [(raw[:i], raw[i + 1:]) for i, c in enumerate(raw) if c == "-"
              and _is_dt(raw[:i], tz, empty=True) and _is_dt(raw[i + 1:], tz, empty=True)]
    for low, high in ranges:
        if not low or not high or dt_period(low, tz)[0] < dt_period(high, tz)[1]:
            return low, high
    if _is_dt(raw, tz):
        return None
    if ranges:
        return ranges[0]
    raise ValueError(f"invalid DT value or range {raw!r}")


def _is_dt(text: str, tz: timezone, empty: bool = False) -> bool:
    if not text:
        return empty
    try:
        dt_period(text, tz)
    except (ValueError, OverflowError):
        return False
    return True


@functools.lru_cache(maxsize=8192)  # the same values recur: stamps, query ranges, scores
def dt_period(value: str, tz: timezone = UTC) -> tuple[float, float]:
    """Epoch seconds [start, end) of the period a DT (or DA) value denotes."""
    m = _DT.match(value.strip())
    if not m:
        raise ValueError(f"invalid DT {value!r}")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    zone = parse_offset(offset, tz)
    parts = [int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
             int(second or 0)]
    micro = int((frac or "0").ljust(6, "0"))
    if parts[5] == 60:  # a leap second (PS3.5 DT allows 60)
        parts[5] = 59
    start = datetime(*parts, micro, tzinfo=zone)
    # The width in seconds, not start + timedelta: the end of 9999-12-31 is past datetime.max.
    if frac:
        width = 10.0 ** -len(frac)
    elif second:
        width = 1
    elif minute:
        width = 60
    elif hour:
        width = 3600
    elif day:
        width = 86400
    elif month:
        width = calendar.monthrange(parts[0], parts[1])[1] * 86400
    else:
        width = (366 if calendar.isleap(parts[0]) else 365) * 86400
    return start.timestamp(), start.timestamp() + width


def tm_period(value: str) -> tuple[float, float]:
    """Seconds since midnight [start, end) of a TM value."""
    m = _TM.match(value.strip())
    if not m:
        raise ValueError(f"invalid TM {value!r}")
    hour, minute, second, frac = m.groups()
    start = int(hour) * 3600 + int(minute or 0) * 60 + int(second or 0) + int((frac or "0").ljust(6, "0")) / 1e6
    width = (10 ** -len(frac)) if frac else 1 if second else 60 if minute else 3600
    return start, start + width


def period(vr: str, value: str, tz: timezone = UTC) -> tuple[float, float]:
    return tm_period(value) if vr == "TM" else dt_period(value, tz)


def format_dt(moment: datetime | None = None) -> str:
    """Now (or ``moment``) as a DT with microseconds and UTC offset."""
    if moment is None:
        return _now_dt()
    return moment.strftime("%Y%m%d%H%M%S.%f%z")


_second: list = [None, ""]  # the last second formatted by _now_dt, and its text


def _now_dt() -> str:
    """Now in UTC, as ``format_dt`` writes it; every change stamps one, so the text of the
    current second is kept (strftime costs more than the rest of the stamp)."""
    now = time.time()
    second = int(now)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y%m%d%H%M%S", time.gmtime(second))]
    return f"{_second[1]}.{min(int((now - second) * 1e6), 999999):06d}+0000"
