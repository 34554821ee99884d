"""The process collector: process.exec and process.exit events, in real time where permitted.

Where the kernel allows it (CAP_NET_ADMIN before Linux 6.6, anyone in the
initial namespaces since), it subscribes to the process events connector
(netlink mode) and sees every exec and exit as it happens; otherwise it
polls the process table (poll mode), which misses processes shorter than
the poll interval. ``mode: auto`` picks netlink when permitted and logs why
not otherwise; ``mode: netlink`` refuses to run without it (fail closed).

Each exec is enriched from /proc by ``ProcReader``. A process that is gone
before it can be read (short-lived commands in an exec storm) still yields
its exec event with what the kernel said (pid, and the parent learned from
its fork) and is counted under ``partials["proc_gone"]`` as a partial event (not a drop).

One thread (the supervisor's): it blocks in select on the connector socket and the stop
descriptor with no timeout, so it wakes only for the kernel's process events. It stays a
thread of its own because each exec is enriched from /proc at once, while the process
still lives, which must not wait behind another source's work.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.events import Event, Parent, Process
from collectors.base import Availability, CollectorError, Emit, Health, Sources, section
from collectors.pidledger import PidLedger
from collectors.proc_connector import ProcConnector, ProcEvent, Received, has_net_admin, own_status
from collectors.process_poll import ProcessPoller
from collectors.procfs import ProcReader

MODES = ("auto", "netlink", "poll")


class Sweeper(Protocol):
    """A source that looks for new mount namespaces when told a program ran (the media collector)."""

    def sweep_now(self, pid: int | None = None) -> None:
        """Look at ``pid``'s mount namespace (else all of them) soon."""
        ...


class Coverage(Protocol):
    """A source that may report some kinds itself (the kernel audit collector)."""

    def covers(self, kind: str) -> bool:
        """Whether it reports ``kind`` now."""
        ...


_FORK_MEMORY = 8192  # forks remembered for the parent of processes gone before we read them
_BATCH = 32  # datagrams read before handling them: small, so /proc is read while processes still live


