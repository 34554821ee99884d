"""The whole pipeline at full speed: attribution, engine, journal and metrics.

Runs the real Agent (no collectors but an injector) in a child process and
prints: events/s and findings/s with ~10% of events becoming findings, the
RSS of the idle agent and after a 1,000,000-event storm, and the journal's
catch-up, with the journal in each crypto suite (``intl``: SHA-256 and
Ed25519; ``gm``: SM3 and SM2; target above 50,000 events/s in both), then
the journal's own append and verify rates in gm beside intl.
Usage: python tests/bench/bench_pipeline.py [--events N] [--crypto intl|gm|both] [--runs N] [--storm-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from agent.daemon.agent import Agent
from agent.events import Event, File, Net, Process
from collectors.base import Availability, Health

N = int(sys.argv[3])

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

class Injector:
    name = "inject"
    def __init__(self):
        self.health = Health(mode="inject")
        self.go = threading.Event()
        self.offered = self.dropped = 0
    def available(self):
        return Availability("inject")
    def run(self, emit, stop):
        self.health.up = True
        self.go.wait()
        pool = []
        for i in range(1000):
            p = Process(pid=1000 + i, name="cat", exe="/usr/bin/cat", uid=1000, user="zhangsan", loginuid=1000)
            if i % 10 == 0:   # 10%: a secret asset read -> DB-AUD-003 audit finding
                pool.append(Event("file.open", None, "inject", p, file=File(path=f"/srv/classified/d{i}.txt")))
            elif i % 2:
                pool.append(Event("process.exec", None, "inject", p))
            else:
                net = Net(proto="tcp", remote_ip=f"10.1.{i % 250}.1", remote_port=443)
                pool.append(Event("net.connect", None, "inject", p, net=net))
        depth, cap = agent.pipeline.depth, agent.pipeline.capacity - 64
        for k in range(N):
            while depth() >= cap:  # full speed, but with back-pressure: measure throughput, not drops
                time.sleep(0.0002)
            if not emit(pool[k % 1000]):
                self.dropped += 1
            self.offered += 1
            if k % 4096 == 0 and stop.is_set():
                return
        stop.wait()

inj = Injector()
agent = Agent(Path(sys.argv[2]), collectors=[inj])
t = threading.Thread(target=agent.run, kwargs={"install_signals": False}, daemon=True)
t.start()
time.sleep(5)
idle = rss_mb()
def thread_cpu():  # CPU seconds per OS thread name (the agent names its threads)
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            st = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        name, f = st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out

seq0 = agent.writer.durable_seq
cpu0, threads0 = time.process_time(), thread_cpu()
t0 = time.perf_counter()
inj.go.set()
while agent.pipeline.processed + agent.pipeline.own < N - inj.dropped and time.perf_counter() - t0 < 600:
    time.sleep(0.05)
t_events = time.perf_counter() - t0
cpu = time.process_time() - cpu0
threads = {k: round(v - threads0.get(k, 0.0), 2) for k, v in thread_cpu().items()}
findings = agent.pipeline.findings
# Every finding is journaled, but for those folded into an earlier one's count (with folding on).
while (agent.writer.durable_seq - seq0 < findings - agent.folder.folded
       and time.perf_counter() - t0 < 900):
    time.sleep(0.05)
t_journal = time.perf_counter() - t0
after = rss_mb()
agent.stop(); t.join(120)
print(json.dumps({"idle": idle, "after": after, "events": agent.pipeline.processed + agent.pipeline.own,
                  "dropped": inj.dropped, "findings": findings, "folded": agent.folder.folded,
                  "journaled": agent.writer.durable_seq - seq0, "t_events": t_events, "t_journal": t_journal,
                  "cpu": cpu, "threads": threads,
                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--crypto", choices=("intl", "gm", "both"), default="both",
                    help="the journal's crypto suite for the storm (default: both, intl first)")
    ap.add_argument("--runs", type=int, default=3, help="storms per suite; the median is printed (default 3)")
    ap.add_argument("--fold-storm", action=argparse.BooleanOptionalAction, default=True,
                    help="also one gm storm with folding on, as deployed (default: yes)")
    ap.add_argument("--storm-only", action="store_true", help="only the storms")
    ap.add_argument("--journal-records", type=int, default=20_000,
                    help="records for the journal append/verify rates per suite (0: skip)")
    ap.add_argument("--evidence-only", action="store_true", help="only the witness, folding and retention figures")
    args = ap.parse_args()
    if args.latency_only:
        latency()
        return
    if args.evidence_only:
        evidence()
        return
    for crypto in (("intl", "gm") if args.crypto == "both" else (args.crypto,)):
        storm(args.events, crypto, args.runs)
    if args.fold_storm:
        storm(args.events, "gm", 1, fold=True)
    if args.storm_only:
        return
    if args.journal_records:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_journal import finding, print_suites

        print_suites([finding(i) for i in range(args.journal_records)], 3, prefix="pipeline journal")
    latency()
    idle_cpu(args.idle_seconds)
    evidence()


def storm(events: int, crypto: str, runs: int = 3, fold: bool = False) -> None:
    """Inject ``events`` into an agent whose journal uses suite ``crypto``; print throughput and RSS.

    Folding is off unless ``fold`` (every finding is then its own journal record: the journal's
    worst case). Prints the median of ``runs`` by events/s, with every run's figure.
    """
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "agent.yaml"
            window = "300s" if fold else "0"
            cfg.write_text(f"registry: {REPO / 'agent/data/demo-registry.yaml'}\nstate_dir: {tmp}/state\n"
                           f"listen: 127.0.0.1:0\nqueue_size: 65536\n"
                           f"journal: {{crypto: {crypto}, fold_window: {window}}}\n"
                           "assess: {enabled: false}\n",
                           encoding="utf-8")
            out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(cfg), str(events)],
                                 capture_output=True, text=True, check=True, timeout=1800)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    results.sort(key=lambda r: r["events"] / r["t_events"])
    r = results[len(results) // 2]
    each = ", ".join(f"{x['events'] / x['t_events']:,.0f}" for x in results)
    per_cpu = ", ".join(f"{x['events'] / x['cpu']:,.0f}" for x in results)
    p = f"pipeline [{crypto}{', folding on' if fold else ''}]"
    print(f"{p}: {r['events']:,} events in {r['t_events']:.1f} s = {r['events'] / r['t_events']:,.0f} events/s "
          f"(target 50,000; median of {runs}: {each}), {r['dropped']:,} dropped (injector waits on a full queue)")
    print(f"{p}: {r['events'] / r['cpu']:,.0f} events per CPU second of the whole agent process "
          f"({r['cpu']:.1f} s; runs {per_cpu}); CPU s by thread: "
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["threads"].items()) if v >= 0.05))
    print(f"{p}: {r['findings']:,} findings = {r['findings'] / r['t_events']:,.0f} findings/s evaluated; "
          f"{r['journaled']:,} records journaled ({r['folded']:,} folded), journal durable after "
          f"{r['t_journal']:.1f} s = {r['findings'] / r['t_journal']:,.0f} findings/s")
    print(f"{p} RSS: idle {r['idle']:.0f} MB (target < 80), after the storm {r['after']:.0f} MB "
          f"({r['after'] / r['idle']:.2f}x idle, target < 2x), peak {r['maxrss']:.0f} MB")


def evidence() -> None:
    """The figures of the journal's protection: witness, folding, retention, the package owner lookup."""
    witness_cost()
    folding_bytes()
    package_owner_cost()
    retention_scan()


