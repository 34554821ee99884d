"""Capture the packets that start connections: AF_PACKET with a kernel BPF filter.

Only what the collector needs crosses into Python: outgoing TCP SYNs (our
connects), outgoing SYN-ACKs (our accepts) and outgoing UDP (new flows and
DNS queries). The filter is compiled by libpcap (through scapy) for raw IP,
and the socket is ``SOCK_DGRAM`` so every interface, whatever its link
layer, hands over packets that begin at the IP header. Filtering on
``outbound`` in the kernel also removes the second copy that the loopback
interface shows of each packet.

Headers are read with ``struct`` because every outgoing UDP packet passes
through here; scapy's DNS layer decodes only the queries. Only the scapy
modules needed are imported (never ``scapy.all``: idle memory, DESIGN §10).
"""

from __future__ import annotations

import ctypes
import errno
import select
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from collectors.base import CollectorError, translate_os_error

ETH_P_ALL = 0x0003
SOL_PACKET = 263
SO_ATTACH_FILTER = 26
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4

# tcp[] offsets work for IPv4 only in libpcap; for IPv6 the flags byte is
# read at 40 + 13 when TCP follows the fixed header directly (the usual case).
BPF_FILTER = (
    "outbound and ((ip and tcp[tcpflags] & tcp-syn != 0)"
    " or (ip6 and ip6[6] == 6 and ip6[53] & 0x02 != 0)"
    " or udp)"
)

_TCP_SYN = 0x02
_TCP_ACK = 0x10
_V6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_V6_FRAG = 44


class DecodeError(ValueError):
    """A packet or DNS message could not be read."""


@dataclass(frozen=True, slots=True)
class Packet:
    """The addresses of an outgoing TCP SYN / SYN-ACK or UDP datagram."""

    proto: str  # "tcp" | "udp"
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    syn: bool = False
    ack: bool = False
    payload: bytes = b""  # UDP payload only


