"""Packet and DNS decoding by hand, and the collector's flow handling, on packets built here."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from agent.events import Event
from collectors.base import Emit, Sources
from collectors.network import DnsStreams, NetworkCollector
from collectors.sniff import DecodeError, Packet, decode, dns_query_name

SRC4, DST4 = "198.51.100.1", "198.51.100.2"
SRC6, DST6 = "2001:db8::1", "2001:db8::2"
QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01"


def ip4(proto: int, body: bytes, frag: int = 0, ihl: int = 5) -> bytes:
    opts = b"\x01" * (ihl * 4 - 20)
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(opts) + len(body), 0, frag, 64, proto, 0,
                       socket.inet_aton(SRC4), socket.inet_aton(DST4)) + opts + body


def ip6(nh: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), nh, 64, socket.inet_pton(socket.AF_INET6, SRC6),
                       socket.inet_pton(socket.AF_INET6, DST6)) + body


def ext(nh: int, size: int = 8) -> bytes:
    return bytes([nh, size // 8 - 1]) + bytes([1, size - 4]) + bytes(size - 4)


def udp(dport: int, payload: bytes, sport: int = 40000) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(dport: int, flags: int, payload: bytes = b"", seq: int = 1000, sport: int = 40000) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 1024, 0, 0) + payload


def test_every_protocol_is_named_with_its_ports_where_it_has_them() -> None:
    assert decode(ip4(17, udp(443, b"q"))) == Packet("udp", SRC4, 40000, DST4, 443, 17, payload=b"q")
    assert decode(ip4(136, udp(4500, b"lite"))) == Packet("udplite", SRC4, 40000, DST4, 4500, 136, payload=b"lite")
    sctp = decode(ip4(132, struct.pack("!HHII", 5000, 9899, 0, 0)))
    assert sctp is not None and (sctp.proto, sctp.src_port, sctp.dst_port) == ("sctp", 5000, 9899)
    gre = decode(ip4(47, b"\0\0\x08\0" + b"x" * 20))
    assert gre is not None and (gre.proto, gre.src_port, gre.dst_port) == ("gre", None, None)
    other = decode(ip4(253, b"experiment"))
    assert other is not None and other.proto == "ip-253" and other.number == 253
    echo = decode(ip4(1, struct.pack("!BBHHH", 8, 0, 0, 0x5157, 1) + b"payload"))
    assert echo is not None and (echo.proto, echo.icmp_type, echo.ident, echo.src_port) == ("icmp", 8, 0x5157, None)
    unreach = decode(ip4(1, struct.pack("!BBHI", 3, 3, 0, 0) + b"orig"))
    assert unreach is not None and (unreach.icmp_type, unreach.icmp_code, unreach.ident) == (3, 3, None)
    echo6 = decode(ip6(58, struct.pack("!BBHHH", 128, 0, 0, 7, 1)))
    assert echo6 is not None and (echo6.proto, echo6.icmp_type, echo6.ident) == ("icmpv6", 128, 7)
    syn = decode(ip4(6, tcp(443, 0x02)))
    assert syn is not None and syn.syn and not syn.ack and syn.payload == b""  # no payload kept but for port 53
    dns = decode(ip4(6, tcp(53, 0x18, b"\x00\x05hello")))
    assert dns is not None and dns.payload == b"\x00\x05hello" and dns.seq == 1000


def test_ipv4_options_fragments_and_ah_are_handled() -> None:
    with_opts = decode(ip4(17, udp(53, QUERY), ihl=7))
    assert with_opts is not None and with_opts.payload == QUERY
    assert decode(ip4(17, udp(9, b"x"), frag=0x2000)) is not None  # a first fragment has the ports
    assert decode(ip4(17, b"later bytes", frag=0x0010)) is None  # a later one has none
    ah = bytes([17, 4]) + bytes(22)  # AH: next header, length in 4-octet units minus 2 (24 bytes)
    behind_ah = decode(ip4(51, ah + udp(4500, b"x")))
    assert behind_ah is not None and (behind_ah.proto, behind_ah.dst_port) == ("udp", 4500)
    with pytest.raises(DecodeError):
        decode(ip4(17, udp(9, b""), ihl=4)[:30])
    tiny = decode(ip4(6, tcp(443, 0x02)[:8], frag=0x2000))  # a SYN whose flags went to the next fragment
    assert tiny is not None and (tiny.proto, tiny.dst_port, tiny.syn) == ("tcp", 443, True)


@pytest.mark.parametrize("chain", [[0], [0, 60], [43], [60, 43, 0], [0, 44]])
def test_ipv6_extension_headers_are_walked_to_the_transport(chain: list[int]) -> None:
    finals = ((17, udp(4500, b"data"), ("udp", 4500)), (6, tcp(8080, 0x02), ("tcp", 8080)),
              (136, udp(53, QUERY), ("udplite", 53)), (58, b"\x80\0\0\0\0\x07\0\x01", ("icmpv6", None)))
    for final, body, want in finals:
        headers = b""
        for i, h in enumerate(chain):
            nh = chain[i + 1] if i + 1 < len(chain) else final
            headers += struct.pack("!BBHI", nh, 0, 0, 1) if h == 44 else ext(nh, 16 if h == 43 else 8)
        pkt = decode(ip6(chain[0], headers + body))
        assert pkt is not None and (pkt.proto, pkt.dst_port) == want, chain


def test_ipv6_later_fragments_and_dead_ends() -> None:
    later = struct.pack("!BBHI", 17, 0, 0x00A8, 1)  # offset 21 x 8
    assert decode(ip6(44, later + b"rest of a datagram")) is None
    assert decode(ip6(59, b"")) is None  # no next header
    with pytest.raises(DecodeError, match="too long"):
        decode(ip6(0, ext(0) * 17 + udp(9, b"")))
    with pytest.raises(DecodeError):
        decode(ip6(0, ext(17)[:4]))


def test_dns_queries_parse_and_everything_else_says_why_not() -> None:
    assert dns_query_name(QUERY) == "www.example.com"
    assert dns_query_name(QUERY[:12] + b"\x00\x00\x01\x00\x01") == "."
    upper = QUERY.replace(b"www", b"WwW")
    assert dns_query_name(upper) == "www.example.com"
    odd = QUERY[:12] + b"\x04a.b\xff\x00\x00\x01\x00\x01"  # a dot and a raw byte inside one label
    assert dns_query_name(odd) == "a\\.b\\255"
    pointer = QUERY[:12] + b"\xc0\x1e" + b"\x00\x01\x00\x01" + b"\x00" * 12 + b"\x03abc\x00"
    assert dns_query_name(pointer) == "abc"
    cases = {
        b"\x12\x34\x01": "shorter than its header",
        b"\x12\x34\x81\x80" + QUERY[4:]: "response",
        b"\x12\x34\x28\x00" + QUERY[4:]: "opcode 5",
        QUERY[:4] + b"\x00\x00" + QUERY[6:]: "without a question",
        QUERY[:20]: "runs past",
        QUERY[:-4]: "type and class",
        QUERY[:12] + b"\xc0\x0c": "compression",
        QUERY[:12] + b"\x80abc": "label type",
        QUERY[:12] + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01": "longer than 255",
    }
    for message, why in cases.items():
        with pytest.raises(DecodeError, match=why):
            dns_query_name(message)


def test_dns_streams_find_each_message_and_skip_continuations() -> None:
    s = DnsStreams(size=2)
    s.start("a", 99)  # the SYN's sequence number: data begins at 100
    two = struct.pack("!H", 3) + b"one" + struct.pack("!H", 3) + b"two"
    assert s.messages("a", 100, two) == [b"one", b"two"]
    assert s.messages("a", 100, two) == []  # a retransmission
    big = struct.pack("!H", 10) + b"half"  # a message cut by the segment boundary
    assert s.messages("a", 110, big) == [b"half"]
    assert s.messages("a", 116, b"rest!!") == []  # its continuation
    assert s.messages("a", 122, struct.pack("!H", 1) + b"x") == [b"x"]
    assert s.messages("b", 5000, struct.pack("!H", 2) + b"hi") == [b"hi"]  # begun before we looked
    s.start("c", 0)
    s.start("d", 0)
    assert len(s._next) == 2  # bounded


def _answers(c: NetworkCollector, emit: Emit) -> None:
    """Have the DNS worker parse what the collector queued, and emit its answers (run() does it on a thread)."""
    try:
        c.dns.flush()
    finally:
        c.dns.worker.close()
    c.dns_answers(emit)


def _collector(tmp_path: Path) -> tuple[NetworkCollector, list[Event]]:
    (tmp_path / "net").mkdir()
    c = NetworkCollector({"mode": "sniff"}, Sources(proc_root=tmp_path), flows=64, dns_streams=8)
    events: list[Event] = []
    return c, events


def test_a_flood_of_flows_stays_within_the_table_and_counts_what_it_forgot(tmp_path: Path) -> None:
    c, events = _collector(tmp_path)
    emit = lambda e: events.append(e) is None  # noqa: E731
    for port in range(1000, 6000):
        pkt = decode(ip4(17, udp(port, b"x")))
        assert pkt is not None
        c._on_packet(emit, pkt)
        c._on_packet(emit, pkt)  # the flow's later datagram: no second event
    for n in range(200):
        syn = decode(ip4(6, tcp(53, 0x02, seq=n, sport=10000 + n)))
        assert syn is not None
        c._on_packet(emit, syn)
    assert len(events) == 5200
    assert len(c._flows) == 64 and len(c._dns_streams._next) == 8
    c._count_evictions()
    assert c.health.drops["flow_evicted"] == 5200 - 64


def test_malformed_dns_and_link_scoped_control_traffic(tmp_path: Path) -> None:
    c, events = _collector(tmp_path)
    emit = lambda e: events.append(e) is None  # noqa: E731
    for data in (ip4(17, udp(53, b"\x12\x34\x81\x80" + QUERY[4:], sport=1)),
                 ip4(136, udp(53, b"short", sport=2)),
                 ip4(17, udp(53, QUERY, sport=3)),
                 ip6(58, struct.pack("!BBHI", 135, 0, 0, 0) + bytes(16)),  # neighbour solicitation
                 ip6(58, struct.pack("!BBHI", 143, 0, 0, 0)),  # MLDv2 report
                 ip4(2, b"\x16\0\0\0" + bytes(4)).replace(socket.inet_aton(DST4), socket.inet_aton("224.0.0.22")),
                 ip4(1, struct.pack("!BBHHH", 0, 0, 0, 9, 1))):  # the kernel's echo reply
        pkt = decode(data)
        assert pkt is not None
        c._on_packet(emit, pkt)
    assert [e.net.proto for e in events] == ["icmp"]  # the DNS messages wait for the DNS worker
    _answers(c, emit)
    got = [(e.kind, e.net.proto, e.net.local_port, e.net.dns_malformed, e.net.domain) for e in events]
    assert got == [("net.connect", "icmp", None, None, None), ("net.connect", "udp", 1, True, None),
                   ("net.connect", "udplite", 2, True, None), ("net.dns", "udp", 3, None, "www.example.com")]
    # no socket in this fixture: the datagrams count as lost owners, the kernel's echo reply does not
    assert events[0].process.pid is None and c.health.drops["no_process"] == 3
    assert not c.health.partials  # every message was parsed by the worker


class _Audit:
    """An audit source whose connect rules are in force."""

    def covers(self, kind: str) -> bool:
        return kind == "net.connect"


def test_with_the_audit_source_in_force_the_sniffer_keeps_what_it_alone_can_name(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    c = NetworkCollector({"mode": "sniff"}, Sources(proc_root=tmp_path), audit=_Audit())
    events: list[Event] = []
    emit = lambda e: events.append(e) is None  # noqa: E731
    for data in (ip4(6, tcp(443, 0x02)), ip4(17, udp(443, b"x")),  # the audit source's
                 ip4(17, udp(53, QUERY, sport=1)), ip4(17, udp(53, b"\x12\x34\x81\x80" + QUERY[4:], sport=2)),
                 ip4(136, udp(4500, b"x")), ip4(1, struct.pack("!BBHHH", 8, 0, 0, 9, 1)), ip4(47, b"\0\0\x08\0"),
                 ip6(0, ext(17) + udp(4500, b"x"))):
        pkt = decode(data)
        assert pkt is not None
        c._on_packet(emit, pkt)
    _answers(c, emit)
    got = [(e.kind, e.net.proto, e.net.dns_malformed) for e in events]
    assert got == [("net.connect", "udplite", None), ("net.connect", "icmp", None), ("net.connect", "gre", None),
                   ("net.dns", "udp", None), ("net.connect", "udp", True)]
