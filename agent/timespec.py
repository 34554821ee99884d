"""``--since`` / ``--until`` values: an ISO 8601 date or date-time, or a duration back from now."""

from __future__ import annotations

import datetime as dt
import re

from agent.errors import DutyWatchError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class TimeSpecError(DutyWatchError):
    """A time value that is neither an ISO 8601 date(-time) nor a duration."""


def parse_duration(text: str) -> float | None:
    """Seconds in ``90m``, ``24h``, ``7d``, ``1h30m``; None when ``text`` is not a duration."""
    s = text.strip().lower()
    if not s:
        return None
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(s) and pos > 0 else None


def parse_timespec(text: str, now: float, *, option: str = "time") -> float:
    """Epoch seconds for ``text``; a duration counts back from ``now``.

    A date or date-time without a zone is local time, as an operator reading
    a wall clock means it; ``Z`` or ``+08:00`` pin it.
    """
    seconds = parse_duration(text)
    if seconds is not None:
        return now - seconds
    value = text.strip()
    try:
        if len(value) == 10:
            stamp = dt.datetime.combine(dt.date.fromisoformat(value), dt.time())
        else:
            stamp = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise TimeSpecError(
            f"{option} {text!r}: not an ISO 8601 date (2024-05-01), date-time "
            "(2024-05-01T08:30, 2024-05-01T08:30+08:00) or duration back from now (90m, 24h, 7d)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()  # naive: the machine's local zone
    return stamp.timestamp()
