"""Package version order as dpkg sorts it (epoch, upstream, revision; ``~`` before anything).

rpm's order agrees with it on the versions distributions ship (epoch:version-release); the
differences (rpm's ``^``, alphanumeric segment rules) do not arise in the versions policies name.
"""

from __future__ import annotations

import re


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _part(a: str, b: str) -> int:
    """dpkg's verrevcmp of one part."""
    i = j = 0
    while i < len(a) or j < len(b):
        first = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first:
                first = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first:
            return first
    return 0


def _split(v: str) -> tuple[int, str, str]:
    m = re.match(r"^(?:(\d+):)?(.*?)(?:-([^-]*))?$", v.strip())
    assert m is not None
    return int(m.group(1) or 0), m.group(2), m.group(3) or ""


def compare(a: str, b: str) -> int:
    """Negative, zero or positive as version ``a`` sorts before, with or after ``b``."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _part(ua, ub) or _part(ra, rb)
