"""Who each recent process was, kept from the kernel's process events after the process is gone.

A file event names a pid; /proc describes it only while it lives. A program
that writes or reads a file and exits at once (``cp``, ``cat``) is often
reaped before a busy collector gets to /proc, and its operator would be lost.
The process events connector reports every fork (with the parent), every
change of uid (with the new ids), every exec and every exit, at the moment
they happen, queued for us in the socket's buffer however late we read them.
From these the ledger keeps, per process, what 谁运行谁负责 needs:

- the effective uid: inherited at fork, then as each ``uid`` event says;
- the login uid: read from the parent's /proc at fork (a login program sets
  it in itself before forking the session), else inherited from the parent's
  entry (the kernel copies it at fork and no event reports a change);
- the name and exe, read at exec where the process is still there, else the
  parent's (what it was forked as).

Exited processes are kept for ``keep`` seconds (at most ``limit`` of them);
each life of a pid is kept apart, so a reused pid is answered with the life
that had it when the file event was read.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.events import Process
from collectors.base import CollectorError, stop_fd, stop_timeout
from collectors.proc_connector import ProcConnector, ProcEvent, Received

log = logging.getLogger(__name__)

KEEP = 120.0  # seconds an exited process stays answerable
LIMIT = 65536  # exited lives held at most
_UNSET = 4294967295
_BATCH = 256


@dataclass(slots=True)
class Life:
    """One life of a pid: from its fork (or first sight) to its exit."""

    pid: int
    ppid: int | None
    uid: int | None
    loginuid: int | None
    name: str | None = None
    exe: str | None = None
    born_ns: int = 0  # CLOCK_MONOTONIC of the fork; 0 when the process predates the ledger
    exited_ns: int | None = None

    def process(self) -> Process:
        """The event's process group as far as the kernel's events tell it."""
        return Process(pid=self.pid, ppid=self.ppid, name=self.name, exe=self.exe, uid=self.uid,
                       loginuid=None if self.loginuid == _UNSET else self.loginuid)


class PidLedger:
    """Process lives by pid, fed with ``feed`` (or ``run`` on its own connector); ask with ``who``."""

    def __init__(self, proc_root: str = "/proc", *, keep: float = KEEP, limit: int = LIMIT,
                 on_new: Callable[[int], None] | None = None, reads_proc: bool = True) -> None:
        self._root = proc_root
        # False: whoever feeds it reads each new program's /proc entry anyway and passes it on (``seen``);
        # the ledger then does no /proc read of its own per event (only for a parent it never saw).
        self._reads_proc = reads_proc
        self._keep_ns = int(keep * 1e9)
        self._limit = limit
        # Told of every new life of a pid (a cache keyed by pid is stale now).
        self.on_new: list[Callable[[int], None]] = [on_new] if on_new is not None else []
        self._live: dict[int, Life] = {}
        self._gone: dict[int, list[Life]] = {}
        self._order: deque[Life] = deque()  # exited lives, oldest first
        self._lock = threading.Lock()
        self._connector: ProcConnector | None = None
        self.synced = 0.0  # every kernel event before this monotonic time has been fed
        self._busy = False  # reading or feeding (set before the first read after a wait)
        self.overflows = 0

    # -- feeding ----------------------------------------------------------------------------------------------------

    def open(self) -> str:
        """Subscribe to the process events; "" when subscribed, else why not."""
        try:
            self._connector = ProcConnector(rcvbuf=8 << 20).open()
        except CollectorError as exc:
            return str(exc)
        return ""

    def run(self, stop: threading.Event) -> None:
        """Read the connector opened by ``open`` until ``stop`` is set, then close it."""
        conn = self._connector
        if conn is None:
            return
        try:
            self.pump(conn, stop)
        except (CollectorError, OSError) as exc:
            log.warning("files: process events stopped: %s", exc)
        finally:
            conn.close()

    def pump(self, conn: ProcConnector, stop: threading.Event,
             also: Callable[[Received], None] | None = None) -> None:
        """Read ``conn`` until ``stop`` is set, feeding this ledger and handing each batch to
        ``also`` (the process collector shares its subscription this way: one reader of the kernel's events).

        It blocks on the socket and the stop's descriptor while nothing happens: a quiet host costs nothing.
        """
        fd, wake = conn.fileno(), stop_fd(stop)
        waits = [fd] if wake is None else [fd, wake]
        self._connector = conn
        try:
            while not stop.is_set():
                self._busy = False
                select.select(waits, [], [], stop_timeout(stop, None))
                self._busy = True
                t = time.monotonic()
                got = conn.receive(0, _BATCH)
                self.overflows += got.overflows
                for event in got.events:
                    self.feed(event)
                if also is not None:
                    also(got)
                if len(got.events) < _BATCH:
                    self.synced = t  # the socket ran dry after t: everything before it is in
        finally:
            self._busy = False
            self._connector = None
            self.synced = float("inf")  # nothing more will come: no one waits for it

    def synced_at(self) -> float:
        """A time before which every process event has been fed (now, when the reader waits on an empty socket)."""
        t, synced, conn = time.monotonic(), self.synced, self._connector
        if self._busy or conn is None:
            return synced
        try:
            waiting, _, _ = select.select([conn.fileno()], [], [], 0)
        except (CollectorError, OSError, ValueError):
            return synced
        # Busy again: it woke and read between the two looks, and may not have fed the events yet.
        return synced if waiting or self._busy else t

    def feed(self, ev: ProcEvent) -> None:
        """Take one kernel process event."""
        kind = ev.kind
        if kind == "fork":
            if ev.leader and ev.parent_tgid is not None:
                self._fork(ev.tgid, ev.parent_tgid, ev.timestamp_ns)
        elif kind == "uid":
            with self._lock:
                life = self._live.get(ev.tgid)
                if life is not None and ev.euid is not None:
                    life.uid = ev.euid
        elif kind == "exec":
            self._exec(ev.tgid)
        elif kind == "exit" and ev.leader:
            with self._lock:
                life = self._live.pop(ev.tgid, None)
                if life is not None:
                    life.exited_ns = ev.timestamp_ns or time.monotonic_ns()
                    self._gone.setdefault(life.pid, []).append(life)
                    self._order.append(life)
                    self._expire(life.exited_ns)

    def _fork(self, pid: int, ppid: int, ts: int) -> None:
        parent = self._live.get(ppid) or self._first_sight(ppid)
        loginuid = _read_int(f"{self._root}/{ppid}/loginuid") if self._reads_proc else None
        life = Life(pid, ppid, parent.uid if parent else None,
                    loginuid if loginuid is not None else parent.loginuid if parent else None,
                    parent.name if parent else None, parent.exe if parent else None, ts)
        with self._lock:
            self._live[pid] = life
        for tell in self.on_new:
            tell(pid)

    def _exec(self, pid: int) -> None:
        life = self._live.get(pid) or (self._first_sight(pid) if self._reads_proc else None)
        if life is None:
            return
        if not self._reads_proc:
            life.exe = life.name = None  # another program now; ``seen`` tells which
            for tell in self.on_new:
                tell(pid)
            return
        base = f"{self._root}/{pid}"
        try:
            life.exe = os.readlink(f"{base}/exe").removesuffix(" (deleted)")
            with open(f"{base}/comm", "rb") as f:
                life.name = f.read().rstrip(b"\n").decode("utf-8", "replace")
        except OSError:
            life.exe = life.name = None  # gone already: not the program it was forked as, either
        for tell in self.on_new:
            tell(pid)

    def seen(self, p: Process) -> None:
        """What was read of a live process (its exec): its program and ids as they are now."""
        if p.pid is None:
            return
        with self._lock:
            life = self._live.get(p.pid)
            if life is None:
                return
            life.exe, life.name = p.exe, p.name
            if p.uid is not None:
                life.uid = p.uid
            life.loginuid = p.loginuid if p.loginuid is not None else _UNSET

    def _first_sight(self, pid: int) -> Life | None:
        """A process that predates the ledger, from /proc (None when it is gone too)."""
        base = f"{self._root}/{pid}"
        uid = name = ppid = None
        try:
            with open(f"{base}/status", "rb") as f:
                for line in f.read().splitlines():
                    if line.startswith(b"Name:"):
                        name = line[5:].strip().decode("utf-8", "replace")
                    elif line.startswith(b"PPid:"):
                        ppid = int(line.split()[1])
                    elif line.startswith(b"Uid:"):
                        uid = int(line.split()[2])
        except (OSError, ValueError, IndexError):
            return None
        try:
            exe: str | None = os.readlink(f"{base}/exe").removesuffix(" (deleted)")
        except OSError:
            exe = None
        life = Life(pid, ppid, uid, _read_int(f"{base}/loginuid"), name, exe)
        with self._lock:
            self._live[pid] = life
        return life

    def _expire(self, now_ns: int) -> None:
        # Under the lock. Oldest exits first; past the limit the oldest go early.
        horizon = now_ns - self._keep_ns
        while (self._order and (self._order[0].exited_ns or 0) < horizon) or len(self._order) > self._limit:
            old = self._order.popleft()
            lives = self._gone.get(old.pid)
            if lives:
                lives.remove(old)
                if not lives:
                    del self._gone[old.pid]

    # -- asking -----------------------------------------------------------------------------------------------------

    def who(self, pid: int, seen: float) -> Process | None:
        """The process ``pid`` was when a file event of it was read at ``seen`` (monotonic seconds).

        The life born last before ``seen``: a pid taken again after that is a newer process.
        """
        at = int(seen * 1e9)
        with self._lock:
            best: Life | None = None
            for life in (*self._gone.get(pid, ()), self._live.get(pid)):
                if life is not None and life.born_ns <= at and (best is None or life.born_ns >= best.born_ns):
                    best = life
            return best.process() if best is not None else None

    def __len__(self) -> int:
        return len(self._live) + len(self._order)


def _read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None
