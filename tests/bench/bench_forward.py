"""Forwarder and metrics costs: formatting, submit, loopback TCP delivery, scrape. Prints figures only."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from agent.errors import Location
from agent.forward import SyslogForwarder, format_record, parse_target
from agent.metrics import Metrics

N = 20_000


def finding(seq: int) -> dict[str, Any]:
    return {
        "type": "finding", "seq": seq, "time": 1_700_000_000.0 + seq, "host": "js-fgw-0042",
        "rule": "BM-NET-001", "severity": "critical", "action": "alert",
        "message": {"zh": "张三 在涉密计算机上连接互联网 203.0.113.9:443",
                    "en": "connected to 203.0.113.9:443"},
        "event": {"event": {"kind": "net.connect"}, "process": {"pid": 4242, "exe": "/usr/bin/curl"},
                  "net": {"proto": "tcp", "remote_ip": "203.0.113.9", "remote_port": 443}},
        "accountable": {"operator": "张三", "custodian": "zhangsan", "unit": "省发改委信息中心",
                        "department": "省发展和改革委员会"},
    }


def sink(server: socket.socket, counter: list[int]) -> None:
    conn, _ = server.accept()
    with conn:
        while chunk := conn.recv(1 << 16):
            counter[0] += len(chunk)


def main() -> None:
    records = [finding(i) for i in range(N)]
    t0 = time.perf_counter()
    size = sum(len(format_record(r, hostname="h", app_name="dutywatch", procid=1, facility=10, now=0.0,
                                 max_bytes=65536)) for r in records)
    dt = time.perf_counter() - t0
    print(f"format_record: {N / dt:,.0f} records/s, {size / N:.0f} bytes/message")

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    received = [0]
    rx = threading.Thread(target=sink, args=(server, received), daemon=True)
    rx.start()
    target = parse_target({"address": f"tcp://127.0.0.1:{server.getsockname()[1]}", "buffer": N},
                          Location("bench"))
    fwd = SyslogForwarder(target, hostname="h")
    t0 = time.perf_counter()
    for r in records:
        fwd.submit(r)
    submit_dt = time.perf_counter() - t0
    fwd.start()
    deadline = time.monotonic() + 60
    while fwd.sent < N and time.monotonic() < deadline:
        time.sleep(0.01)
    total_dt = time.perf_counter() - t0
    fwd.stop()
    server.close()
    print(f"submit: {submit_dt / N * 1e6:.2f} us/record; tcp delivery: {fwd.sent / total_dt:,.0f} records/s "
          f"({fwd.sent} sent, {fwd.dropped} dropped)")

    m = Metrics("bench")
    for i in range(200):
        m.expect_rule(f"R-{i:03d}", "high", "alert", "省发改委信息中心")
    t0 = time.perf_counter()
    for _ in range(N):
        m.event("net.connect")
        m.finding("R-001", "high", "alert", "省发改委信息中心")
        m.observe_evaluation(2e-5)
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    body = m.exposition()[0]
    scrape_dt = time.perf_counter() - t1
    print(f"metrics: {dt / N * 1e6:.2f} us per event+finding+observe; scrape {scrape_dt * 1e3:.1f} ms, "
          f"{len(body)} bytes")


if __name__ == "__main__":
    main()
