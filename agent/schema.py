"""Small checks for YAML documents loaded with locations.

Every check records a problem with its ``path:line:col`` and returns a safe
value so one pass can report every problem in a file (fail closed: the
caller raises when anything was recorded).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.errors import Location, Problems
from agent.yamlsrc import LDict, LList, where_of


def expect_map(
    value: Any,
    where: Location,
    problems: Problems,
    what: str,
    required: Iterable[str] = (),
    optional: Iterable[str] = (),
) -> LDict | None:
    """Check a mapping: its required keys present, no keys outside the two sets."""
    if not isinstance(value, LDict):
        problems.add(where_of(value, where), f"{what} must be a mapping")
        return None
    req = tuple(required)
    allowed = set(req) | set(optional)
    for key in value:
        if key not in allowed:
            hint = f" (expected one of: {', '.join(sorted(allowed))})" if allowed else ""
            problems.add(value.key_at(key), f"unknown key {key!r} in {what}{hint}")
    for key in req:
        if key not in value:
            problems.add(value.where, f"missing required key {key!r} in {what}")
    return value


def expect_list(value: Any, where: Location, problems: Problems, what: str) -> LList | None:
    """Check a sequence."""
    if not isinstance(value, LList):
        problems.add(where_of(value, where), f"{what} must be a list")
        return None
    return value


def expect_str(value: Any, where: Location, problems: Problems, what: str,
               allow_none: bool = False) -> str | None:
    """Check a non-empty string (or None where allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(where_of(value, where), f"{what} must be a non-empty string")
        return None
    return str(value)


def expect_int(value: Any, where: Location, problems: Problems, what: str,
               minimum: int | None = None, maximum: int | None = None) -> int | None:
    """Check an integer within bounds."""
    if not isinstance(value, int) or isinstance(value, bool):
        problems.add(where_of(value, where), f"{what} must be an integer")
        return None
    if minimum is not None and value < minimum:
        problems.add(where, f"{what} must be at least {minimum}")
        return None
    if maximum is not None and value > maximum:
        problems.add(where, f"{what} must be at most {maximum}")
        return None
    return value


def expect_bool(value: Any, where: Location, problems: Problems, what: str) -> bool | None:
    """Check a boolean."""
    if not isinstance(value, bool):
        problems.add(where_of(value, where), f"{what} must be true or false")
        return None
    return value


def str_list(value: Any, where: Location, problems: Problems, what: str) -> tuple[str, ...]:
    """Check a list of non-empty strings."""
    seq = expect_list(value, where, problems, what)
    if seq is None:
        return ()
    out = []
    for i, item in enumerate(seq):
        s = expect_str(item, seq.at(i), problems, f"{what}[{i}]")
        if s is not None:
            out.append(s)
    return tuple(out)
