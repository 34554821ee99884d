"""Network collector costs: per-packet work in Python, owner lookups, memory once sniffing.

Prints figures; asserts nothing about time (shared machines are noisy).
Run as root for the sniffing figures: ``.venv/bin/python tests/bench/bench_network.py``.
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import time

from agent.events import Event
from collectors.network import NetworkCollector
from collectors.sniff import Sniffer, decode
from collectors.sockmap import SockMap

N = 50_000


def _udp4(sport: int, payload: bytes = b"x" * 64) -> bytes:
    udp = struct.pack("!HHHH", sport, 443, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton("198.18.0.1"), socket.inet_aton("198.18.0.2"))
    return ip + udp


def bench_decode() -> None:
    data = _udp4(40000)
    t = time.perf_counter()
    for _ in range(N):
        decode(data)
    dt = time.perf_counter() - t
    print(f"decode UDP/IPv4 header: {N / dt:,.0f} packets/s ({dt / N * 1e6:.2f} us each)")


def bench_known_flow() -> None:
    c = NetworkCollector({"mode": "sniff"})
    events: list[Event] = []
    pkt = decode(_udp4(40000))
    assert pkt is not None
    c._on_packet(lambda e: events.append(e) is None, pkt)  # first packet: the flow's event
    t = time.perf_counter()
    for _ in range(N):
        c._on_packet(lambda e: events.append(e) is None, pkt)
    dt = time.perf_counter() - t
    print(f"later datagrams of a known flow: {N / dt:,.0f} packets/s; events {len(events)} (want 1)")


def bench_owner_lookup() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    m = SockMap()
    conns: list[socket.socket] = []
    elapsed = 0.0
    for _ in range(50):  # each socket is new to the map, as a fresh connect is
        c = socket.create_connection(("127.0.0.1", port))
        conns.append(c)
        lip, lport = c.getsockname()
        t = time.perf_counter()
        _, pid = m.lookup("tcp", lip, lport, "127.0.0.1", port)
        elapsed += time.perf_counter() - t
        assert pid == os.getpid()
    dt = elapsed
    procs = sum(1 for n in os.listdir("/proc") if n.isdigit())
    print(f"owner lookup of a new socket ({procs} processes here): {dt / len(conns) * 1e3:.2f} ms each, "
          f"{m.scans} fd scans for {len(conns)} sockets")
    for c in conns:
        c.close()
    listener.close()


def bench_sniff_memory() -> None:
    if os.geteuid() != 0:
        print("sniffer memory: skipped (needs CAP_NET_RAW)")
        return
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = Sniffer()
    s.open()
    from collectors.sniff import dns_query_name

    dns_query_name(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s.close()
    print(f"peak RSS before sniffing {before:.0f} MB, with the filter compiled and DNS decoded {after:.0f} MB")


def bench_dns_worker() -> None:
    """DNS message decoding per packet: in this process against through the confined worker."""
    import statistics

    from collectors.dns_worker import MAX_BATCH, DnsWorker
    from collectors.sniff import dns_query

    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    n = 3200
    worker = DnsWorker()
    worker.start()
    local, batched, single = [], [], []
    try:
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(n):
                dns_query(query)
            local.append((time.perf_counter() - t) / n)
            t = time.perf_counter()
            for _ in range(n // MAX_BATCH):
                worker.parse([query] * MAX_BATCH)
            batched.append((time.perf_counter() - t) / n)
            t = time.perf_counter()
            for _ in range(n // 10):
                worker.parse([query])
            single.append((time.perf_counter() - t) / (n // 10))
    finally:
        worker.close()
    lo, ba, si = (statistics.median(x) * 1e6 for x in (local, batched, single))
    print(f"DNS decode per packet (median of 3; shared, heavily loaded machine): in-process {lo:.2f} us, "
          f"through the worker in batches of {MAX_BATCH} {ba:.2f} us (x{ba / lo:.1f}), "
          f"one per request {si:.1f} us (x{si / lo:.0f}); worker restarts {worker.restarts}")


if __name__ == "__main__":
    bench_dns_worker()
    bench_decode()
    bench_known_flow()
    bench_owner_lookup()
    bench_sniff_memory()
