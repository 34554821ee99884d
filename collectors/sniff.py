"""Capture outgoing IP packets on AF_PACKET sockets, with a kernel filter built in the agent.

What crosses into Python is every outgoing IP packet that can start or
carry a flow, whatever its protocol: TCP SYNs (connects) and SYN-ACKs
(accepts), TCP segments to port 53 (DNS over TCP), and every packet of
every other protocol (UDP, UDP-Lite, SCTP, ICMP, ICMPv6, GRE, ESP, ...).
An IPv6 packet whose first header is an extension header (hop-by-hop,
routing, fragment, destination options, AH) is handed over whole and the
decoder walks the chain to the transport header: classic BPF has no loops,
so the filter does not try. Later IPv4 fragments carry no transport header
and stay in the kernel.

The filter is a classic BPF program assembled here (``collectors.bpf``) and
attached with SO_ATTACH_FILTER: no libpcap. It keeps only packets the host
sends (``PACKET_OUTGOING``), which also removes the second copy that the
loopback interface shows of each packet. The socket is ``SOCK_DGRAM``, so
on every interface, whatever its link layer, a packet begins at its IP
header.

Headers are read with ``struct`` by hand, here, in the privileged process:
the IP and transport header walk is bounded fixed-offset arithmetic (at most
16 IPv6 extension headers, every offset checked against the packet), over
packets the kernel filter has already constrained to outgoing IP. The DNS
message a packet to port 53 carries is the part whose content an attacker
shapes freely (labels, compression pointers): :func:`dns_query` parses it,
but the network collector runs it only in the confined DNS worker
(``collectors.dns_worker``), never in the process that holds CAP_NET_RAW.
A DNS message that does not parse is itself something to report, not an
error to swallow.
"""

from __future__ import annotations

import contextlib
import errno
import re
import select
import socket
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from collectors.base import CollectorError, translate_os_error
from collectors.bpf import (
    SKF_AD_PKTTYPE,
    B,
    H,
    Insn,
    Label,
    Program,
    alu_and,
    assemble,
    jeq,
    jset,
    ld_abs,
    ld_ancillary,
    ld_ind,
    ldx_msh,
    ret,
)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
SO_ATTACH_FILTER = 26
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SNAPLEN = 0xFFFF

TCP_SYN = 0x02
TCP_ACK = 0x10

# IP protocol numbers and the names events carry in net.proto (IANA keywords, lower case).
PROTO_NAMES = {
    1: "icmp", 2: "igmp", 4: "ipip", 6: "tcp", 17: "udp", 33: "dccp", 41: "ipv6", 47: "gre", 50: "esp",
    51: "ah", 58: "icmpv6", 89: "ospf", 103: "pim", 112: "vrrp", 115: "l2tp", 132: "sctp", 136: "udplite",
    137: "mpls-in-ip", 143: "ethernet",
}
_PORTED = frozenset({6, 17, 33, 132, 136})  # source and destination port lead the transport header
# IPv6 extension headers of the common form (next header, length in 8-octet units beyond the first):
# hop-by-hop, routing, destination options, HIP, Shim6. Fragment (44) and AH (51) are read apart.
_V6_EXT = frozenset({0, 43, 60, 139, 140})
_V6_FRAG = 44
_AH = 51
# ICMP types whose header carries an identifier at offset 4 (echo, timestamp, information, mask).
_ECHO = {1: frozenset({0, 8, 13, 14, 15, 16, 17, 18}), 58: frozenset({128, 129})}


def filter_program() -> bytes:
    """The capture filter: outgoing IPv4 and IPv6; of TCP, only SYNs and segments to port 53."""
    accept, drop = "accept", "drop"
    prog: list[Insn | Label] = [
        ld_ancillary(SKF_AD_PKTTYPE),
        jeq(PACKET_OUTGOING, None, drop),
        ld_abs(B, 0),
        alu_and(0xF0),
        jeq(0x40, "v4"),
        jeq(0x60, "v6", drop),
        Label("v4"),
        ld_abs(B, 9),
        jeq(6, None, accept),  # every protocol but TCP goes up whole
        ld_abs(H, 6),
        jset(0x1FFF, drop),  # a later fragment: no TCP header to read
        jset(0x2000, accept),  # a first fragment: the header may be cut short, let the decoder look
        ldx_msh(0),
        ld_ind(B, 13),
        jset(TCP_SYN, accept),
        ld_ind(H, 2),
        jeq(53, accept, drop),
        Label("v6"),
        ld_abs(B, 6),
        jeq(6, None, accept),  # not TCP right after the fixed header (extension headers too): up whole
        ld_abs(B, 40 + 13),
        jset(TCP_SYN, accept),
        ld_abs(H, 40 + 2),
        jeq(53, accept, drop),
        Label(accept),
        ret(SNAPLEN),
        Label(drop),
        ret(0),
    ]
    return assemble(prog)


