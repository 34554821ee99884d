"""Resource bounds for a marking scan, and the ways a scan stops early."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one scan may read, unpack and spend.

    ``max_bytes`` bounds the bytes read from the file: the head of a text file
    or PDF, the compressed members of a zip. ``max_unpacked`` bounds what zip
    members may inflate to in total, ``max_ratio`` the inflation of any one
    member once past ``ratio_floor`` bytes (a real Office part rarely passes
    30:1; deflate bombs run near 1000:1). ``max_pdf_stream`` bounds what one
    PDF stream may decode to.
    """

    max_bytes: int = 32 * MIB
    max_seconds: float = 5.0
    max_unpacked: int = 64 * MIB
    max_ratio: int = 200
    ratio_floor: int = 1 * MIB
    max_members: int = 10_000
    max_central_dir: int = 2 * MIB  # zipfile holds an object per entry
    max_pages: int = 500
    max_pdf_stream: int = 16 * MIB


class Stop(Exception):
    """Reading stopped before the end; ``reason`` says why, for the result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unreadable(Stop):
    """The content is malformed, hostile or over a bound that is not a plain cut."""


class TimedOut(Stop):
    """The per-file time cap passed: the file is unscanned, not known to be clean."""


class Truncated(Stop):
    """The size cap cut the file: what was read is a valid head."""


class Skipped(Stop):
    """The file is not a document format the scan reads (a plain archive, say)."""


class Deadline:
    """The per-file time cap, checked between chunks, parts and pages."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._end = clock() + seconds

    def check(self) -> None:
        """Raise TimedOut once the time cap has passed."""
        if self._clock() > self._end:
            raise TimedOut(f"time limit of {self._seconds:g}s reached")
