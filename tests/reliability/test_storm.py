"""Event storms: 200,000 events/s offered; memory bounded, drops counted, accepted findings all journaled.

Folding is on, as it is by default: the storm's findings are one first record and
folded records with their counts, and those counts, added up, must be every finding
the pipeline made and what the stop record says.

The short run is part of `make test`; the long one (DW_STORM_SECONDS, default
20) runs in `make reliability`. Figures are printed, not asserted, where they
depend on the machine (throughput, recovery time).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent.events import Event, Process
from tests.reliability.kit import RunningAgent, config_tree, exec_from_tmp, http_get, metric, rss_mb, wait_for

RATE = 200_000


def pool(n: int = 4096) -> list[Event]:
    """Distinct events: 1 in 64 a finding (exec from /tmp), the rest plain execs."""
    out = []
    for i in range(n):
        p = Process(pid=200000 + i, name="cat", exe="/tmp/x" if i % 64 == 0 else "/usr/bin/cat", uid=1000,
                    user="zhangsan", loginuid=1000)
        out.append(Event("process.exec", None, "inject", p))
    return out


def storm(seconds: float, tmp: Path, queue_size: int = 65536) -> dict[str, float]:
    cfg = config_tree(tmp, queue_size=queue_size)
    events = pool()
    with RunningAgent(cfg) as ra:
        port = ra.agent.exporter.port
        time.sleep(2.0)
        idle = rss_mb()
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        emit = ra.injector._emit
        assert emit is not None
        offered = accepted = 0
        t0 = time.monotonic()
        tick = 0.01
        per_tick = int(RATE * tick)
        k = 0
        while time.monotonic() - t0 < seconds:
            for _ in range(per_tick):
                accepted += emit(events[k])
                k = (k + 1) & 4095
            offered += per_tick
            lag = t0 + offered / RATE - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        t_storm = time.monotonic() - t0
        wait_for(lambda: ra.agent.pipeline.depth() == 0, "queue never drained", 300)
        folder = ra.agent.folder
        wait_for(lambda: ra.agent.writer.durable_seq >= folder.sent + 1, "findings never all journaled", 300)
        t_drain = time.monotonic() - t0 - t_storm
        # Recovery: one new finding, offered after the storm, until it is durable.
        t1 = time.monotonic()
        before = ra.agent.writer.durable_seq
        ra.injector.send(exec_from_tmp(1, 900000))
        wait_for(lambda: ra.agent.writer.durable_seq > before, "no recovery after the storm", 60)
        recovery = time.monotonic() - t1
        done.set()
        text = http_get(port, "/metrics")[1]
        dropped = metric(text, "dutywatch_events_dropped_total", collector="inject", reason="queue_full")
        made = ra.agent.pipeline.findings
    import json
    import sqlite3
    with sqlite3.connect(f"file:{tmp / 'state' / 'journal.db'}?mode=ro", uri=True) as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM records WHERE type = 'finding'")]
        (last,) = db.execute("SELECT body FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    stop = json.loads(last)
    assert stop.get("kind") == "agent.stop", stop
    records = sum((b.get("folded") or {}).get("count", 1) for b in bodies)
    r = {"offered": offered, "accepted": accepted, "dropped": dropped, "t_storm": t_storm, "t_drain": t_drain,
         "idle": idle, "peak": peak[0], "findings": made, "recovery": recovery, "records": records,
         "rows": len(bodies), "stop_findings": stop["detail"]["findings"]}
    print(f"\nstorm {seconds:.0f} s: offered {offered:,} events ({offered / t_storm:,.0f}/s), accepted {accepted:,}, "
          f"dropped {int(dropped):,} (counted as inject/queue_full); {made:,} findings, journal caught up "
          f"{t_drain:.1f} s after; RSS idle {idle:.0f} MB, peak {peak[0]:.0f} MB ({peak[0] / idle:.2f}x); "
          f"a new finding durable {recovery * 1000:.0f} ms after the storm; {records:,} findings in {len(bodies)} "
          "journal records (folded)")
    return r


def check(r: dict[str, float], must_drop: bool) -> None:
    assert r["accepted"] + r["dropped"] == r["offered"], "a refused event was not counted as a drop"
    if must_drop:
        assert r["dropped"] > 0, "the storm never filled the queue; it tested nothing"
    assert r["peak"] < 2 * r["idle"], f"RSS grew from {r['idle']:.0f} MB to {r['peak']:.0f} MB"
    assert r["records"] == r["findings"], "a finding the pipeline made is missing from the journal"
    assert r["stop_findings"] == r["findings"], "the stop record's count is not what the pipeline made"
    assert r["rows"] < r["findings"] / 10, "the storm's repeats were not folded"


def test_short_storm(tmp_path: Path) -> None:
    # A small queue, so that even a fast machine has to shed load and count it.
    check(storm(2.0, tmp_path, queue_size=256), must_drop=True)


@pytest.mark.slow
def test_long_storm(tmp_path: Path) -> None:
    check(storm(float(os.environ.get("DW_STORM_SECONDS", "20")), tmp_path), must_drop=False)


STOP_RULE = """\
pack: local
rules:
  - id: LOCAL-STOP-001
    title: {zh: 代理停止, en: Agent stopped}
    when: event.kind == "agent.stop"
    severity: info
    action: audit
    accountable: [host.custodian]
    controls: [test]
    message: {zh: 代理停止, en: agent stopped}
"""


def test_the_stop_records_count_includes_the_stop_events_own_findings_and_is_the_last_record(tmp_path: Path) -> None:
    import json
    import sqlite3
    cfg = config_tree(tmp_path)
    (tmp_path / "rules" / "zz-local.yaml").write_text(STOP_RULE, encoding="utf-8")
    with RunningAgent(cfg) as ra:
        ra.injector.send(exec_from_tmp(3))
        wait_for(lambda: ra.agent.pipeline.findings >= 3, "the injected findings were not made")
    with sqlite3.connect(f"file:{tmp_path / 'state' / 'journal.db'}?mode=ro", uri=True) as db:
        rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM records ORDER BY seq")]
    stop = rows[-1]
    assert stop["kind"] == "agent.stop", stop
    findings = [r for r in rows if r["type"] == "finding"]
    assert [r["rule"] for r in findings][-1] == "LOCAL-STOP-001"
    assert stop["detail"]["findings"] == len(findings) == 4
