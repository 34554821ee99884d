"""Errors the journal raises on purpose, each saying what to do about it."""

from __future__ import annotations

from agent.errors import DutyWatchError


class JournalError(DutyWatchError):
    """Base class of every journal error."""


class JournalPermissionError(JournalError):
    """A state directory, journal or key is readable or writable by others."""


class JournalLockedError(JournalError):
    """Another process is writing the journal, or SQLite could not get its lock."""


class JournalCorruptError(JournalError):
    """The journal file is not a readable DutyWatch journal."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"{path}: journal is corrupt ({detail}); move it aside with quarantine_corrupt "
            "(the agent does this at start) and keep the copy as evidence"
        )
        self.path = path
        self.detail = detail


class RecordError(JournalError):
    """A record handed to the journal is not one it can store."""


class BundleError(JournalError):
    """An evidence bundle could not be written."""