class DecodeError(ValueError):
    """A packet or DNS message could not be read."""


class Packet(NamedTuple):
    """An outgoing IP packet, decoded as far as the collector needs.

    ``src_port``/``dst_port`` are None for protocols without ports. For ICMP and
    ICMPv6, ``icmp_type``/``icmp_code`` are set and ``ident`` is the echo
    identifier. ``payload`` is the transport payload for UDP and UDP-Lite, and
    for TCP segments to port 53; empty otherwise.
    """

    proto: str
    src_ip: str
    src_port: int | None
    dst_ip: str
    dst_port: int | None
    number: int = 0
    flags: int = 0
    seq: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    ident: int | None = None
    payload: bytes = b""

    @property
    def syn(self) -> bool:
        """A TCP segment with SYN set."""
        return bool(self.flags & TCP_SYN)

    @property
    def ack(self) -> bool:
        """A TCP segment with ACK set."""
        return bool(self.flags & TCP_ACK)


_new = tuple.__new__  # a Packet built without the keyword-argument machinery: once per packet
_inet_ntop = socket.inet_ntop
_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
_u16 = struct.Struct("!H").unpack_from
_ports = struct.Struct("!HH").unpack_from
_tcp = struct.Struct("!HHI").unpack_from


def decode(data: bytes) -> Packet | None:
    """Read an IP packet; None for a later fragment (no transport header) or a packet with no transport."""
    try:
        version = data[0] >> 4
        if version == 4:
            off = (data[0] & 0x0F) * 4
            if off < 20:
                raise DecodeError(f"IPv4 header length {off}")
            if _u16(data, 6)[0] & 0x1FFF:
                return None  # a later fragment carries no ports
            proto = data[9]
            end = _u16(data, 2)[0] or len(data)
            src = _inet_ntop(_AF4, data[12:16])
            dst = _inet_ntop(_AF4, data[16:20])
            if proto == _AH:
                proto, off = data[off], off + (data[off + 1] + 2) * 4
        elif version == 6:
            proto, off = data[6], 40
            end = 40 + _u16(data, 4)[0] if data[4] or data[5] else len(data)
            for _ in range(16):
                if proto in _V6_EXT:
                    proto, off = data[off], off + (data[off + 1] + 1) * 8
                elif proto == _V6_FRAG:
                    if _u16(data, off + 2)[0] >> 3:
                        return None
                    proto, off = data[off], off + 8
                elif proto == _AH:
                    proto, off = data[off], off + (data[off + 1] + 2) * 4
                else:
                    break
            else:
                raise DecodeError("IPv6 extension header chain too long")
            src = _inet_ntop(_AF6, data[8:24])
            dst = _inet_ntop(_AF6, data[24:40])
        else:
            raise DecodeError(f"IP version {version}")
        if off > len(data):
            raise DecodeError("headers run past the packet")
        end = min(end, len(data))
        if proto == 17 or proto == 136:
            sport, dport = _ports(data, off)
            return _new(Packet, (PROTO_NAMES[proto], src, sport, dst, dport, proto, 0, 0, None, None, None,
                                 data[off + 8:end]))
        if proto == 6:
            if off + 14 > end:
                # A first fragment cut inside the TCP header (tiny fragments hide the flags): the ports are
                # what is known, and the segment counts as a connection's start rather than go unseen.
                sport, dport = _ports(data, off)
                return _new(Packet, ("tcp", src, sport, dst, dport, 6, TCP_SYN, 0, None, None, None, b""))
            sport, dport, seq = _tcp(data, off)
            flags = data[off + 13]
            payload = data[off + (data[off + 12] >> 4) * 4:end] if dport == 53 else b""
            return _new(Packet, ("tcp", src, sport, dst, dport, 6, flags, seq, None, None, None, payload))
        if proto == 1 or proto == 58:
            itype, code = data[off], data[off + 1]
            ident = _u16(data, off + 4)[0] if itype in _ECHO[proto] and off + 6 <= end else None
            return Packet(PROTO_NAMES[proto], src, None, dst, None, proto, icmp_type=itype, icmp_code=code,
                          ident=ident)
        if proto in _PORTED:
            sport, dport = _ports(data, off)
            return Packet(PROTO_NAMES[proto], src, sport, dst, dport, proto)
        if proto == 59:
            return None  # IPv6 "no next header": nothing rides on it
        return Packet(PROTO_NAMES.get(proto) or f"ip-{proto}", src, None, dst, None, proto)
    except (IndexError, struct.error, ValueError, OSError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"bad packet: {exc}") from exc


class DnsQuery(NamedTuple):
    """The first question of a standard DNS query: its name, its type (None when cut off), the header flags."""

    name: str
    qtype: int | None
    flags: int


