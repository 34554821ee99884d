"""The network collector: connections, accepts, listens and DNS queries, with their process.

``mode: sniff`` (CAP_NET_RAW; no libpcap) sees every flow as it starts,
whatever its IP protocol: an outgoing SYN is a ``net.connect``, an outgoing
SYN-ACK a ``net.accept``, the first outgoing packet of a UDP, UDP-Lite,
SCTP, ICMP/ICMPv6 or other-protocol flow a ``net.connect`` (``net.proto``
names the protocol), and a DNS query to port 53, over UDP or TCP, a
``net.dns`` carrying the name asked. A packet to port 53 that is not a
well-formed query is traffic all the same: a ``net.connect`` with
``net.dns_malformed`` set. The DNS message itself is parsed in a confined
worker process (``collectors.dns_worker``), never here: the sniffing
thread queues the message (bounded; it never waits for the worker) and a
DNS thread passes batches to the worker and hands the answers back. A
message the worker could not answer for (it crashed or hung on the batch
and was replaced; partial reason ``dns_worker``) or that found the queue
full (partial reason ``dns_queue_full``) goes out as that same flagged
``net.connect``: the traffic is reported, only its name is missing. Link-scoped control traffic that cannot leave
the link (IPv6 neighbour discovery and MLD, IGMP to multicast groups) is
not reported. ``mode: poll`` diffs psutil's socket list once a second
instead. The listen tables are diffed for ``net.listen`` (no kernel event
says that a socket listens): once a second in poll mode, every
``LISTEN_EVERY`` seconds in sniff mode; the sockets listening when the
collector starts are reported once, as an inventory.

Threads in sniff mode: the sniffing thread (the supervisor's) blocks in select on the
packet sockets, the DNS thread's wake socket and the stop descriptor, until the next
listen diff is due; the DNS thread blocks on its queue with no timeout (a job or the
stop sentinel wakes it). The DNS thread is a thread of its own because it waits on the
worker process's answer, a blocking round trip the sniffer must never wait for.

Flows already reported are remembered in a bounded table, so a flood of
new flows costs events, never memory; a flow forgotten to make room is
counted (drop reason ``flow_evicted``: a later packet of it may be
reported again, none is missed).

The process behind each event is found through its socket (``SockMap``):
TCP, UDP and UDP-Lite sockets by address, ping sockets by echo identifier,
raw sockets by protocol when only one could have sent the packet. Its
fields are read, and the owner is confirmed again afterwards, so a pid
that changed hands in between is never reported. When the process cannot
be found (it exited before its first packet was looked at: a connection
that opens and closes within a millisecond; or /proc/PID/fd is not
readable without CAP_SYS_PTRACE) the event is still emitted with what is
known (the socket's uid, the pid if it was seen) and the loss is counted
as drop reason ``no_process``. ICMP answers the kernel itself sends (echo
replies, errors) have no process and are reported without one, uncounted.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from agent.events import Event, Net, Parent, Process
from collectors.base import (
    Availability,
    CollectorError,
    Emit,
    Health,
    Sources,
    section,
    stop_fd,
    stop_timeout,
    translate_os_error,
)
from collectors.dns_worker import MAX_BATCH, DnsWorker, DnsWorkerError
from collectors.netjoin import DnsJoin
from collectors.network_poll import Conn, ConnectionPoller, Lister, psutil_lister
from collectors.sniff import (
    TCP_SYN,
    DecodeError,
    Packet,
    Sniffer,
    can_open_packet_socket,
    decode,
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
    """A bounded LRU of flows already reported; ``evicted`` counts the flows forgotten to make room."""

    def __init__(self, size: int = 4096) -> None:
        """Remember at most ``size`` flows; the least recently seen are forgotten first."""
        self.size = size
        self.evicted = 0
        self._flows: OrderedDict[Hashable, None] = OrderedDict()

    def first(self, key: Hashable) -> bool:
        """True when ``key`` is new (and remember it), False when already seen."""
        if key in self._flows:
            self._flows.move_to_end(key)
            return False
        self._flows[key] = None
        if len(self._flows) > self.size:
            self._flows.popitem(last=False)
            self.evicted += 1
        return True

    def __len__(self) -> int:
        """How many flows are remembered now."""
        return len(self._flows)


_MASK32 = 0xFFFFFFFF


class DnsStreams:
    """Where the next DNS message starts in each TCP stream to port 53 (a bounded LRU).

    DNS over TCP frames each message with a two-byte length. A stream seen
    from its SYN is read from its first byte; one that began before the
    collector is read from its first data segment. A segment that does not
    start where a message does (a continuation, a retransmission) is skipped.
    """

    def __init__(self, size: int = 1024) -> None:
        """Follow at most ``size`` streams; the least recently seen are forgotten first."""
        self.size = size
        self._next: OrderedDict[Hashable, int] = OrderedDict()

    def start(self, key: Hashable, seq: int) -> None:
        """A SYN with sequence number ``seq``: the stream's first byte is the next one."""
        self._remember(key, (seq + 1) & _MASK32)

    def messages(self, key: Hashable, seq: int, payload: bytes) -> list[bytes]:
        """The DNS messages that begin in this segment (the last may be cut short)."""
        expected = self._next.get(key, seq)
        if seq != expected:
            return []
        out: list[bytes] = []
        pos = 0
        while pos + 2 <= len(payload):
            length = (payload[pos] << 8) | payload[pos + 1]
            out.append(payload[pos + 2:pos + 2 + length])
            pos += 2 + length
        if pos < len(payload):  # the length prefix itself is split: the boundary is lost
            self._next.pop(key, None)
        else:
            self._remember(key, (seq + pos) & _MASK32)
        return out

    def _remember(self, key: Hashable, seq: int) -> None:
        self._next[key] = seq
        self._next.move_to_end(key)
        while len(self._next) > self.size:
            self._next.popitem(last=False)


