"""Mount namespaces other than the agent's: which exist, and a mountinfo to watch for each.

A stick mounted inside a private mount namespace (``unshare -m``, a
container, a service's own namespace) is not in the agent's mount table.
Each namespace is found by a sweep of ``/proc/*/ns/mnt`` (distinct nsfs
inodes), and its table is read through one of its processes'
``/proc/PID/mountinfo``, which the kernel wakes with POLLPRI on every change
there as it does our own. No kernel event says that a namespace was made, so
the collector looks when ``hint`` is called (at most every ``SWEEP_EVERY``
seconds): a source that sees execs, mount or namespace system calls (the
process collector, the kernel audit source) calls it, since a namespace is
made by a program that runs; a hint that names the program's pid costs one
stat of its namespace, not a walk of every process. A sweep every ``SWEEP_IDLE`` seconds catches
what no hint announced; nothing written meanwhile is lost, since the media
collector dates a mount found in a new namespace back to the sweep before.
Paths inside a namespace are reached from ours as ``/proc/PID/root/...``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from collectors.base import WakeEvent

SWEEP_EVERY = 1.0   # at most this often, however many hints come
_MAX_HINTS = 1024  # pids remembered between looks; past that the next look is a whole sweep
SWEEP_IDLE = 10.0   # without any hint (the process collector off, or a namespace made without an exec)


@dataclass(slots=True)
class Namespace:
    """A foreign mount namespace: its nsfs inode, the process we read it through, that process's mountinfo."""

    ino: int
    pid: int
    fd: int

    @property
    def root(self) -> str:
        """Where this namespace's ``/`` is reached from ours."""
        return f"/proc/{self.pid}/root"


class Namespaces:
    """The foreign mount namespaces of the host, kept by ``sweep``."""

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        self.proc = proc_root
        self.known: dict[int, Namespace] = {}
        self._own = self._ns_of("self")
        self._hint = WakeEvent()  # its descriptor wakes the media collector's poll
        self._pids: set[int] = set()  # programs that ran since the last look: their namespaces are checked
        self._full = False  # a whole sweep was asked for

    def _ns_of(self, pid: str) -> int | None:
        try:
            return os.stat(self.proc / pid / "ns" / "mnt").st_ino
        except OSError:
            return None

    def hint(self, pid: int | None = None) -> None:
        """A mount or a new namespace may have appeared (in ``pid``'s namespace, if given): look at the next chance."""
        if pid is None or len(self._pids) >= _MAX_HINTS:
            self._full = True
        else:
            self._pids.add(pid)
        self._hint.set()

    def hint_fd(self) -> int:
        """Readable while a hint waits: the media collector polls it beside the mount tables."""
        return self._hint.fileno()

    def hinted(self) -> tuple[bool, list[int]]:
        """What the hints since the last look ask for: a whole sweep, and the pids to check (and forget them)."""
        if not self._hint.is_set():
            return False, []
        self._hint.clear()
        full, self._full = self._full, False
        pids, self._pids = self._pids, set()
        return full, sorted(pids)

    def look(self, pids: list[int]) -> list[Namespace]:
        """The namespaces of ``pids`` not known yet: one stat each, where a sweep stats every process."""
        new: list[Namespace] = []
        for pid in pids:
            ino = self._ns_of(str(pid))
            if ino is None or ino == self._own or ino in self.known:
                continue
            try:
                fd = os.open(self.proc / str(pid) / "mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            self.known[ino] = ns = Namespace(ino, pid, fd)
            new.append(ns)
        return new

    def sweep(self) -> tuple[list[Namespace], list[Namespace]]:
        """Find namespaces that appeared and went since the last sweep: (new, gone)."""
        seen: dict[int, int] = {}
        try:
            pids = [d for d in os.listdir(self.proc) if d.isdigit()]
        except OSError:
            return [], []
        for entry in pids:
            ino = self._ns_of(entry)
            if ino is not None and ino != self._own and ino not in seen:
                seen[ino] = int(entry)
        new: list[Namespace] = []
        for ino, pid in seen.items():
            ns = self.known.get(ino)
            if ns is not None and self._ns_of(str(ns.pid)) == ino:
                continue
            if ns is not None:  # the process we read it through is gone: read it through another
                os.close(ns.fd)
            try:
                fd = os.open(self.proc / str(pid) / "mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.known.pop(ino, None)
                continue
            self.known[ino] = Namespace(ino, pid, fd)
            if ns is None:
                new.append(self.known[ino])
        gone = [ns for ino, ns in self.known.items() if ino not in seen]
        for ns in gone:
            os.close(ns.fd)
            del self.known[ns.ino]
        return new, gone

    def close(self) -> None:
        """Close every mountinfo held."""
        for ns in self.known.values():
            os.close(ns.fd)
        self.known.clear()
