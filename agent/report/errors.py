"""The report's one error type."""

from __future__ import annotations

from agent.errors import DutyWatchError


class ReportError(DutyWatchError):
    """A report that cannot be made: no font, an unreachable Prometheus, a bad source."""
