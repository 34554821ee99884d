"""Tests on one probed value: equals, in, matches, min, max, set; each says why it held or not."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.errors import Problems
from agent.schema import expect_bool
from agent.yamlsrc import LDict

TEST_KEYS = ("equals", "not_equals", "in", "not_in", "matches", "not_matches", "min", "max", "set")


def _num(v: str | None) -> float | None:
    if v is None:
        return None
    m = re.match(r"^\s*(-?\d+(?:\.\d+)?)", v)
    return float(m.group(1)) if m else None


@dataclass(frozen=True, slots=True)
class ValueTest:
    """The tests a probe's mapping gives for its value (all must hold). Comparison ignores case."""

    equals: str | None = None
    not_equals: str | None = None
    in_: tuple[str, ...] | None = None
    not_in: tuple[str, ...] | None = None
    matches: re.Pattern[str] | None = None
    not_matches: re.Pattern[str] | None = None
    min: float | None = None
    max: float | None = None
    set: bool | None = None

    def empty(self) -> bool:
        """Whether no test was given."""
        return all(getattr(self, f) is None for f in self.__slots__)

    def check(self, value: str | None) -> tuple[bool, str]:
        """(holds, what was expected when it does not)."""
        low = value.lower() if value is not None else None
        if self.set is not None and (value is not None) != self.set:
            return False, "expected it set" if self.set else "expected it not set"
        if self.equals is not None and low != self.equals.lower():
            return False, f"expected {self.equals}"
        if self.not_equals is not None and low == self.not_equals.lower():
            return False, f"expected anything but {self.not_equals}"
        if self.in_ is not None and low not in {x.lower() for x in self.in_}:
            return False, f"expected one of {', '.join(self.in_)}"
        if self.not_in is not None and low is not None and low in {x.lower() for x in self.not_in}:
            return False, f"expected none of {', '.join(self.not_in)}"
        if self.matches is not None and (value is None or not self.matches.search(value)):
            return False, f"expected to match /{self.matches.pattern}/"
        if self.not_matches is not None and value is not None and self.not_matches.search(value):
            return False, f"expected not to match /{self.not_matches.pattern}/"
        n = _num(value)
        if self.min is not None and (n is None or n < self.min):
            return False, f"expected at least {self.min:g}"
        if self.max is not None and (n is None or n > self.max):
            return False, f"expected at most {self.max:g}"
        return True, ""


def _scalar(v: Any) -> str | None:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float, str)):
        return str(v)
    return None


def parse_value_test(m: LDict, problems: Problems, what: str) -> ValueTest:
    """The test keys of a probe mapping; each wrong value recorded with its place."""
    kw: dict[str, Any] = {}
    for key in TEST_KEYS:
        if key not in m:
            continue
        v, where = m[key], m.at(key)
        if key in ("equals", "not_equals"):
            s = _scalar(v)
            if s is None:
                problems.add(where, f"{what}.{key} must be a scalar")
            kw[key] = s
        elif key in ("in", "not_in"):
            items = [_scalar(x) for x in v] if isinstance(v, list) else None
            if not items or any(x is None for x in items):
                problems.add(where, f"{what}.{key} must be a non-empty list of scalars")
                continue
            kw["in_" if key == "in" else key] = tuple(str(x) for x in items)
        elif key in ("matches", "not_matches"):
            try:
                kw[key] = re.compile(str(v))
            except re.error as exc:
                problems.add(where, f"{what}.{key}: bad regular expression: {exc}")
        elif key in ("min", "max"):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                problems.add(where, f"{what}.{key} must be a number")
                continue
            kw[key] = float(v)
        else:
            kw[key] = expect_bool(v, where, problems, f"{what}.{key}")
    return ValueTest(**kw)
