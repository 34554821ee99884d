"""The insider benchmark's network section: sniffer cost per packet for each protocol (see bench_insider.py)."""

from __future__ import annotations

import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROUNDS = 5


def median_us(fn: Callable[[], object], n: int) -> float:
    """The median over ROUNDS rounds of the time one call of ``fn`` takes, in microseconds."""
    rounds = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds)


# -- network: sniffer decode cost per packet, for each protocol -------------------------------------------

_SRC4, _DST4 = socket.inet_aton("198.51.100.1"), socket.inet_aton("198.51.100.2")
_SRC6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
_DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
_QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01"
_HBH = bytes([0, 0, 1, 4, 0, 0, 0, 0])


def _ip4(proto: int, body: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, proto, 0, _SRC4, _DST4) + body


def _ip6(nh: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), nh, 64, _SRC6, _DST6) + body


def _udp(dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload


def _tcp(dport: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, flags, 1024, 0, 0) + payload


def network_packets() -> dict[str, bytes]:
    """One packet of each class the sniffer hands to Python."""
    echo = struct.pack("!BBHHH", 8, 0, 0, 0x5157, 1) + b"p" * 56
    return {
        "tcp syn / ipv4": _ip4(6, _tcp(443, 0x02)),
        "tcp syn / ipv6": _ip6(6, _tcp(443, 0x02)),
        "tcp dns segment": _ip4(6, _tcp(53, 0x18, struct.pack("!H", len(_QUERY)) + _QUERY)),
        "udp / ipv4": _ip4(17, _udp(443, b"q" * 64)),
        "udp dns query": _ip4(17, _udp(53, _QUERY)),
        "udp / ipv6 hop-by-hop": _ip6(0, bytes([17]) + _HBH[1:] + _udp(443, b"q" * 64)),
        "udplite / ipv4": _ip4(136, _udp(4500, b"l" * 64)),
        "sctp / ipv4": _ip4(132, struct.pack("!HHII", 5000, 9899, 0, 0) + b"\x01\0\0\x14" + bytes(16)),
        "icmp echo": _ip4(1, echo),
        "icmpv6 echo": _ip6(58, b"\x80\0\0\0" + echo[4:]),
        "gre / ipv4": _ip4(47, b"\0\0\x08\0" + b"g" * 64),
    }


def bench_network() -> None:
    """Per packet: the decoder alone, then the collector's whole path for a packet of a flow already reported."""
    from agent.events import Event
    from collectors.base import Sources
    from collectors.network import NetworkCollector
    from collectors.sniff import decode, dns_query_name

    print("-- network: sniffer cost per packet (median of 5 rounds)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "net").mkdir()
        collector = NetworkCollector({"mode": "sniff"}, Sources(proc_root=Path(tmp)))
        events: list[Event] = []
        emit = lambda e: events.append(e) is None  # noqa: E731
        base: float | None = None
        for name, data in network_packets().items():
            pkt = decode(data)
            assert pkt is not None, name
            collector._on_packet(emit, pkt)  # the flow's first packet: its event
            dec = median_us(lambda d=data: decode(d), 20_000)  # type: ignore[misc]
            known = median_us(lambda p=pkt: collector._on_packet(emit, p), 20_000)  # type: ignore[misc]
            base = base or dec
            print(f"{name:24s} decode {dec:6.2f} us (x{dec / base:4.2f} of a TCP SYN)   "
                  f"decode + known flow {dec + known:6.2f} us   ({len(data)} bytes)")
        dns = median_us(lambda: dns_query_name(_QUERY), 20_000)
        print(f"{'dns question parse':24s} {dns:6.2f} us; events from {len(network_packets())} first packets: "
              f"{len(events)}")
