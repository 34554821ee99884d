"""Process events by polling the process table: the unprivileged fallback.

Every ``interval`` seconds psutil lists the processes; a (pid, create_time)
not seen before is an exec, one seen before and missing now is an exit.
Processes that start and end between two scans are never seen: this mode
trades completeness for needing no privilege, and says so through its mode
("poll"). The first scan only learns what is already running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.events import Event, Parent, Process
from collectors.base import Clock, Emit, Health
from collectors.procfs import ProcReader

Key = tuple[int, float]  # (pid, create_time): a pid alone is reused
Lister = Callable[[], list[Key]]


def psutil_lister() -> list[Key]:
    """(pid, create_time) of every process psutil can see now."""
    import psutil  # late: only the fallback needs it

    out: list[Key] = []
    for proc in psutil.process_iter(["create_time"]):
        created = proc.info.get("create_time")
        if isinstance(created, float):
            out.append((proc.pid, created))
    return out


class ProcessPoller:
    """Turns successive process-table scans into process.exec and process.exit events.

    ``scan(emit)`` runs one comparison (the first call only sets the
    baseline); ``run(emit, stop)`` scans every ``interval`` seconds until
    ``stop`` is set. Memory is one entry per live process.
    """

    def __init__(self, reader: ProcReader, health: Health, clock: Clock, *, interval: float = 1.0,
                 lister: Lister = psutil_lister, collector: str = "process") -> None:
        self._reader = reader
        self._health = health
        self._clock = clock
        self._interval = interval
        self._lister = lister
        self._collector = collector
        self._seen: set[Key] | None = None

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Scan until ``stop`` is set; ``stop`` is honoured between scans at once."""
        if self._seen is None:
            self.scan(emit)
        while not stop.wait(self._interval):
            self.scan(emit)

    def scan(self, emit: Emit) -> None:
        """Compare the process table with the last scan and emit the difference."""
        now_keys = set(self._lister())
        previous, self._seen = self._seen, now_keys
        if previous is None:
            for pid, _created in now_keys:
                self._reader.identity(pid)  # warm the cache so exits carry who ended
            return
        # Exits first: a pid that ended and was reused between two scans must
        # not have its newcomer's freshly cached identity taken by the exit.
        for key in previous - now_keys:
            self._emit_exit(emit, key)
        for key in sorted(now_keys - previous, key=lambda k: k[1]):
            self._emit_exec(emit, key)

    def _emit_exec(self, emit: Emit, key: Key) -> None:
        pid, created = key
        found = self._reader.identity(pid)
        if found is None or (found[0].exe is None and found[0].cmdline is None):
            self._health.partial("proc_gone")
        if found is None:
            found = (Process(pid=pid, start_time=created), Parent())
        self._send(emit, "process.exec", *found)

    def _emit_exit(self, emit: Emit, key: Key) -> None:
        pid, created = key
        found = self._reader.forget(pid)
        if found is None or found[0].start_time is None or abs(found[0].start_time - created) > 1.0:
            found = (Process(pid=pid, start_time=created), Parent())
        self._send(emit, "process.exit", *found)

    def _send(self, emit: Emit, kind: str, process: Process, parent: Parent) -> None:
        now = self._clock()
        if emit(Event(kind=kind, time=now, collector=self._collector, process=process, parent=parent)):
            self._health.saw(now)
        else:
            self._health.drop("emit_rejected")
