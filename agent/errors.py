"""The project's error types. Every load error carries where it came from."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a text file: path, 1-based line and column."""

    path: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.path
        return f"{self.path}:{self.line}:{self.col}"


class DutyWatchError(Exception):
    """Base class of every error DutyWatch raises on purpose."""


class LoadError(DutyWatchError):
    """Bad input in a config, registry, rule or sample file, with its place."""

    def __init__(self, where: Location, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class LoadErrors(DutyWatchError):
    """Several load errors found in one pass; the load failed as a whole."""

    def __init__(self, errors: list[LoadError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class Problems(list[LoadError]):
    """Gathers load errors so one pass can report every problem at once."""

    def add(self, where: Location, message: str) -> None:
        """Record one problem at a place."""
        self.append(LoadError(where, message))

    def raise_if_any(self) -> None:
        """Raise LoadErrors when anything was recorded."""
        if self:
            raise LoadErrors(list(self))


def access_hint(exc: OSError) -> str:
    """What to do about a permission error: DutyWatch's files belong to root and the dutywatch group."""
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        return " (run as root, or as a member of the dutywatch group)"
    return ""
