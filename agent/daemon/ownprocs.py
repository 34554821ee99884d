"""The agent's own processes: the agent and every process descended from it.

What the agent does itself (its marking worker, the commands its assessment
runs, the journalctl it asks at start) is no one's operation: such events are
never evaluated. A process is the agent's when it is the agent, or its parent
is the agent or an earlier descendant. Descendants are remembered by
(pid, start time), bounded, so a reused pid is a stranger again; a parent
found among them is checked against /proc before its child is taken in, so a
stranger who inherits a descendant's pid cannot hide its children. A parent
never seen (its start was missed) is looked up once in /proc's parent chain.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from agent.events import Process

_LIMIT = 4096
_DEPTH = 16  # parent links walked for a parent never seen before
_SLACK = 0.05  # start times are btime + ticks/HZ; collectors round them differently


class OwnProcesses:
    """``own(process)``: whether this process is the agent or one of its descendants."""

    def __init__(self, pid: int | None = None, proc_root: Path = Path("/proc"), limit: int = _LIMIT) -> None:
        self.pid = os.getpid() if pid is None else pid
        self._root = proc_root
        self._limit = limit
        self._known: OrderedDict[int, float | None] = OrderedDict()  # descendant pid -> start time
        self._strangers: dict[int, None] = {}  # parents whose /proc chain does not reach the agent
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
        if ppid == self.pid or (ppid in self._known and self._still_ours(ppid)) or self._descends(ppid):
            self._remember(pid, p.start_time)
            return True
        return False

    def _remember(self, pid: int, start: float | None) -> None:
        self._known[pid] = start
        if len(self._known) > self._limit:
            self._known.popitem(last=False)

    def _descends(self, pid: int) -> bool:
        """Whether ``pid`` descends from the agent by its /proc parent chain (an ancestor's event was missed).

        Walked once per unknown parent: a process that is not the agent's is remembered as a stranger
        (a process is never re-parented to the agent), a chain that reaches the agent is remembered as its.
        """
        if pid in self._strangers:
            return False
        chain: list[tuple[int, float | None]] = []
        at = pid
        for _ in range(_DEPTH):
            if at == self.pid or (at in self._known and self._still_ours(at)):
                for member, start in chain:
                    self._remember(member, start)
                return True
            if at <= 1:
                break
            stat = self._stat(at)
            if stat is None:
                break
            chain.append((at, stat[1]))
            at = stat[0]
        if len(self._strangers) >= self._limit:
            self._strangers.clear()
        self._strangers[pid] = None
        return False

    def __len__(self) -> int:
        return len(self._known)

    def _still_ours(self, pid: int) -> bool:
        """Whether the process now at ``pid`` is the descendant remembered there (or is gone)."""
        want = self._known[pid]
        if want is None:
            return True
        stat = self._stat(pid)
        return stat is None or _same(want, stat[1])

    def _stat(self, pid: int) -> tuple[int, float | None] | None:
        """(ppid, start time) of a live process from /proc/PID/stat; None when it is gone."""
        try:
            fields = (self._root / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()
            ppid, ticks = int(fields[1]), int(fields[19])
            if self._btime is None:
                for line in (self._root / "stat").read_bytes().splitlines():
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
            return ppid, None if self._btime is None else self._btime + ticks / self._hz
        except (OSError, ValueError, IndexError):
            return None


def _same(a: float | None, b: float | None) -> bool:
    return a is None or b is None or abs(a - b) <= _SLACK