def package_owner_cost(n: int = 20000) -> None:
    """process.package: the first lookup of a program (a search of the dpkg database) and every later one."""
    import os
    import statistics
    import time

    from agent.packages import PackageOwners
    info = Path("/var/lib/dpkg/info")
    if not (info / "coreutils.list").exists():
        print("package owner: skipped (no dpkg database)")
        return
    lists = list(info.glob("*.list"))
    size = sum(p.stat().st_size for p in lists)
    child = subprocess.Popen(["/bin/sleep", "60"])
    try:
        exe = os.readlink(f"/proc/{child.pid}/exe")
        first = []
        for _ in range(5):
            o = PackageOwners()
            t0 = time.perf_counter()
            assert o(exe, child.pid) == "coreutils"
            first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n):
            o(exe, child.pid)
        per = (time.perf_counter() - t0) / n
    finally:
        child.kill()
        child.wait()
    print(f"package owner: first lookup of a program {statistics.median(first) * 1e3:.1f} ms (median of 5; "
          f"{len(lists)} dpkg lists, {size / 1e6:.1f} MB, searched once per program and ten minutes), then "
          f"{per * 1e6:.1f} us per file event (two stats, cached answer)")


def witness_cost(n: int = 2000) -> None:
    """Cost of witnessing one checkpoint head in a real (namespaced) systemd-journald, beside signing it."""
    import os
    import shutil
    import statistics
    import time

    from agent.journal.store import Journal
    from agent.journal.witness import JournaldWitness
    journald = Path("/lib/systemd/systemd-journald")
    if os.geteuid() != 0 or not journald.exists():
        print("witness: skipped (needs root and systemd-journald)")
        return
    ns = f"dw-bench-{os.urandom(3).hex()}"
    proc = subprocess.Popen([str(journald), ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        w = JournaldWitness(ns)
        deadline = time.monotonic() + 20
        while not w.available() and time.monotonic() < deadline:
            time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            j = Journal(Path(tmp), host="bench", checkpoint_every=10**9)
            signs, sends = [], []
            for i in range(n):
                j.append({"type": "lifecycle", "time": float(i), "host": "bench", "kind": "bench"})
                t0 = time.perf_counter()
                cp = j.checkpoint()
                t1 = time.perf_counter()
                assert cp is not None
                w.send("checkpoint", {**cp.fields(), "signature": cp.signature}, host="bench", key=j.fingerprint,
                       journal=str(j.path))
                sends.append(time.perf_counter() - t1)
                signs.append(t1 - t0)
            j.close()
            t0 = time.perf_counter()
            got = w.heads(j.fingerprint, last=1)
            read = time.perf_counter() - t0
        ms, mw = statistics.median(signs), statistics.median(sends)
        print(f"witness: {mw * 1e6:,.0f} us per checkpoint head sent to journald (median of {n}), beside "
              f"{ms * 1e6:,.0f} us to sign and store the checkpoint ({mw / ms:.2f}x); reading the last head back "
              f"at start {read * 1e3:.0f} ms ({'found' if got and got[-1].seq == n else 'NOT found'})")
    finally:
        proc.terminate()
        proc.wait(20)
        machine = Path("/etc/machine-id").read_text().strip()
        for d in (f"/var/log/journal/{machine}.{ns}", f"/run/log/journal/{machine}.{ns}", f"/run/systemd/journal.{ns}"):
            shutil.rmtree(d, ignore_errors=True)


def noisy_findings(minutes: int, per_minute: int) -> list[dict[str, object]]:
    """ZR-001 findings as a noisy host makes them: root daemons with no login identity, 20 programs."""
    from agent.daemon.agent import load_all
    from agent.events import Event, Process
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "agent.yaml"
        cfg.write_text(f"registry: {REPO / 'agent/data/demo-registry.yaml'}\nstate_dir: {tmp}\n", encoding="utf-8")
        stage = load_all(cfg).stage
    out: list[dict[str, object]] = []
    t0 = 1_700_000_000.0
    step = 60.0 / per_minute
    for i in range(minutes * per_minute):
        exe = f"/usr/lib/daemons/worker-{i % 20}"
        e = Event("process.exec", t0 + i * step, "process",
                  Process(pid=20000 + i, name=f"worker-{i % 20}", exe=exe, cmdline=f"{exe} --run {i}", uid=4242))
        for f in stage.engine.evaluate(stage.attribute(e)):
            out.append(f.to_record())
    return out


def folding_bytes(minutes: int = 30, per_minute: int = 1000) -> None:
    """Journal bytes per finding on a noisy host, with and without folding."""
    from agent.daemon.folding import Folder
    from agent.journal.store import Journal
    records = noisy_findings(minutes, per_minute)
    sizes = {}
    for window in (0.0, 300.0):
        with tempfile.TemporaryDirectory() as tmp:
            j = Journal(Path(tmp), host="bench", checkpoint_every=1000)
            batch: list[dict[str, object]] = []
            folder = Folder(batch.append, window)
            last_tick = 0.0
            for r in records:
                folder.put(r)
                t = float(r["time"])  # type: ignore[arg-type]
                if t - last_tick >= 1.0:
                    folder.tick(t)
                    last_tick = t
                if len(batch) >= 500:
                    j.append_many(batch)
                    batch.clear()
            folder.flush()
            if batch:
                j.append_many(batch)
            written = j.stats().records
            j.close()
            db = Path(tmp) / "journal.db"
            sqlite3_size = db.stat().st_size + (Path(f"{db}-wal").stat().st_size if Path(f"{db}-wal").exists() else 0)
            sizes[window] = (written, sqlite3_size)
    (n0, b0), (n1, b1) = sizes[0.0], sizes[300.0]
    print(f"folding: noisy host, {len(records):,} ZR-001 findings in {minutes} min from 20 daemons: "
          f"{b0 / len(records):,.0f} journal bytes per finding unfolded ({n0:,} records, {b0 / 1e6:.1f} MB), "
          f"{b1 / len(records):,.1f} folded in 5-minute windows ({n1:,} records, {b1 / 1e6:.2f} MB): "
          f"{b0 / max(b1, 1):,.0f}x less")


def retention_scan(target_gb: float = 2.0, budget_s: float = 600.0) -> None:
    """Retention's scan (where to cut, by age and size) on a journal of about 2 GB, made in bulk SQL."""
    import sqlite3
    import time

    from agent.journal import retention
    from agent.journal.store import Journal
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        Journal(Path(tmp), host="bench").close()  # the real schema and meta
        db = Path(tmp) / "journal.db"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")
        body = "x" * 900  # about the size of a finding record
        now = time.time()
        rows, chunk = 0, 100_000
        t0 = time.monotonic()
        target = int(target_gb * (1 << 30))
        while db.stat().st_size < target and time.monotonic() - t0 < budget_s:
            conn.execute("BEGIN")
            # A record every 20 s over the last ~350 days (2 GB is about 1.5M records), so the 180-day cut
            # falls in the middle; every 10th an alert, the rest info audit records.
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO records(seq, time, type, host, rule, severity, action, unit, operator, body, prev, hash) "
                "SELECT i, ? + i * 20.0, 'finding', 'bench', CASE WHEN i % 10 = 0 THEN 'DB-MAL-001' ELSE 'ZR-001' END,"
                " CASE WHEN i % 10 = 0 THEN 'high' ELSE 'info' END, CASE WHEN i % 10 = 0 THEN 'alert' ELSE 'audit' END,"
                " 'unit', 'op', ? || i, printf('%064d', i - 1), printf('%064d', i) FROM n",
                (rows + 1, rows + chunk, now - 1_500_000 * 20.0, body))
            conn.execute("COMMIT")
            rows += chunk
        made = time.monotonic() - t0
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.stat().st_size
        times = []
        for _ in range(3):
            t1 = time.monotonic()
            cut = retention.plan(conn, 1, rows, now, 180, 2048)
            times.append(time.monotonic() - t1)
        conn.close()
    times.sort()
    print(f"retention: scan of a {size / (1 << 30):.2f} GB journal ({rows:,} records, made in {made:.0f} s) took "
          f"{times[1]:.2f} s (median of 3) to decide the cut (keep from seq {cut.keep_from if cut else '-'}, "
          f"by {cut.reason if cut else '-'})")


def latency(samples: int = 100) -> None:
    """Exec-to-counter latency: a program run from /tmp until findings_total{rule=DB-MAL-001} moves."""
    import os
    import shutil
    import statistics
    import time
    import urllib.request

    sys.path.insert(0, str(REPO))
    from tests.integration.agent_harness import AgentProcess

    if os.geteuid() != 0:
        print("pipeline latency: skipped (needs root for the netlink process connector)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        off = "{enabled: false}"
        agent = AgentProcess(Path(tmp), collectors=f"  process: {{enabled: true, mode: netlink}}\n"
                                                   f"  network: {off}\n  files: {off}\n  media: {off}\n  host: {off}\n")
        agent.start()
        exe = Path(tmp) / "dw-bench-sleep"
        shutil.copy("/bin/sleep", exe)
        url = f"http://127.0.0.1:{agent.port}/metrics"

        def count() -> float:
            with urllib.request.urlopen(url, timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith('dutywatch_findings_total{') and 'rule="DB-MAL-001"' in line:
                        return float(line.rsplit(" ", 1)[1])
            return 0.0

        lat = []
        try:
            for _ in range(samples):
                before = count()
                t0 = time.perf_counter()
                p = subprocess.Popen([str(exe), "0.2"])
                while count() <= before and time.perf_counter() - t0 < 5:
                    pass
                lat.append((time.perf_counter() - t0) * 1000)
                p.wait()
        finally:
            agent.stop()
        q = statistics.quantiles(lat, n=100)
        print(f"pipeline detection latency (exec from /tmp -> findings_total moves, {samples} runs): "
              f"p50 {statistics.median(lat):.1f} ms, p99 {q[98]:.1f} ms (includes the HTTP scrape loop)")


def idle_cpu(seconds: float) -> None:
    """CPU of the whole agent, every collector on, while the host is quiet."""
    import os
    import time

    sys.path.insert(0, str(REPO))
    from tests.integration.agent_harness import AgentProcess

    with tempfile.TemporaryDirectory() as tmp:
        on = "{enabled: true}"
        agent = AgentProcess(Path(tmp), collectors=f"  process: {on}\n  network: {on}\n  files: {on}\n"
                                                   f"  media: {on}\n  host: {on}\n")
        agent.start()
        assert agent.proc is not None
        hz = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{agent.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()  # type: ignore[union-attr]
            return (int(fields[11]) + int(fields[12])) / hz

        time.sleep(5)
        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        used, wall = cpu() - c0, time.monotonic() - t0
        rss = next(ln for ln in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines()
               if ln.startswith("VmRSS")).split()[1]
        modes = {k: v for k, v in agent.scrape().items() if k.startswith("dutywatch_collector_up") and v == 1}
        agent.stop()
    print(f"agent idle CPU, all collectors on: {100 * used / wall:.2f}% of one core over {wall:.0f} s "
          f"(target < 1%), RSS {int(rss) / 1024:.0f} MB; {', '.join(sorted(m.split('{')[1][:-1] for m in modes))}")


if __name__ == "__main__":
    if "--idle-seconds" in sys.argv:
        idle_cpu(float(sys.argv[sys.argv.index("--idle-seconds") + 1]))
    else:
        main()
