"""The network collector: connections, accepts, listens and DNS queries, with their process.

``mode: sniff`` (CAP_NET_RAW and libpcap) sees every connection as it
starts: an outgoing SYN is a ``net.connect``, an outgoing SYN-ACK a
``net.accept``, the first outgoing datagram of a UDP flow a ``net.connect``
and a query to port 53 a ``net.dns`` carrying the name asked. ``mode: poll``
diffs psutil's socket list once a second instead. In both modes the listen
tables are diffed once a second for ``net.listen``; the sockets listening
when the collector starts are reported once, as an inventory.

The process behind each event is found through its socket (``SockMap``),
its fields are read, and the owner is confirmed again afterwards, so a pid
that changed hands in between is never reported. When the process cannot
be found (it exited before its first packet was looked at: a connection
that opens and closes within a millisecond; or /proc/PID/fd is not
readable without CAP_SYS_PTRACE) the event is still emitted with what is
known (the socket's uid, the pid if it was seen) and the loss is counted
as drop reason ``no_process``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from agent.events import Event, Net, Parent, Process
from collectors.base import Availability, CollectorError, Emit, Health, Sources, section, translate_os_error
from collectors.network_poll import Conn, ConnectionPoller, Lister, psutil_lister
from collectors.sniff import (
    DecodeError,
    Packet,
    Sniffer,
    can_open_packet_socket,
    decode,
    dns_query_name,
    libpcap_problem,
)
from collectors.sockdiag import dump
from collectors.sockmap import (
    TCP_LISTEN,
    UDP_UNCONNECTED,
    Found,
    ProcessLookup,
    ProcReader,
    SockEntry,
    SockMap,
    ephemeral_range,
    read_tables,
    system_user,
)

log = logging.getLogger(__name__)

MODES = ("auto", "sniff", "poll")


class FlowSet:
    """A bounded LRU of flows already reported."""

    def __init__(self, size: int = 4096) -> None:
        """Remember at most ``size`` flows; the least recently seen are forgotten first."""
        self.size = size
        self._flows: OrderedDict[Hashable, None] = OrderedDict()

    def first(self, key: Hashable) -> bool:
        """True when ``key`` is new (and remember it), False when already seen."""
        if key in self._flows:
            self._flows.move_to_end(key)
            return False
        self._flows[key] = None
        if len(self._flows) > self.size:
            self._flows.popitem(last=False)
        return True


class ListenWatcher:
    """New listening TCP sockets and bound UDP sockets, by diffing /proc/net tables.

    A UDP socket counts as bound for service when it is unconnected and its
    port lies outside the kernel's ephemeral range: a client that sent from
    an unbound socket also shows as unconnected, on an ephemeral port.
    """

    def __init__(self, proc_root: Path) -> None:
        """Read the tables below ``proc_root``."""
        self.proc_root = proc_root
        self._ephemeral = ephemeral_range(proc_root)
        self._known: set[int] = set()
        self._netlink = proc_root == Path("/proc")

    def _tables(self, proto: str, state: int) -> list[SockEntry]:
        if self._netlink:
            try:
                return dump(proto, 1 << state)
            except OSError as exc:
                log.info("sock_diag dump unavailable (%s); reading /proc/net instead", exc)
                self._netlink = False
        return read_tables(self.proc_root, proto)

    def poll(self) -> list[SockEntry]:
        """Sockets listening now that were not listening at the previous call."""
        low, high = self._ephemeral
        now: dict[int, SockEntry] = {}
        for e in self._tables("tcp", TCP_LISTEN):
            if e.state == TCP_LISTEN and e.inode:
                now[e.inode] = e
        for e in self._tables("udp", UDP_UNCONNECTED):
            if e.state == UDP_UNCONNECTED and e.remote_port == 0 and e.inode and not low <= e.local_port <= high:
                now[e.inode] = e
        new = [now[i] for i in now.keys() - self._known]
        self._known = set(now)
        return sorted(new, key=lambda e: (e.proto, e.local_port, e.local_ip))


class NetworkCollector:
    """Network events with the process behind them (DESIGN §4 ``net`` group)."""

    name = "network"

    def __init__(self, config: Mapping[str, Any] | None, sources: Sources | None = None, *,
                 process_lookup: ProcessLookup | None = None, lister: Lister = psutil_lister,
                 interval: float = 1.0, flows: int = 4096, audit: Any = None) -> None:
        """Build from the ``collectors.network`` config section; ValueError names a bad value."""
        self.sources = sources or Sources()
        self.enabled = bool(section(config, "enabled", True))
        self.mode = str(section(config, "mode", "auto"))
        if self.mode not in MODES:
            raise ValueError(f"collectors.network.mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        self.sniff = bool(section(config, "sniff", True))
        interfaces = section(config, "interfaces", []) or []
        if not isinstance(interfaces, (list, tuple)) or not all(isinstance(i, str) for i in interfaces):
            raise ValueError("collectors.network.interfaces must be a list of interface names")
        self.interfaces: tuple[str, ...] = tuple(interfaces)
        self.interval = interval
        self.health = Health()
        self.sockmap = SockMap(self.sources.proc_root)
        self._lookup: ProcessLookup = process_lookup or ProcReader(self.sources.proc_root)
        self._lister = lister
        self._flows = FlowSet(flows)
        # While the audit collector's connect/sendto rules are in force it reports outgoing connections
        # and datagrams with the kernel's word on who made them; this collector keeps to accepts, listens,
        # DNS names and what those rules do not cover (one operation, one event).
        self._audit = audit

    def available(self) -> Availability:
        """``sniff`` when a packet socket and libpcap are usable, else ``poll`` (or None in forced sniff)."""
        if not self.enabled:
            return Availability(None, "disabled in config")
        if self.mode == "poll":
            return Availability("poll", "mode: poll in config")
        if not self.sniff:
            return Availability("poll", "sniff: false in config")
        err = can_open_packet_socket()
        problem = None
        if err is not None:
            problem = f"{translate_os_error('opening a packet socket', err)}; sniffing needs CAP_NET_RAW"
        else:
            problem = libpcap_problem()
        if problem is None:
            return Availability("sniff")
        if self.mode == "sniff":
            return Availability(None, problem)
        return Availability("poll", problem)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit events until ``stop`` is set; CollectorError when this collector cannot run here.

        ``health.up`` turns true only once packets are being captured (or the
        first poll is taken): a connection made before that is not seen, so
        whoever waits for "up" must not be told so earlier.
        """
        self.health.up = False
        avail = self.available()
        if avail.mode is None:
            raise CollectorError(f"network collector cannot run: {avail.reason}")
        mode = avail.mode
        if mode == "poll" and avail.reason:
            log.warning("network collector in poll mode (reduced fidelity): %s", avail.reason)
        listens = ListenWatcher(self.sources.proc_root)
        try:
            if mode == "sniff":
                try:
                    self._run_sniff(emit, stop, listens)
                    return
                except CollectorError as exc:
                    if self.mode == "sniff":
                        raise
                    log.warning("network collector falls back to poll mode: %s", exc)
            self._run_poll(emit, stop, listens)
        finally:
            self.health.up = False

    def _run_sniff(self, emit: Emit, stop: threading.Event, listens: ListenWatcher) -> None:
        sniffer = Sniffer(self.interfaces)
        sniffer.open()
        try:
            self._mark_up("sniff")
            if sniffer.missing:
                log.warning("network: waiting for interfaces %s", ", ".join(sniffer.missing))
            clock = self.sources.clock
            next_tick = 0.0
            while not stop.is_set():
                for data in sniffer.read(0.25):
                    try:
                        pkt = decode(data)
                        if pkt is not None:
                            self._on_packet(emit, pkt)
                    except DecodeError:
                        self.health.drop("decode_error")
                now = clock()
                if now >= next_tick:
                    next_tick = now + self.interval
                    self._emit_listens(emit, listens)
                    lost = sniffer.kernel_drops()
                    if lost:
                        self.health.drop("kernel_overflow", lost)
                    if sniffer.missing:
                        sniffer.retry_missing()
        finally:
            sniffer.close()

    def _run_poll(self, emit: Emit, stop: threading.Event, listens: ListenWatcher) -> None:
        poller = ConnectionPoller(self._lister)
        conns = self._poll_connections(poller)  # what exists at start is known, not new
        self._mark_up("poll")
        while True:
            self._emit_listens(emit, listens)
            for c in conns:
                net = Net(proto=c.proto, direction=c.direction, local_ip=c.local_ip, local_port=c.local_port,
                          remote_ip=c.remote_ip, remote_port=c.remote_port)
                self._emit(emit, c.kind, net, c.pid)
            if stop.wait(self.interval):
                return
            conns = self._poll_connections(poller)

    @staticmethod
    def _poll_connections(poller: ConnectionPoller) -> list[Conn]:
        try:
            return poller.poll()
        except OSError as exc:
            raise translate_os_error("listing sockets", exc) from exc

    def _mark_up(self, mode: str) -> None:
        self.health.mode = mode
        self.health.up = True

    def _on_packet(self, emit: Emit, pkt: Packet) -> None:
        domain: str | None = None
        if pkt.proto == "tcp":
            if not pkt.syn:
                return
            kind, direction = ("net.accept", "in") if pkt.ack else ("net.connect", "out")
            key: tuple[Any, ...] = (kind, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        elif pkt.dst_port == 53:
            domain = dns_query_name(pkt.payload)
            if domain is None:
                return
            kind, direction = "net.dns", "out"
            key = (kind, pkt.src_ip, pkt.src_port, pkt.dst_ip, domain)
        else:
            kind, direction = "net.connect", "out"
            key = ("udp", pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        if not self._flows.first(key):
            return  # a retransmitted SYN, a later datagram of a flow, or the AAAA twin of an A query
        found = self.sockmap.find(pkt.proto, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        net = Net(proto=pkt.proto, direction=direction, local_ip=pkt.src_ip, local_port=pkt.src_port,
                  remote_ip=pkt.dst_ip, remote_port=pkt.dst_port, domain=domain)
        self._emit_found(emit, kind, net, found)

    def _emit_listens(self, emit: Emit, listens: ListenWatcher) -> None:
        for e in listens.poll():
            net = Net(proto=e.proto, local_ip=e.local_ip, local_port=e.local_port)
            self._emit_found(emit, "net.listen", net, Found(e.inode, self.sockmap.owner_of(e.inode), e.uid))

    def _emit_found(self, emit: Emit, kind: str, net: Net, found: Found) -> None:
        """Emit with the socket's owner, read and then confirmed; else with the pid and uid known."""
        owner = found.owner
        got = self._lookup(owner.pid) if owner is not None else None
        if got is not None and owner is not None and found.inode is not None \
                and self.sockmap.confirm(owner, found.inode):
            self._send(emit, kind, net, *got)
            return
        self.health.drop("no_process")
        uid = found.uid
        process = Process(pid=owner.pid if owner else None, uid=uid, user=system_user(uid))
        self._send(emit, kind, net, process, Parent())

    def _emit(self, emit: Emit, kind: str, net: Net, pid: int | None) -> None:
        process, parent = Process(), Parent()
        got = self._lookup(pid) if pid is not None else None
        if got is not None:
            process, parent = got
        else:
            self.health.drop("no_process")
            if pid is not None:
                process = Process(pid=pid)
        self._send(emit, kind, net, process, parent)

    def _send(self, emit: Emit, kind: str, net: Net, process: Process, parent: Parent) -> None:
        if kind == "net.connect" and self._audit is not None and self._audit.covers("net.connect"):
            return
        now = self.sources.clock()
        emit(Event(kind=kind, time=now, collector=self.name, process=process, parent=parent, net=net))
        self.health.saw(now)