class ProcessCollector:
    """Process exec/exit events from the netlink process connector, or from polling.

    Built from its config section (``enabled``, ``mode``: auto | netlink |
    poll, and optionally ``interval``: the poll period in seconds) and its
    ``Sources``; ``rcvbuf`` sizes the netlink receive buffer, which is
    what absorbs exec storms while enrichment catches up. ``health.drops`` counts ``kernel_overflow`` (the kernel
    dropped messages: ENOBUFS), ``emit_rejected`` (the pipeline refused an
    event) and ``malformed`` (undecodable datagrams).
    """

    name = "process"

    def __init__(self, config: Mapping[str, Any] | None = None, sources: Sources | None = None, *,
                 poll_interval: float | None = None, rcvbuf: int = 8 << 20,
                 logger: logging.Logger | None = None, audit: Coverage | None = None,
                 namespaces: Sweeper | None = None) -> None:
        self._sources = sources or Sources()
        self._mode = str(section(config, "mode", "auto"))
        if self._mode not in MODES:
            raise CollectorError(f"collectors.process.mode must be one of {', '.join(MODES)}, not {self._mode!r}")
        self._enabled = bool(section(config, "enabled", True))
        interval = poll_interval if poll_interval is not None else section(config, "interval", 1.0)
        self._interval = float(interval)
        self._rcvbuf = rcvbuf
        self._log = logger or logging.getLogger("dutywatch.collectors.process")
        self.health = Health()
        self.reader = ProcReader(self._sources.proc_root, self._sources.clock)
        self._forks: OrderedDict[int, int] = OrderedDict()
        # While the audit collector's exec rules are in force it reports every exec with the
        # kernel's exe and auid; this collector then keeps to forks and exits (one exec, one event).
        self._audit = audit
        # A mount namespace is made by a program that runs: each exec tells the media collector
        # to look (it has no kernel event for a new namespace, and sweeps /proc only when told).
        self._namespaces = namespaces
        # Who each process was, from this collector's process events, kept after it is gone: a program that
        # exits before its exec is read, and the files collector's operations, are still named.
        self.ledger = PidLedger(str(self._sources.proc_root), reads_proc=False)

    # -- protocol ----------------------------------------------------------

    def available(self) -> Availability:
        """netlink when permitted, else poll (in auto mode), with the reason."""
        if not self._enabled:
            return Availability(None, "disabled in config")
        if self._mode == "poll":
            return Availability("poll", "collectors.process.mode is poll")
        connector, problem = open_connector(rcvbuf=1 << 16)
        if connector is not None:
            connector.close()
            return Availability("netlink")
        return self._fallback(problem)

    def _fallback(self, problem: str) -> Availability:
        if self._mode == "netlink":
            return Availability(None, f"netlink process connector: {problem}")
        return Availability("poll", f"netlink process connector: {problem}; polling the process table instead")

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit process events until ``stop`` is set."""
        if not self._enabled:
            raise CollectorError("process collector cannot run: disabled in config")
        avail = Availability("poll", "collectors.process.mode is poll")
        if self._mode != "poll":
            # Subscribing is itself the test (``available`` does the same), so do it once.
            connector, problem = open_connector(self._rcvbuf)
            if connector is not None:
                self._log.info("process collector: netlink mode (rcvbuf %d bytes)", connector.rcvbuf_effective)
                with connector:
                    self._running("netlink", lambda: self._netlink_loop(connector, emit, stop))
                return
            avail = self._fallback(problem)
            if avail.mode is None:
                raise CollectorError(f"process collector cannot run: {avail.reason}")
        self._log.warning("process collector: poll mode every %.3gs (%s)", self._interval, avail.reason)
        poller = ProcessPoller(self.reader, self.health, self._sources.clock, interval=self._interval)
        poller.scan(emit)  # the baseline: "up" means anything started from now on is seen
        audit = self._audit

        def polled(event: Event) -> bool:
            if event.kind == "process.exec" and self._namespaces is not None:
                self._namespaces.sweep_now(event.process.pid)
            if event.kind == "process.exec" and audit is not None and audit.covers("process.exec"):
                return True
            return emit(event)

        self._running("poll", lambda: poller.run(polled, stop))

    def _running(self, mode: str, loop: Callable[[], None]) -> None:
        self.health.mode = mode
        self.health.up = True
        try:
            loop()
        finally:
            self.health.up = False

    # -- netlink -----------------------------------------------------------

    def _netlink_loop(self, connector: ProcConnector, emit: Emit, stop: threading.Event) -> None:
        def batch(got: Received) -> None:
            if got.overflows:
                # The kernel says "lost some", not how many: each report counts once.
                self.health.drop("kernel_overflow", got.overflows)
            if got.malformed:
                self.health.drop("malformed", got.malformed)
            for event in got.events:
                self.handle(event, emit)

        # Blocks until the kernel reports something or stop is set: a quiet host wakes nothing. The ledger
        # (who each process was, kept after it is gone) is fed from the same reads once the files collector
        # asks for it: one reader of the kernel's process events.
        self.ledger.pump(connector, stop, batch)

    def handle(self, event: ProcEvent, emit: Emit) -> None:
        """Turn one kernel event into zero or one DutyWatch events."""
        kind = event.kind
        if kind == "exec":
            if event.leader:
                self._exec(event, emit)
        elif kind == "exit":
            if event.leader:
                self._exit(event, emit)
        elif kind == "fork":
            if event.leader and event.parent_tgid is not None:
                self._forks[event.tgid] = event.parent_tgid
                if len(self._forks) > _FORK_MEMORY:
                    self._forks.popitem(last=False)
        elif kind == "uid":
            self.reader.invalidate(event.tgid)

    def _exec(self, event: ProcEvent, emit: Emit) -> None:
        pid = event.tgid
        self.reader.invalidate(pid)
        if self._namespaces is not None:
            self._namespaces.sweep_now(pid)
        if self._audit is not None and self._audit.covers("process.exec"):
            return
        found = self.reader.identity(pid)
        if found is not None and event.timestamp_ns and found[0].start_time is not None:
            # A short-lived process can be gone and its pid taken by a newer one before this
            # event is read: a process that started after the exec is not the one that exec'd.
            # Both times count from boot, so /proc/stat's whole-second btime cancels out.
            started = found[0].start_time - self.reader.boot_time()
            if started > event.timestamp_ns / 1e9:
                found = None
        if found is not None:
            self.ledger.seen(found[0])
        if found is None or (found[0].exe is None and found[0].cmdline is None):
            self.health.partial("proc_gone")
        if found is None:
            found = self._from_kernel(pid)
        self._send(emit, "process.exec", *found)

    def _exit(self, event: ProcEvent, emit: Emit) -> None:
        pid = event.tgid
        found = self.reader.forget(pid)
        if found is None:
            ppid = event.parent_tgid or self._forks.get(pid)
            found = (Process(pid=pid, ppid=ppid), Parent(pid=ppid))
        self._forks.pop(pid, None)
        self._send(emit, "process.exit", *found)

    def _from_kernel(self, pid: int) -> tuple[Process, Parent]:
        # Gone before /proc was read: the ids it was forked with and changed to, from the kernel's own events.
        life = self.ledger.who(pid, time.monotonic())
        ppid = self._forks.get(pid) or (life.ppid if life is not None else None)
        me = life._replace(ppid=ppid) if life is not None else Process(pid=pid, ppid=ppid)
        if ppid is None:
            return me, Parent()
        known = self.reader.cached(ppid)
        if known is None:
            return me, Parent(pid=ppid)
        p = known[0]
        return me, Parent(pid=ppid, name=p.name, exe=p.exe, cmdline=p.cmdline)

    def _send(self, emit: Emit, kind: str, process: Process, parent: Parent) -> None:
        now = self._sources.clock()
        if emit(Event(kind=kind, time=now, collector=self.name, process=process, parent=parent)):
            self.health.saw(now)
        else:
            self.health.drop("emit_rejected")


def open_connector(rcvbuf: int = 8 << 20) -> tuple[ProcConnector | None, str]:
    """A subscribed process connector, or None and why this process cannot have one.

    Only the kernel's acknowledgement of a subscription shows that events
    will flow (inside a container's pid namespace they never do), so the
    check is a real subscription. The kernel, not a capability check, has
    the last word: since Linux 6.6 unprivileged listeners are allowed, and
    real-time events beat polling whenever they are on offer.
    """
    try:
        return ProcConnector(rcvbuf=rcvbuf).open(), ""
    except CollectorError as exc:
        if has_net_admin(own_status()):
            return None, str(exc)
        return None, f"{exc} (uid {os.geteuid()} without CAP_NET_ADMIN)"
