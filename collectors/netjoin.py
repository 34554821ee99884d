"""One DNS query, one event: the audit source's record of a send to port 53 joined with the sniffer's name.

While the audit source's connect/sendto rules are in force, a DNS query is
seen twice: the kernel's record of the ``connect``/``sendto`` toward port 53
(the process and person, from the kernel, even when the process is gone at
once) and the sniffer's packet (the name asked, the transport and the local
address). :class:`DnsJoin` makes them one event: the sniffer's kind and
``net`` fields (``net.dns`` with ``net.domain``, or a ``net.connect`` flagged
``net.dns_malformed``) with the audit record's time, process and parent.

Each side offers its event; whichever comes first waits at most ``window``
seconds for the other, then goes out alone (an audit record of a query the
sniffer did not see, on an interface it does not watch; a name whose send the
rules do not report, such as a later query on a connected socket whose
``connect`` was joined already: a flow joined once is answered at once after
that, when the sniffer finds the same process holding the socket). Both sides are bounded: when ``size``
events wait, a new one goes out alone at once.

The audit and network collectors each run a thread: the join is locked, and
each side emits what it gets back with its own ``emit``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from agent.events import Event, Parent, Process

DNS_PORT = 53
WINDOW = 2.0  # seconds one side waits for the other (the audit source's own close of an open serial)


def is_dns_send(ev: Event) -> bool:
    """Whether ``ev`` is the audit source's record of a send toward port 53."""
    return ev.kind == "net.connect" and ev.net.remote_port == DNS_PORT


def _match(audit: Event, sniffed: Event) -> bool:
    if audit.net.remote_ip != sniffed.net.remote_ip:
        return False
    a, s = audit.process.pid, sniffed.process.pid
    return a is None or s is None or a == s


def _joined(audit: Event, sniffed: Event) -> Event:
    return sniffed._replace(time=audit.time if audit.time is not None else sniffed.time,
                            collector=audit.collector, process=audit.process, parent=audit.parent)


FlowKey = tuple[str | None, str | None, int | None, str | None]


class DnsJoin:
    """The events of each side waiting for the other's; see the module text."""

    def __init__(self, window: float = WINDOW, size: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._audit: OrderedDict[int, tuple[float, Event]] = OrderedDict()
        self._sniffed: OrderedDict[int, tuple[float, Event]] = OrderedDict()
        self._flows: OrderedDict[FlowKey, tuple[Process, Parent]] = OrderedDict()
        self._seq = 0
        self.active = False  # the sniffer is reading: an audit record may wait for its name
        self.joined = 0  # events made one (a figure for tests and benchmarks)

    # -- the audit side -------------------------------------------------------------------
    def from_audit(self, ev: Event) -> Event | None:
        """The event to emit now for the audit source's send to port 53: joined, alone, or None (it waits)."""
        if not self.active:
            return ev
        with self._lock:
            for key, (_, sniffed) in self._sniffed.items():
                if _match(ev, sniffed):
                    del self._sniffed[key]
                    return self._join(ev, sniffed)
            return self._park(self._audit, ev)

    def audit_due(self) -> float | None:
        """When (monotonic) the oldest waiting audit event must go out alone; None when none waits."""
        with self._lock:
            return self._due(self._audit)

    def audit_expired(self, everything: bool = False) -> list[Event]:
        """Audit events that waited ``window`` seconds (or all) and go out alone."""
        with self._lock:
            return self._expired(self._audit, everything)

    # -- the sniffer side -----------------------------------------------------------------
    def from_sniffer(self, ev: Event) -> Event | None:
        """The event to emit now for a sniffed DNS message: joined, alone, or None (it waits)."""
        with self._lock:
            for key, (_, audit) in self._audit.items():
                if _match(audit, ev):
                    del self._audit[key]
                    return self._join(audit, ev)
            known = self._flows.get(_flow(ev))
            if known is not None and ev.process.pid is not None and known[0].pid == ev.process.pid:
                # A later query on a socket already joined (its connect was the one record): the
                # sniffer found the same process holding it, so the kernel's word on it still holds.
                self._flows.move_to_end(_flow(ev))
                self.joined += 1
                return ev._replace(process=known[0], parent=known[1], collector="audit")
            return self._park(self._sniffed, ev)

    def sniffer_due(self) -> float | None:
        """When (monotonic) the oldest waiting sniffed event must go out alone; None when none waits."""
        with self._lock:
            return self._due(self._sniffed)

    def sniffer_expired(self, everything: bool = False) -> list[Event]:
        """Sniffed events that waited ``window`` seconds (or all) and go out alone."""
        with self._lock:
            return self._expired(self._sniffed, everything)

    # -- both -----------------------------------------------------------------------------
    def _join(self, audit: Event, sniffed: Event) -> Event:
        self.joined += 1
        self._flows[_flow(sniffed)] = (audit.process, audit.parent)
        if len(self._flows) > self.size:
            self._flows.popitem(last=False)
        return _joined(audit, sniffed)

    def _park(self, side: OrderedDict[int, tuple[float, Event]], ev: Event) -> Event | None:
        if len(side) >= self.size:
            return ev
        self._seq += 1
        side[self._seq] = (self._clock(), ev)
        return None

    def _due(self, side: OrderedDict[int, tuple[float, Event]]) -> float | None:
        for first, _ in side.values():
            return first + self.window
        return None

    def _expired(self, side: OrderedDict[int, tuple[float, Event]], everything: bool) -> list[Event]:
        out: list[Event] = []
        now = self._clock()
        while side:
            key, (first, ev) = next(iter(side.items()))
            if not everything and now - first < self.window:
                break
            del side[key]
            out.append(ev)
        return out


def _flow(ev: Event) -> FlowKey:
    return ev.net.proto, ev.net.local_ip, ev.net.local_port, ev.net.remote_ip
