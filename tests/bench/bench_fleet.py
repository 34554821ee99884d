"""A province on one machine: what a fleet costs the central stack, and how fast policy reaches it.

Run with `make bench`. Three phases, each with its own deadline:

1. fleet (1,000 and 5,000 simulated hosts, scraped every 15 s as in production):
   tests/fleet/simkit.py serves each host's real exposition to a real
   Prometheus (the shipped recording and alerting rules, evaluated every
   minute as shipped) that remote-writes to a real VictoriaMetrics. Both
   stores start with the day before already holding the per-minute violation
   counts the range panels read (as the simulated violators record them:
   every tenth host, 3 findings a minute), written with promtool's backfill
   and VictoriaMetrics' import, so the dashboard is timed over its default
   range of 24 hours; Prometheus also starts with the last hour of every
   host's last-seen record, which that rule reads back. After every host is
   up and a settle (the minute counts read 5 minutes of each agent's start
   time: BENCH_FLEET_SETTLE=300 for their full cost), a measured window
   gives: series per host, Prometheus RSS and CPU (per 1,000 hosts),
   VictoriaMetrics' ingestion (vm_rows_inserted_total from its own /metrics)
   and its disk per host-day: bytes per stored sample after a forced merge
   of the month's partition (vm_data_size_bytes / vm_rows of the storage
   parts) times the samples a host sends in a day (the measured ingestion
   per host x 86,400 s); a few minutes of data compress worse than months
   do, so this is on the high side. Whether Prometheus' rule groups keep up:
   the longest evaluation of each group seen during the window (its own
   /metrics, read every 5 s) and the evaluations it skipped. Then every query
   of the fleet and accountability boards over their default 24 hours,
   against VictoriaMetrics and Prometheus, 5 runs each, as Grafana runs them:
   tables and stats as instant queries, charts as range queries at the step
   Grafana gives a full-width panel (1 minute for 24 hours): the median per query.
2. sharding (1,000 hosts): two Prometheus servers, each with its shard's job
   from `dutywatch gen scrape-config --shards 2` (hashmod of the address;
   the simulated hosts sit behind 64 loopback ports, so 64 addresses are
   split, where a real fleet has one per host): disjoint halves, union every host once.
3. policy (1,000 pollers): PolicySource objects as the agent runs them,
   each first looking at a random moment of the first minute (as agents
   start at random times) and then every 60 s, against an HTTPS static
   server with ETag on loopback; each verifies what it gets (the signature
   chain to the root). A new signed bundle is published; the time until 50% /
   99% / all of the pollers run it, and the requests per second at the server.

The machine is shared: the load average is printed with every phase.
Sizes and times can be made smaller with BENCH_FLEET_SIZES=1000,5000,
BENCH_FLEET_SETTLE=30 and BENCH_FLEET_WINDOW=60 (seconds); BENCH_FLEET_PHASES=fleet
runs only some of the phases (shards, fleet, policy).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.central_rule import central_rule
from tests.fleet.simkit import FleetSim, Stack, board_queries, query, run_panel

INTERVAL = 15
SIZES = [int(x) for x in os.environ.get("BENCH_FLEET_SIZES", "1000,5000").split(",") if x]
SETTLE = float(os.environ.get("BENCH_FLEET_SETTLE", "30"))
WINDOW = float(os.environ.get("BENCH_FLEET_WINDOW", "60"))
PHASES = os.environ.get("BENCH_FLEET_PHASES", "shards,fleet,policy").split(",")
RUNS = 5
DAY = 86400
MINUTE_COUNTS = "instance_rule:dutywatch_violations:increase1m"
LAST_SEEN = "instance:dutywatch_host_info:last_seen"
POLLERS = 1000
POLL = 60.0


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def count(base: str, expr: str) -> int:
    try:
        result, _ = query(base, f"count({expr})", 120)
    except (OSError, AssertionError):
        return -1
    return int(float(result[0]["value"][1])) if result else 0


def until(cond: Any, what: str, deadline: float) -> bool:
    """Wait for ``cond`` until the monotonic ``deadline``; False (and a line saying so) if it never held."""
    while not cond():
        if time.monotonic() > deadline:
            print(f"  DEADLINE: {what} not reached")
            return False
        time.sleep(2)
    return True


def vm_metric(base: str, name: str, labels: str = "") -> float:
    """The sum of one metric's samples in VictoriaMetrics' own /metrics (those whose labels start with ``labels``)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{" + labels) or (not labels and line.startswith(name + " ")))


def force_merge(vm: str) -> float | None:
    """Bytes per stored sample once VictoriaMetrics merged this month's parts (None: not within 120 s)."""
    month = time.strftime("%Y_%m", time.gmtime())
    with urllib.request.urlopen(f"{vm}/internal/force_merge?partition_prefix={month}", timeout=30) as r:
        r.read()
    deadline = time.monotonic() + 120
    time.sleep(3)
    while vm_metric(vm, "vm_active_merges") > 0:
        if time.monotonic() > deadline:
            print("  DEADLINE: forced merge not finished")
            return None
        time.sleep(2)
    size = vm_metric(vm, "vm_data_size_bytes", 'type="storage/')
    rows = vm_metric(vm, "vm_rows", 'type="storage/')
    return size / rows if rows else None


def fleet(n: int) -> None:
    print(f"fleet {n} hosts, scrape every {INTERVAL}s ({load()})")
    tmp = Path(tempfile.mkdtemp(prefix="dw-bench-fleet-"))
    sim = FleetSim(n, ports=16)
    sim.start()
    stack = Stack(tmp, sim, interval=f"{INTERVAL}s")
    deadline = time.monotonic() + 300 + n / 20
    try:
        day = yesterday(sim)
        backfill_prometheus(day, sim, tmp)
        stack.start()
        t0 = time.monotonic()
        # On a machine too busy for the simulation to answer every scrape in time, measure what is there.
        up = 'up{job="dutywatch"} == 1'
        if not until(lambda: count(stack.prom, up) == n, "every host up", deadline):
            print(f"  only {count(stack.prom, up)} of {n} hosts up; measured as they are")
        t_up = time.monotonic() - t0
        if not until(lambda: count(stack.vm, "dutywatch_host_info") == n, "every host in VictoriaMetrics", deadline):
            print(f"  only {count(stack.vm, 'dutywatch_host_info')} of {n} hosts in VictoriaMetrics")
        print(f"  every host up in Prometheus after {t_up:.0f}s, in VictoriaMetrics after {time.monotonic() - t0:.0f}s")
        backfill_vm(day, stack.vm)
        print(f"  the day before: {len(day[0])} series x {len(day[1])} minutes of {MINUTE_COUNTS} in both stores")
        time.sleep(SETTLE)
        _, cpu0 = stack.rss_cpu(1)
        _, vcpu0 = stack.rss_cpu(0)
        rows0 = vm_metric(stack.vm, "vm_rows_inserted_total")
        disk0 = stack.disk_bytes()
        scrapes0 = sim.scrapes
        groups0 = rule_groups(stack.prom)
        slowest: dict[str, float] = {}
        w0 = time.monotonic()
        while time.monotonic() - w0 < WINDOW:
            time.sleep(5)
            for g, m in rule_groups(stack.prom).items():
                slowest[g] = max(slowest.get(g, 0.0), m.get("last_duration_seconds", 0.0))
        w = time.monotonic() - w0
        groups1 = rule_groups(stack.prom)
        rss1, cpu1 = stack.rss_cpu(1)
        vrss1, vcpu1 = stack.rss_cpu(0)
        rows1 = vm_metric(stack.vm, "vm_rows_inserted_total")
        disk1 = stack.disk_bytes()
        scrapes1 = sim.scrapes
        per_host, _ = query(stack.prom, 'count({job="dutywatch"}) / count(dutywatch_host_info)', 300)
        samples, _ = query(stack.prom, 'avg(scrape_samples_scraped{job="dutywatch"})', 300)
        k = n / 1000
        print(f"  window {w:.0f}s after a {SETTLE:.0f}s settle ({load()})")
        print(f"  series per host (Prometheus, job dutywatch): {float(per_host[0]['value'][1]):.1f}; "
              f"samples per scrape {float(samples[0]['value'][1]):.1f}")
        print(f"  scrapes served {(scrapes1 - scrapes0) / w:.0f}/s (expected {n / INTERVAL:.0f}/s)")
        print(f"  Prometheus RSS {rss1:.0f} MiB = {rss1 / k:.0f} MiB per 1,000 hosts; CPU "
              f"{(cpu1 - cpu0) / w * 100:.1f}% of a core = {(cpu1 - cpu0) / w * 100 / k:.1f}% per 1,000 hosts")
        print(f"  VictoriaMetrics RSS {vrss1:.0f} MiB, CPU {(vcpu1 - vcpu0) / w * 100:.1f}% of a core; ingestion "
              f"{(rows1 - rows0) / w:.0f} samples/s = {(rows1 - rows0) / w / k:.0f} per 1,000 hosts")
        print(f"  VictoriaMetrics disk {disk0 / 2**20:.1f} MiB before the window, {disk1 / 2**20:.1f} MiB after "
              "(background merges run meanwhile: not a rate)")
        # Whether Prometheus kept up: a group slower than its interval skips evaluations (and the minute
        # counts lose those minutes).
        for g in sorted(groups1):
            m0, m1 = groups0.get(g, {}), groups1[g]

            def delta(key: str, m0: dict[str, float] = m0, m1: dict[str, float] = m1) -> float:
                return m1.get(key, 0.0) - m0.get(key, 0.0)
            print(f"  rule group {g}: longest evaluation in the window {slowest.get(g, 0.0):.2f}s "
                  f"(interval {m1.get('interval_seconds', 0):.0f}s); {delta('iterations_total'):.0f} evaluations, "
                  f"{delta('iterations_missed_total'):.0f} missed, "
                  f"{delta('evaluation_failures_total'):.0f} rule failures "
                  f"in the window; {m1.get('iterations_missed_total', 0):.0f} missed since start")
        per_day = (rows1 - rows0) / w / n * 86400
        merged = force_merge(stack.vm)
        if merged is not None:
            print(f"  after a forced merge: {merged:.2f} bytes per stored sample (vm_data_size_bytes / vm_rows, "
                  f"storage parts) x {per_day / 1e6:.2f} M samples per host-day = {merged * per_day / 2**10:.0f} KiB "
                  f"per host-day")
        queries(stack, n)
    finally:
        stack.stop()
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def rule_groups(prom: str) -> dict[str, dict[str, float]]:
    """Per rule group (by name): Prometheus' own prometheus_rule_group_* and rule failure figures."""
    with urllib.request.urlopen(f"{prom}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = re.match(r'prometheus_rule_(?:group_)?(\w+)\{.*rule_group="[^"]*;([^"]*)"[^}]*\} (\S+)$', line)
        if m:
            key, group, value = m.groups()
            bucket = out.setdefault(group, {})
            bucket[key] = bucket.get(key, 0.0) + float(value)
    return out


def yesterday(sim: FleetSim) -> tuple[list[dict[str, str]], list[int]]:
    """The series and minute stamps (s) of the day before now: the minute counts of every tenth (violating)
    host, 3 BM-NET-001 findings each minute as the simulation makes them."""
    end = int(time.time()) // 60 * 60 - 600  # ten minutes ago: out of every instant query's 5 minute look-back
    stamps = [end - 60 * k for k in range(DAY // 60 - 1, -1, -1)]
    series = [{"__name__": MINUTE_COUNTS, "job": "dutywatch", "instance": f"{host}:9847", "host": host,
               "department": dept, "unit": unit, "rule": "BM-NET-001", "severity": "critical"}
              for i, (host, unit, dept) in enumerate(sim.hosts) if i % 10 == 0]
    return series, stamps


def backfill_prometheus(day: tuple[list[dict[str, str]], list[int]], sim: FleetSim, tmp: Path) -> None:
    """Blocks of the day before in Prometheus' data folder, before it starts (promtool's backfill): the
    minute counts, and the last hour of every host's last-seen record (which its rule reads back an hour)."""
    series, stamps = day
    src = tmp / "day.om"
    with src.open("w", encoding="utf-8") as f:
        f.write(f"# TYPE {MINUTE_COUNTS} gauge\n")
        for labels in series:
            sel = ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
            f.writelines(f"{MINUTE_COUNTS}{{{sel}}} 3 {t}\n" for t in stamps)
        f.write(f"# TYPE {LAST_SEEN} gauge\n")
        for host, unit, dept in sim.hosts:
            sel = (f'job="dutywatch",instance="{host}:9847",host="{host}",unit="{unit}",department="{dept}",'
                   'level="secret",network_zone="intranet"')
            f.writelines(f"{LAST_SEEN}{{{sel}}} {t} {t}\n" for t in stamps[-60:])
        f.write("# EOF\n")
    r = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(src), str(tmp / "tsdb")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    src.unlink()


def backfill_vm(day: tuple[list[dict[str, str]], list[int]], vm: str) -> None:
    """The day before imported into VictoriaMetrics (/api/v1/import, one JSON line per series)."""
    series, stamps = day
    ms = [t * 1000 for t in stamps]
    body = "".join(json.dumps({"metric": labels, "values": [3] * len(ms), "timestamps": ms}) + "\n"
                   for labels in series).encode()
    req = urllib.request.Request(f"{vm}/api/v1/import", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
    until(lambda: count(vm, f"last_over_time({MINUTE_COUNTS}[1d])") >= len(series),
          "the day before in VictoriaMetrics", time.monotonic() + 120)


def queries(stack: Stack, n: int) -> None:
    board = board_queries(DAY)
    ranged = sum(1 for q in board if q.range)
    for name, base in (("VictoriaMetrics", stack.vm), ("Prometheus", stack.prom)):
        deadline = time.monotonic() + 300
        medians: list[tuple[float, str]] = []
        failed: list[str] = []
        for q in board:
            took = []
            label = f"{q.board.split('-')[0]:<14} {'range' if q.range else 'inst.'}  {q.title[:34]}"
            for _ in range(RUNS):
                try:
                    took.append(run_panel(base, q, DAY)[1])
                except (OSError, AssertionError) as exc:  # a timeout (30 s) or an error answer: reported
                    failed.append(f"{label}: {str(exc)[:120]}")
                    break
            else:
                medians.append((statistics.median(took), f"{label}  {' '.join(q.expr.split())[:50]}"))
            if time.monotonic() > deadline:
                print(f"  DEADLINE: {name} queries cut after {len(medians) + len(failed)} of {len(board)}")
                break
        medians.sort(reverse=True)
        over = sum(1 for m, _ in medians if m >= 1.0)
        print(f"  {name} at {n} hosts: {len(medians)} queries of the fleet and accountability boards over 24h "
              f"answered ({ranged} range queries at a {board[0].step} s step, as Grafana runs the charts; the rest "
              f"instant), median of {RUNS} runs each: slowest {medians[0][0] * 1000:.0f} ms, median "
              f"{statistics.median(m for m, _ in medians) * 1000:.0f} ms, {over} at or over 1 s; "
              f"{len(failed)} failed or over 30 s ({load()})", flush=True)
        for m, line in medians:
            print(f"    {m * 1000:7.1f} ms  {line}")
        for line in failed:
            print(f"    FAILED  {line}")


def shards(n: int = 1000) -> None:
    print(f"sharding {n} hosts over 2 Prometheus servers (gen scrape-config --shards 2) ({load()})")
    tmp = Path(tempfile.mkdtemp(prefix="dw-bench-shards-"))
    sim = FleetSim(n, ports=64)
    sim.start()
    stacks: list[Stack] = []
    try:
        r = subprocess.run([sys.executable, "-m", "agent", "gen", "scrape-config", "--hosts", "127.0.0.1:9847",
                            "--shards", "2", "--out-dir", str(tmp / "gen")], capture_output=True, text=True,
                           timeout=120, cwd=Path(__file__).resolve().parents[2])
        assert r.returncode == 0, r.stderr
        for k in range(2):
            doc = yaml.safe_load((tmp / "gen" / f"dutywatch-scrape-{k}-of-2.yml").read_text(encoding="utf-8"))
            job = doc["scrape_configs"][0]
            job.pop("scrape_interval", None)
            job.pop("scheme", None)  # the simulated hosts answer plain HTTP
            for key in ("tls_config", "basic_auth", "authorization"):
                job.pop(key, None)
            d = tmp / f"shard{k}"
            d.mkdir()
            s = Stack(d, sim, interval=f"{INTERVAL}s", job=job, long_term=False)
            s.start()
            stacks.append(s)
        deadline = time.monotonic() + 240
        seen: list[set[str]] = [set(), set()]

        def both_up() -> bool:
            total = 0
            for k, s in enumerate(stacks):
                try:
                    result, _ = query(s.prom, 'up{job="dutywatch"} == 1')
                except (OSError, AssertionError):
                    return False
                seen[k] = {x["metric"]["instance"] for x in result}
                total += len(seen[k])
            return total >= n
        until(both_up, "both shards scraping", deadline)
        time.sleep(INTERVAL)
        both_up()
        every = {h[0] + ":9847" for h in sim.hosts}
        overlap = seen[0] & seen[1]
        union = seen[0] | seen[1]
        ok = not overlap and union == every and len(seen[0]) + len(seen[1]) == n
        print(f"  shard 0 scrapes {len(seen[0])} hosts, shard 1 {len(seen[1])}; in both {len(overlap)}; "
              f"union {len(union)} of {n}, missing {len(every - union)}: "
              f"{'every host exactly once' if ok else 'NOT a partition'}")
    finally:
        for s in stacks:
            s.stop()
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def policy(n: int = POLLERS) -> None:
    from agent.config import PolicyConfig
    from agent.crypto.suite import load_public_pem
    from agent.policy.bundle import verify
    from agent.policy.source import PolicySource
    from agent.policy.store import Decision
    from tests.integration.tlscerts import make_pki

    print(f"policy: {n} pollers, poll every {POLL:.0f}s, HTTPS with ETag on loopback ({load()})")
    tmp = Path(tempfile.mkdtemp(prefix="dw-bench-policy-"))
    repo = Path(__file__).resolve().parents[2]

    def dw(*args: str | Path) -> None:
        r = subprocess.run([sys.executable, "-m", "agent", *map(str, args)], capture_output=True, text=True,
                           cwd=repo, timeout=120)
        assert r.returncode == 0, r.stderr

    dw("policy", "keygen", "--out", tmp / "root.key")
    bundles = []
    for version in (1, 2):
        src = tmp / f"v{version}"
        (src / "rules").mkdir(parents=True)
        (src / "rules" / "central.yaml").write_text(central_rule(f"CT-{version}"), encoding="utf-8")
        dw("policy", "build", "--version", str(version), "--scope", "*", "--rules", src / "rules",
           "--out", src / "bundle.json")
        dw("policy", "sign", src / "bundle.json", "--key", tmp / "root.key")
        bundles.append((src / "bundle.json").read_bytes())
    roots = [load_public_pem((tmp / "root.key.pub").read_bytes())]
    pki = make_pki(tmp / "pki")

    lock = threading.Lock()
    requests: list[tuple[float, int]] = []

    class Server(http.server.BaseHTTPRequestHandler):
        body = bundles[0]

        def do_GET(self) -> None:
            body = Server.body
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            code = 304 if self.headers.get("If-None-Match") == etag else 200
            with lock:
                requests.append((time.monotonic(), code))
            self.send_response(code)
            self.send_header("ETag", etag)
            if code == 200:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if code == 200:
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server.cert, pki.server.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = PolicyConfig(source=f"https://localhost:{srv.server_address[1]}/policy.json", keys=(tmp / "root.key.pub",),
                       every=POLL, ca=pki.ca)
    running: list[int] = [0] * n
    since: list[float] = [0.0] * n
    bad: list[str] = []

    def offer_for(i: int) -> Any:
        def offer(data: bytes, origin: str) -> Decision:
            try:
                v = verify(data, roots)
            except Exception as exc:  # a failed check is a bench failure, reported below
                bad.append(str(exc))
                raise
            if v.version > running[i]:
                running[i], since[i] = v.version, time.monotonic()
            return Decision(True, "applied", f"policy version {v.version}", v)
        return offer

    sources = [PolicySource(cfg, offer_for(i)) for i in range(n)]
    starts = sorted((random.uniform(0, POLL), i) for i in range(n))
    t0 = time.monotonic()
    try:
        for at, i in starts:  # agents come up at random moments of the first minute
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            sources[i].start()
        until(lambda: all(v == 1 for v in running), "every poller on version 1", time.monotonic() + 120)
        first = time.monotonic() - t0
        Server.body = bundles[1]
        published = time.monotonic()
        with lock:
            before = len(requests)
        until(lambda: sum(1 for v in running if v == 2) >= n, "every poller on version 2", published + 360)
        done = time.monotonic()
        times = sorted(since[i] - published for i in range(n) if running[i] == 2)
        with lock:
            after = requests[before:]
        codes = {c: sum(1 for _, x in after if x == c) for c in (200, 304)}
        span = done - published
        print(f"  every poller on version 1 after {first:.0f}s (random starts over {POLL:.0f}s); version 2 "
              f"published ({load()})")
        if times:
            def p(q: float) -> float:
                return times[min(len(times) - 1, int(q * len(times)))]
            print(f"  on version 2: {len(times)} of {n}; p50 {p(0.5):.1f}s, p99 {p(0.99):.1f}s, all "
                  f"{times[-1]:.1f}s after publication (target: 99% within 300s)")
        print(f"  server: {len(after) / span:.1f} requests/s while it spread ({codes[200]} x 200 with the "
              f"{len(bundles[1])} byte bundle, {codes[304]} x 304); {sum(s.errors for s in sources)} fetch errors, "
              f"{len(bad)} bundles failing verification")
    finally:
        for s in sources:
            s._stop.set()
            s._wake.set()
        for s in sources:
            s.stop(5)
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    # A bench stopped with SIGTERM still stops its Prometheus and VictoriaMetrics and removes its folders.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    phases = ([shards] if "shards" in PHASES else []) + ([(lambda n=n: fleet(n)) for n in SIZES]
              if "fleet" in PHASES else []) + ([policy] if "policy" in PHASES else [])
    for phase in phases:
        try:
            phase()
        except Exception as exc:  # one failed phase is printed; the others still run
            import traceback
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"  FAILED: {type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})", flush=True)
    print(json.dumps({"done": True, "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
