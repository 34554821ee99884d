"""Journal throughput: appends/s (batches of 100, and one at a time) and verify records/s, per crypto suite.

Batched appends and verify run in both suites, ``intl`` (SHA-256, Ed25519)
and ``gm`` (SM3, SM2), with gm's rate as a share of intl's (target: gm
verify at least half of intl's). Each figure is the median of 3 runs.
Appends are durable (synchronous=FULL: one fsync of the WAL per
transaction), so single appends measure the disk, the same in either suite.
Run: .venv/bin/python tests/bench/bench_journal.py [--records N] [--single N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.journal.store import Journal
from agent.journal.verify import verify_journal

HOST = "js-fgw-0042"


def finding(i: int) -> dict[str, Any]:
    """A realistic finding record (about 900 bytes of canonical JSON)."""
    return {
        "type": "finding", "time": 1_714_521_600.0 + i, "host": HOST, "rule": "BM-NET-001",
        "severity": "critical", "action": "alert",
        "title": {"zh": "涉密计算机违规外联", "en": "Classified host connected to the Internet"},
        "message": {"zh": f"张三 在涉密计算机上连接互联网 203.0.113.{i % 250}:443",
                    "en": f"zhangsan connected a classified host to 203.0.113.{i % 250}:443"},
        "event": {"event": {"kind": "net.connect", "time": 1_714_521_600.0 + i, "collector": "network"},
                  "process": {"pid": 4242 + i % 1000, "exe": "/usr/bin/curl", "name": "curl", "uid": 1000,
                              "loginuid": 1000, "cmdline": "curl https://example.com/"},
                  "net": {"proto": "tcp", "direction": "out", "remote_ip": f"203.0.113.{i % 250}",
                          "remote_port": 443, "remote_zone": "internet"}},
        "accountable": {"operator": "张三", "custodian": "zhangsan", "unit": "省发改委信息中心",
                        "department": "省发展和改革委员会"},
        "controls": ["GB/T 22239-2019 8.1.4.4", "保密法 (2010) 第二十四条"], "tags": ["违规外联", "network"],
    }


def median_rate(runs: int, once: Callable[[Path], tuple[int, float]]) -> float:
    """Median of ``runs`` rates (items / seconds), each run in a fresh directory."""
    rates = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="dw-bench-", dir="/var/tmp") as d:
            n, seconds = once(Path(d) / "state")
            rates.append(n / seconds)
    return statistics.median(rates)


def suite_rates(records: list[dict[str, Any]], runs: int, crypto: str) -> tuple[float, float]:
    """Median (batched append, verify) records/s of ``records`` in suite ``crypto``."""

    def batched(state: Path) -> tuple[int, float]:
        with Journal(state, host=HOST, crypto=crypto) as j:
            t = time.perf_counter()
            for k in range(0, len(records), 100):
                j.append_many(records[k:k + 100])
            return len(records), time.perf_counter() - t

    def verify(state: Path) -> tuple[int, float]:
        batched(state)
        t = time.perf_counter()
        report = verify_journal(state / "journal.db")
        seconds = time.perf_counter() - t
        if not report.ok or report.suite != crypto:
            raise SystemExit(f"verify failed: {report.problem}")
        return report.records, seconds

    return median_rate(runs, batched), median_rate(runs, verify)


def print_suites(records: list[dict[str, Any]], runs: int, prefix: str = "journal") -> None:
    """The append and verify lines of both suites, gm beside intl."""
    n = len(records)
    rates = {c: suite_rates(records, runs, c) for c in ("intl", "gm")}
    (ia, iv), (ga, gv) = rates["intl"], rates["gm"]
    print(f"{prefix} append, batches of 100, {n} records: intl {ia:,.0f} records/s, gm {ga:,.0f} records/s "
          f"(gm {ga / ia:.2f}x intl)")
    print(f"{prefix} verify, {n} records: intl {iv:,.0f} records/s, gm {gv:,.0f} records/s "
          f"(gm {gv / iv:.2f}x intl, target >= 0.50x)")


def main() -> int:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--single", type=int, default=10_000, help="records for the one-at-a-time run")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    records = [finding(i) for i in range(args.records)]

    def single(state: Path) -> tuple[int, float]:
        with Journal(state, host=HOST) as j:
            t = time.perf_counter()
            for r in records[:args.single]:
                j.append(r)
            return args.single, time.perf_counter() - t

    print_suites(records, args.runs)
    one = median_rate(args.runs, single)
    print(f"journal append, one at a time, {args.single} records: {one:,.0f} records/s (intl; fsync-bound)")
    print(f"(median of {args.runs} runs; synchronous=FULL, WAL)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