def dns_query_name(payload: bytes) -> str:
    """The name asked in a standard DNS query (lower case, no trailing dot, "." for the root).

    DecodeError says why the message is not one: shorter than a DNS header,
    a response, another opcode, no question, or a question that does not parse.
    """
    return dns_query(payload).name


def dns_query(payload: bytes) -> DnsQuery:
    """The first question of a standard DNS query; DecodeError as :func:`dns_query_name`."""
    n = len(payload)
    if n < 12:
        raise DecodeError(f"DNS message of {n} bytes, shorter than its header")
    if payload[2] & 0x80:
        raise DecodeError("DNS response sent to port 53")
    opcode = (payload[2] >> 3) & 0x0F
    if opcode:
        raise DecodeError(f"DNS opcode {opcode}, not a standard query")
    if not _u16(payload, 4)[0]:
        raise DecodeError("DNS query without a question")
    labels: list[str] = []
    pos, jumps, total, end = 12, 0, 0, 0
    while True:
        if pos >= n:
            raise DecodeError("DNS question name runs past the message")
        length = payload[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n or jumps >= 8:
                raise DecodeError("bad compression pointer in a DNS question")
            if not jumps:
                end = pos + 2
            jumps += 1
            pos = ((length & 0x3F) << 8) | payload[pos + 1]
            continue
        if length & 0xC0:
            raise DecodeError(f"DNS label type {length >> 6}")
        label = payload[pos + 1:pos + 1 + length]
        if len(label) < length:
            raise DecodeError("DNS question name runs past the message")
        total += length + 1
        if total > 255:
            raise DecodeError("DNS name longer than 255 bytes")
        labels.append(_label_text(label))
        pos += 1 + length
    if not jumps:
        end = pos
        if end + 4 > n:
            raise DecodeError("DNS question without its type and class")
    qtype = _u16(payload, end)[0] if end + 2 <= n else None
    return DnsQuery(".".join(labels).lower() or ".", qtype, _u16(payload, 2)[0])


def _label_text(label: bytes) -> str:
    """A label in presentation form: printable ASCII as is, dots and other bytes escaped (RFC 1035 5.1)."""
    if _PLAIN.fullmatch(label):
        return label.decode("ascii")
    return "".join(chr(c) if 0x21 <= c <= 0x7E and c not in (0x2E, 0x5C) else
                   f"\\{chr(c)}" if c in (0x2E, 0x5C) else f"\\{c:03d}" for c in label)


_PLAIN = re.compile(rb"[!-\-/-\[\]-~]*")  # printable ASCII but the dot and the backslash


def _drain(sock: socket.socket) -> None:
    for _ in range(100_000):
        try:
            sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return


class Sniffer:
    """Outgoing IP packets from all interfaces or from the named ones."""

    def __init__(self, interfaces: Sequence[str] = (), rcvbuf: int = 4 << 20) -> None:
        """Capture on ``interfaces`` (all, including ``lo`` and ones added later, when empty)."""
        self.interfaces = tuple(interfaces)
        self.rcvbuf = rcvbuf
        self.missing: list[str] = []
        self._socks: list[socket.socket] = []
        self._prog: Program | None = None

    def open(self) -> None:
        """Open the capture sockets; CollectorError says why not."""
        self._prog = Program(filter_program())
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
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._prog.fprog)
            except OSError as exc:
                raise CollectorError(f"the kernel refused the capture filter: {exc}") from exc
            sock.setblocking(False)
            if ifname:
                sock.bind((ifname, ETH_P_ALL))
            else:
                _drain(sock)
        except (OSError, CollectorError):
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
                if exc.errno not in (errno.ENODEV, errno.ENXIO, errno.ENETDOWN):  # not there, or not up yet
                    raise translate_os_error(f"capturing on {name}", exc) from exc
                still.append(name)
        self.missing = still

    def read(self, timeout: float | None, max_batch: int = 1024, wake: socket.socket | None = None,
             stop: int | None = None) -> list[bytes]:
        """Packets waiting now, or arriving within ``timeout`` seconds (None: until some come; at most ``max_batch``).

        A byte on ``wake`` (consumed here) ends the wait early: the DNS decoding
        thread uses it to hand back answers without waiting for the next packet.
        ``stop`` (a descriptor, not read) ends it too: the stop event's.
        """
        extra: list[Any] = [wake] if wake is not None else []
        if stop is not None:
            extra.append(stop)
        ready, _, _ = select.select([*self._socks, *extra], [], [], timeout)
        out: list[bytes] = []
        for sock in ready:
            if wake is not None and sock is wake:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    sock.recv(4096)
                continue
            if sock is stop:
                continue
            while len(out) < max_batch:
                try:
                    data, addr = sock.recvfrom(SNAPLEN)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    # The interface went down (or was not up yet when bound): reported once, then it reads on.
                    if exc.errno != errno.ENETDOWN:
                        raise
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
