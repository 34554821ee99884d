"""The agent's own processes: the agent and every process descended from it.

What the agent does itself (its marking worker, the commands its assessment
runs, the journalctl it asks at start) is no one's operation: such events are
never evaluated. A process is the agent's when it is the agent, or its parent
is the agent or an earlier descendant. Descendants are remembered by
(pid, start time), bounded, so a reused pid is a stranger again; a parent
found among them is checked against /proc before its child is taken in, so a
stranger who inherits a descendant's pid cannot hide its children.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from agent.events import Process

_LIMIT = 4096
_SLACK = 0.05  # start times are btime + ticks/HZ; collectors round them differently


class OwnProcesses:
    """``own(process)``: whether this process is the agent or one of its descendants."""

    def __init__(self, pid: int | None = None, proc_root: Path = Path("/proc"), limit: int = _LIMIT) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._root = proc_root
        self._limit = limit
        self._known: OrderedDict[int, float | None] = OrderedDict()  # descendant pid -> start time
        self._btime: float | None = None
        self._hz = os.sysconf("SC_CLK_TCK")

    def __call__(self, p: Process) -> bool:
        pid = p.pid
        if pid is None:
            return False
        if pid == self.pid:
            return True
        if pid in self._known:
            if _same(self._known[pid], p.start_time):
                self._known.move_to_end(pid)
                return True
            del self._known[pid]  # the pid was reused by a stranger
        ppid = p.ppid
        if ppid is None or ppid <= 1:
            return False
        if ppid == self.pid or (ppid in self._known and self._still_ours(ppid)):
            self._known[pid] = p.start_time
            if len(self._known) > self._limit:
                self._known.popitem(last=False)
            return True
        return False

    def __len__(self) -> int:
        return len(self._known)

    def _still_ours(self, pid: int) -> bool:
        """Whether the process now at ``pid`` is the descendant remembered there (or is gone)."""
        want = self._known[pid]
        if want is None:
            return True
        now = self._start_time(pid)
        return now is None or _same(want, now)

    def _start_time(self, pid: int) -> float | None:
        try:
            raw = (self._root / str(pid) / "stat").read_bytes()
            ticks = int(raw.rsplit(b")", 1)[1].split()[19])
            if self._btime is None:
                for line in (self._root / "stat").read_bytes().splitlines():
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
            return None if self._btime is None else self._btime + ticks / self._hz
        except (OSError, ValueError, IndexError):
            return None


def _same(a: float | None, b: float | None) -> bool:
    return a is None or b is None or abs(a - b) <= _SLACK