# Link-scoped control messages: hop limit 255 or TTL 1 by protocol, so they never leave the link.
_ICMP6_LINK = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 141, 142, 143, 148, 149, 151, 152, 153})
# ICMP messages the kernel sends by itself in answer to another host: echo replies and errors.
_ICMP_ANSWERS = {"icmp": frozenset({0, 3, 4, 5, 11, 12, 14, 16, 18}), "icmpv6": frozenset({1, 2, 3, 4, 129})}
_PING_TABLE = {"icmp": 1, "icmpv6": 58}
_AUDITED = frozenset({"tcp", "udp"})  # what the audit source reports (and names) by itself when in force


def _multicast(ip: str) -> bool:
    return ip.startswith("ff") if ":" in ip else 224 <= int(ip.split(".", 1)[0]) <= 239


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


LISTEN_EVERY = 5.0  # sniff mode: how often the listen tables are diffed and the kernel's drops read
RETRY_EVERY = 1.0  # sniff mode: how often a named interface that does not exist yet is looked for


class DnsJob(NamedTuple):
    """A DNS message sent to port 53, with the flow it came in."""

    proto: str
    src_ip: str
    src_port: int | None
    dst_ip: str
    dst_port: int | None
    message: bytes


class DnsDecoding:
    """The bounded queue between the sniffing thread and the DNS worker, and the thread that feeds it.

    :meth:`submit` never blocks: a full queue hands the job straight back as
    unparsed. Answers (the job and the name, or None when unparsed) wait in
    :attr:`done` for the sniffing thread, which is woken through a socket.
    """

    def __init__(self, health: Health, size: int = 1024, worker: DnsWorker | None = None) -> None:
        self.health = health
        self.worker = worker or DnsWorker()
        self._jobs: queue.Queue[DnsJob | None] = queue.Queue(size)  # None: wake up, see whether to stop
        self.done: queue.SimpleQueue[tuple[DnsJob, str | None]] = queue.SimpleQueue()
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker and the DNS thread; a worker that cannot start is tried again with a later batch."""
        try:
            self.worker.start()
        except (OSError, ValueError) as exc:
            log.error("network: the DNS worker cannot start (DNS goes out unparsed until it can): %s", exc)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="network-dns", daemon=True)
        self._thread.start()

    def submit(self, job: DnsJob) -> None:
        """Queue ``job``; when the queue is full it goes out unparsed at once (counted ``dns_queue_full``)."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.health.partial("dns_queue_full")
            self.done.put((job, None))

    def close(self) -> None:
        """Stop the thread and the worker; jobs still queued go out unparsed (counted ``dns_worker``)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):  # a full queue keeps the thread busy: it sees _stop next turn
            self._jobs.put_nowait(None)
        self.worker.kill()  # a batch in progress ends now, unparsed
        if self._thread is not None:
            self._thread.join(10)
        self.worker.close()
        self._fail(self._take(1 << 30, False), "stopped")

    def flush(self) -> None:
        """Parse every queued job now, in the calling thread (tests and benchmarks, where no thread runs)."""
        while True:
            jobs = self._take(MAX_BATCH, False)
            if not jobs:
                return
            self._parse(jobs)

    def _take(self, n: int, block: bool) -> list[DnsJob]:
        """Up to ``n`` jobs; with ``block``, waits (no timeout) for the first one or the stop sentinel."""
        try:
            got = [self._jobs.get() if block else self._jobs.get_nowait()]
        except queue.Empty:
            return []
        while len(got) < n:
            try:
                got.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return [j for j in got if j is not None]

    def _run(self) -> None:
        while not self._stop.is_set():
            jobs = self._take(MAX_BATCH, True)
            if jobs:
                self._parse(jobs)
                try:
                    self._wake_w.send(b"\0")
                except (BlockingIOError, InterruptedError):
                    continue  # a wake-up is pending already
                except OSError:
                    return

    def _parse(self, jobs: list[DnsJob]) -> None:
        try:
            answers = self.worker.parse([j.message for j in jobs])
        except DnsWorkerError as exc:
            log.warning("network: %d DNS message(s) go out unparsed: %s", len(jobs), exc)
            self._fail(jobs, str(exc))
            return
        for job, answer in zip(jobs, answers, strict=True):
            self.done.put((job, answer.name))

    def _fail(self, jobs: list[DnsJob], reason: str) -> None:
        if jobs:
            self.health.partial("dns_worker", len(jobs))
        for job in jobs:
            self.done.put((job, None))


class NetworkCollector:
    """Network events with the process behind them (DESIGN §4 ``net`` group)."""

    name = "network"

    def __init__(self, config: Mapping[str, Any] | None, sources: Sources | None = None, *,
                 process_lookup: ProcessLookup | None = None, lister: Lister = psutil_lister,
                 interval: float = 1.0, flows: int = 4096, dns_streams: int = 1024, audit: Any = None,
                 dns_queue: int = 1024, dns_worker: DnsWorker | None = None) -> None:
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
        self.listen_every = LISTEN_EVERY
        self.health = Health()
        self.sockmap = SockMap(self.sources.proc_root)
        self._lookup: ProcessLookup = process_lookup or ProcReader(self.sources.proc_root)
        self._lister = lister
        self._flows = FlowSet(flows)
        self._dns_streams = DnsStreams(dns_streams)
        self.dns = DnsDecoding(self.health, dns_queue, dns_worker)
        self._evicted = 0
        # While the audit collector's connect/sendto rules are in force it reports outgoing TCP connections
        # and UDP datagrams with the kernel's word on who made them; this collector keeps to accepts, listens,
        # DNS names and what those rules cannot name: other protocols (the audit record has an address, not a
        # protocol, so it calls every datagram udp) and packets to port 53 that are no DNS query. For these two
        # an operation may be reported twice, once by each source; the protocol and the flag are this one's.
        self._audit = audit
        # A DNS query the audit rules report too is one event: the name from here, the process from the kernel.
        self._join: DnsJoin | None = getattr(audit, "dns_join", None)

    def available(self) -> Availability:
        """``sniff`` when a packet socket can be opened, else ``poll`` (or None in forced sniff)."""
        if not self.enabled:
            return Availability(None, "disabled in config")
        if self.mode == "poll":
            return Availability("poll", "mode: poll in config")
        if not self.sniff:
            return Availability("poll", "sniff: false in config")
        err = can_open_packet_socket()
        if err is None:
            return Availability("sniff")
        problem = f"{translate_os_error('opening a packet socket', err)}; sniffing needs CAP_NET_RAW"
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
        self.dns.start()
        if self._join is not None:
            self._join.active = True
        try:
            self._mark_up("sniff")
            if sniffer.missing:
                log.warning("network: waiting for interfaces %s", ", ".join(sniffer.missing))
            wake = stop_fd(stop)
            next_tick = next_retry = 0.0
            while not stop.is_set():
                # Until a packet, a DNS answer or stop; at the latest when the listen diff is due.
                # A named interface still missing is looked for every second (RETRY_EVERY) meanwhile.
                due = min(next_tick, next_retry) if sniffer.missing else next_tick
                if self._join is not None:
                    due = min(due, self._join.sniffer_due() or due)
                timeout = stop_timeout(stop, due - time.monotonic())
                for data in sniffer.read(timeout, wake=self.dns.wake_r, stop=wake):
                    try:
                        pkt = decode(data)
                        if pkt is not None:
                            self._on_packet(emit, pkt)
                    except DecodeError:
                        self.health.drop("decode_error")
                self.dns_answers(emit)
                self._unjoined(emit)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.listen_every
                    self._emit_listens(emit, listens)
                    lost = sniffer.kernel_drops()
                    if lost:
                        self.health.drop("kernel_overflow", lost)
                    self._count_evictions()
                if sniffer.missing and now >= next_retry:
                    next_retry = now + RETRY_EVERY
                    sniffer.retry_missing()
        finally:
            if self._join is not None:
                self._join.active = False
            sniffer.close()
            self.dns.close()
            self.dns_answers(emit)
            self._unjoined(emit, everything=True)

    def _unjoined(self, emit: Emit, everything: bool = False) -> None:
        """DNS events whose audit record did not come within the join's window go out as the sniffer saw them."""
        if self._join is None:
            return
        for ev in self._join.sniffer_expired(everything):
            if ev.process.name is None and ev.process.exe is None:
                self.health.drop("no_process")
            emit(ev)
            self.health.saw(ev.time or self.sources.clock())

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

    def _count_evictions(self) -> None:
        evicted = self._flows.evicted
        if evicted > self._evicted:
            self.health.drop("flow_evicted", evicted - self._evicted)
            self._evicted = evicted

    def _on_packet(self, emit: Emit, pkt: Packet) -> None:
        proto = pkt.proto
        domain: str | None = None
        malformed: bool | None = None
        kind, direction = "net.connect", "out"
        if proto == "tcp":
            if pkt.flags & TCP_SYN:
                if pkt.ack:
                    kind, direction = "net.accept", "in"
                elif pkt.dst_port == 53:
                    self._dns_streams.start((pkt.src_ip, pkt.src_port, pkt.dst_ip), pkt.seq)
                key: tuple[Any, ...] = (kind, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
            elif pkt.dst_port == 53 and pkt.payload:
                self._on_dns_stream(pkt)
                return
            else:
                return
        elif pkt.dst_port == 53 and (proto == "udp" or proto == "udplite"):
            self.dns.submit(DnsJob(proto, pkt.src_ip, pkt.src_port, pkt.dst_ip, 53, pkt.payload))
            return
        elif pkt.icmp_type is not None:
            self._on_icmp(emit, pkt)
            return
        elif proto == "igmp" and _multicast(pkt.dst_ip):
            return
        else:
            key = (proto, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        if not self._flows.first(key):
            return  # a retransmitted SYN, a later datagram of a flow, or the AAAA twin of an A query
        net = Net(proto=proto, direction=direction, local_ip=pkt.src_ip, local_port=pkt.src_port,
                  remote_ip=pkt.dst_ip, remote_port=pkt.dst_port, domain=domain, dns_malformed=malformed)
        if pkt.src_port is None or pkt.dst_port is None or proto not in ("tcp", "udp", "udplite"):
            found = self.sockmap.find_raw(pkt.number, pkt.src_ip, pkt.dst_ip)
        else:
            found = self.sockmap.find(proto, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        self._emit_found(emit, kind, net, found)

    def _on_dns_stream(self, pkt: Packet) -> None:
        """A data segment to TCP port 53: each DNS message in it goes to the DNS worker."""
        stream = (pkt.src_ip, pkt.src_port, pkt.dst_ip)
        for message in self._dns_streams.messages(stream, pkt.seq, pkt.payload):
            self.dns.submit(DnsJob("tcp", pkt.src_ip, pkt.src_port, pkt.dst_ip, 53, message))

    def dns_answers(self, emit: Emit) -> None:
        """Emit what the DNS worker answered: a query is a net.dns, anything else a flagged net.connect."""
        while True:
            try:
                job, domain = self.dns.done.get_nowait()
            except queue.Empty:
                return
            malformed: bool | None = None
            if domain is None:
                kind, malformed = "net.connect", True
                key: tuple[Any, ...] = ("dns_malformed", job.proto, job.src_ip, job.src_port, job.dst_ip)
            else:
                kind = "net.dns"
                key = (kind, job.proto, job.src_ip, job.src_port, job.dst_ip, domain)
            if not self._flows.first(key):
                continue  # the AAAA twin of an A query, a retransmission
            net = Net(proto=job.proto, direction="out", local_ip=job.src_ip, local_port=job.src_port,
                      remote_ip=job.dst_ip, remote_port=job.dst_port, domain=domain, dns_malformed=malformed)
            found = self.sockmap.find(job.proto, job.src_ip, job.src_port or 0, job.dst_ip, job.dst_port or 53)
            self._emit_found(emit, kind, net, found, join=True)

    def _on_icmp(self, emit: Emit, pkt: Packet) -> None:
        """ICMP and ICMPv6: echo and every other message that can carry data off the link."""
        proto, itype = pkt.proto, pkt.icmp_type
        if proto == "icmpv6" and itype in _ICMP6_LINK:
            return
        if not self._flows.first((proto, pkt.src_ip, pkt.dst_ip, itype, pkt.ident)):
            return
        net = Net(proto=proto, direction="out", local_ip=pkt.src_ip, remote_ip=pkt.dst_ip)
        if itype in _ICMP_ANSWERS[proto]:
            # The kernel's own answer to another host: naming a raw ICMP socket's holder would be a guess.
            self._send(emit, "net.connect", net, Process(), Parent())
            return
        else:
            found = Found()
            if pkt.ident is not None:  # a ping socket lists its echo identifier as its port
                found = self.sockmap.find(proto, pkt.src_ip, pkt.ident, pkt.dst_ip, 0)
            if found.inode is None:
                found = self.sockmap.find_raw(_PING_TABLE[proto], pkt.src_ip, pkt.dst_ip)
        self._emit_found(emit, "net.connect", net, found)

    def _emit_listens(self, emit: Emit, listens: ListenWatcher) -> None:
        for e in listens.poll():
            net = Net(proto=e.proto, local_ip=e.local_ip, local_port=e.local_port)
            self._emit_found(emit, "net.listen", net, Found(e.inode, self.sockmap.owner_of(e.inode), e.uid))

    def _emit_found(self, emit: Emit, kind: str, net: Net, found: Found, join: bool = False) -> None:
        """Emit with the socket's owner, read and then confirmed; else with the pid and uid known."""
        owner = found.owner
        got = self._lookup(owner.pid) if owner is not None else None
        if got is not None and owner is not None and found.inode is not None \
                and self.sockmap.confirm(owner, found.inode):
            self._send(emit, kind, net, *got, join=join)
            return
        uid = found.uid
        process = Process(pid=owner.pid if owner else None, uid=uid, user=system_user(uid))
        self._send(emit, kind, net, process, Parent(), join=join, unnamed=True)

    def _emit(self, emit: Emit, kind: str, net: Net, pid: int | None) -> None:
        process, parent = Process(), Parent()
        got = self._lookup(pid) if pid is not None else None
        if got is not None:
            process, parent = got
        elif pid is not None:
            process = Process(pid=pid)
        self._send(emit, kind, net, process, parent, unnamed=got is None)

    def _send(self, emit: Emit, kind: str, net: Net, process: Process, parent: Parent, join: bool = False,
              unnamed: bool = False) -> None:
        """Emit, unless the audit source reports this operation (or names it: a DNS query waits for its record).

        ``unnamed``: the process could not be found; counted as ``no_process`` only when the event goes out
        so (not when the audit source reports the operation or its record names the process).
        """
        audited = self._audit is not None and self._audit.covers("net.connect")
        if kind == "net.connect" and net.proto in _AUDITED and not net.dns_malformed and audited:
            return
        now = self.sources.clock()
        ev = Event(kind=kind, time=now, collector=self.name, process=process, parent=parent, net=net)
        if join and audited and self._join is not None and net.proto in _AUDITED:
            joined = self._join.from_sniffer(ev)
            if joined is None:
                return  # waits for the audit record of the same send
            unnamed = unnamed and joined is ev
            ev = joined
        if unnamed:
            self.health.drop("no_process")
        emit(ev)
        self.health.saw(now)
