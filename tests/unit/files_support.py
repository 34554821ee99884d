"""Driving the files collector by hand: its two inbound streams (inotify operations, fanotify records) and its
flush, with the clock in the test's hands."""

from __future__ import annotations

import queue
from collections.abc import Callable

from agent.events import Event, Process
from collectors.files import FilesCollector, _Who
from collectors.pidledger import PidLedger
from collectors.watch import FsOp


class Fake:
    """fanotify "on" without a descriptor: operations wait for its records."""

    names = None


def collector(ledger: PidLedger | None = None) -> tuple[FilesCollector, list[Event], Callable[[float], None]]:
    """A collector reading ``ledger`` (if given), the events it emits, and its flush at a given time."""
    c = FilesCollector(None)
    c._fan = Fake()  # type: ignore[assignment]
    if ledger is not None:
        c._ledger = ledger
    out: list[Event] = []
    return c, out, lambda now: c._flush(now, out.append, queue.Queue())


def op(c: FilesCollector, what: str, path: str, now: float) -> None:
    """An inotify operation."""
    c._take(("op", FsOp(what, path, False), now, 1.7e9))


def record(c: FilesCollector, path: str, mask: int, pid: int, now: float, *, gone: bool = False) -> None:
    """A fanotify record of ``pid``; ``gone``: /proc had nothing but the pid, so the reader asked the ledger."""
    p = Process(pid=pid)
    c._take(("fan", path, _Who(now, mask, c._settle(p, now) if gone else p), 1.7e9))