def decode(data: bytes) -> Packet | None:
    """Read an IP packet; None for what is not a first fragment of TCP or UDP."""
    try:
        version = data[0] >> 4
        if version == 4:
            ihl = (data[0] & 0x0F) * 4
            if struct.unpack_from("!H", data, 6)[0] & 0x1FFF:
                return None  # a later fragment carries no ports
            proto, off = data[9], ihl
            src = socket.inet_ntop(socket.AF_INET, data[12:16])
            dst = socket.inet_ntop(socket.AF_INET, data[16:20])
        elif version == 6:
            proto, off = data[6], 40
            for _ in range(8):
                if proto in _V6_EXT:
                    proto, off = data[off], off + (data[off + 1] + 1) * 8
                elif proto == _V6_FRAG:
                    if struct.unpack_from("!H", data, off + 2)[0] >> 3:
                        return None
                    proto, off = data[off], off + 8
                else:
                    break
            src = socket.inet_ntop(socket.AF_INET6, data[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, data[24:40])
        else:
            raise DecodeError(f"IP version {version}")
        sport, dport = struct.unpack_from("!HH", data, off)
        if proto == 6:
            flags = data[off + 13]
            return Packet("tcp", src, sport, dst, dport, syn=bool(flags & _TCP_SYN), ack=bool(flags & _TCP_ACK))
        if proto == 17:
            return Packet("udp", src, sport, dst, dport, payload=data[off + 8:])
        return None
    except (IndexError, struct.error, ValueError, OSError) as exc:
        raise DecodeError(f"bad packet: {exc}") from exc


def dns_query_name(payload: bytes) -> str | None:
    """The name asked in a standard DNS query (lower case, no trailing dot); None for other messages."""
    if len(payload) < 12:
        raise DecodeError("DNS message shorter than its header")
    if payload[2] & 0x80 or (payload[2] >> 3) & 0x0F:
        return None  # a response, or not a standard query
    from scapy.layers.dns import DNS  # heavy: load only once DNS is seen

    try:
        questions = DNS(payload).qd
        qname = questions[0].qname if questions else None
    except Exception as exc:  # scapy raises many types on malformed input
        raise DecodeError(f"bad DNS query: {exc}") from exc
    if not isinstance(qname, bytes):
        raise DecodeError("DNS query without a readable question")
    name = qname.decode("ascii", errors="replace").rstrip(".").lower()
    return name or "."


def libpcap_problem() -> str | None:
    """Why the BPF filter cannot be compiled here, or None when it can."""
    try:
        from scapy.libs import winpcapy  # noqa: F401  # loads libpcap through ctypes
    except (ImportError, OSError):
        return "libpcap is not installed (Debian: libpcap0.8)"
    return None


class _Program:
    """A compiled BPF program copied out of libpcap, ready for SO_ATTACH_FILTER."""

    def __init__(self, expression: str) -> None:
        from scapy.arch.common import compile_filter, free_filter
        from scapy.data import DLT_RAW

        try:
            prog = compile_filter(expression, linktype=DLT_RAW)
        except Exception as exc:  # ImportError without libpcap, Scapy_Exception on a bad filter
            raise CollectorError(f"cannot compile the capture filter: {exc}") from exc
        try:
            # struct sock_filter is 8 bytes; keep our own copy alive for the fprog pointer.
            self._insns = ctypes.create_string_buffer(ctypes.string_at(prog.bf_insns, prog.bf_len * 8))
            self.fprog = struct.pack("HL", prog.bf_len, ctypes.addressof(self._insns))
        finally:
            free_filter(prog)


def _drain(sock: socket.socket) -> None:
    for _ in range(100_000):
        try:
            sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return


class Sniffer:
    """Outgoing connection-starting packets from all interfaces or from the named ones."""

    def __init__(self, interfaces: Sequence[str] = (), rcvbuf: int = 4 << 20) -> None:
        """Capture on ``interfaces`` (all, including ``lo`` and ones added later, when empty)."""
        self.interfaces = tuple(interfaces)
        self.rcvbuf = rcvbuf
        self.missing: list[str] = []
        self._socks: list[socket.socket] = []
        self._prog: _Program | None = None

    def open(self) -> None:
        """Open the capture sockets; CollectorError says why not."""
        self._prog = _Program(BPF_FILTER)
        if not self.interfaces:
            self._socks.append(self._open_one(""))
            return
        self.missing = list(self.interfaces)
        self.retry_missing()

    def _open_one(self, ifname: str) -> socket.socket:
        assert self._prog is not None
        try:
            # Bound to one interface: protocol 0 receives nothing until bind, so no
            # packet slips in before the filter. All interfaces: no bind is possible,
            # so drain what arrived before the filter was attached.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0 if ifname else socket.htons(ETH_P_ALL))
        except OSError as exc:
            raise translate_os_error("opening a packet socket", exc) from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._prog.fprog)
            sock.setblocking(False)
            if ifname:
                sock.bind((ifname, ETH_P_ALL))
            else:
                _drain(sock)
        except OSError:
            sock.close()
            raise
        return sock

    def retry_missing(self) -> None:
        """Try again to open named interfaces that did not exist yet."""
        still: list[str] = []
        for name in self.missing:
            try:
                self._socks.append(self._open_one(name))
            except OSError as exc:
                if exc.errno not in (errno.ENODEV, errno.ENXIO):
                    raise translate_os_error(f"capturing on {name}", exc) from exc
                still.append(name)
        self.missing = still

    def read(self, timeout: float, max_batch: int = 1024) -> list[bytes]:
        """Packets waiting now, or arriving within ``timeout`` seconds (at most ``max_batch``)."""
        if not self._socks:
            select.select([], [], [], timeout)
            return []
        ready, _, _ = select.select(self._socks, [], [], timeout)
        out: list[bytes] = []
        for sock in ready:
            while len(out) < max_batch:
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                if addr[2] == PACKET_OUTGOING:  # the kernel filter already ensures it
                    out.append(data)
        return out

    def kernel_drops(self) -> int:
        """Packets the kernel dropped for a full socket buffer since the last call."""
        total = 0
        for sock in self._socks:
            try:
                _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            except OSError:
                continue
            total += drops
        return total

    def close(self) -> None:
        """Close every capture socket."""
        for sock in self._socks:
            sock.close()
        self._socks.clear()


def can_open_packet_socket() -> OSError | None:
    """None when this process may open an AF_PACKET socket, else the error it got."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0).close()
    except OSError as exc:
        return exc
    return None

