"""Enforcement costs: first offending packet to block in force, decision to kernel, nftables update rate.

Runs as root in network namespaces it makes and removes (``dw19b-PID``...); prints figures only.
The permission-checked open is measured from a child process opening a classified file, without and
with the copy guard's process (as the agent runs it) answering the kernel: an unregistered stick
mounted and nothing on it open, then a file on it open (every classified open decided).
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

ROUNDS = 15
RUNS = 5
DECISIONS = 1000

# As uid 1000 on the classified host: connect (the first offence: its SYN leaves in the call), then send UDP
# to the same address every 0.2 ms until the output hook refuses (EPERM): the time from connect() to that is
# the block's delay. The connect does not wait for the handshake (with the kernel's block it never completes).
PROBE = r"""
import socket, sys, time
addr = sys.argv[1]
wall = time.time()
t0 = time.monotonic()
s = socket.socket(); s.setblocking(False)
try:
    s.connect((addr, 8080))
except BlockingIOError:
    pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
deadline = t0 + 5
out = 0  # datagrams that left after connect() returned, before the block
while time.monotonic() < deadline:
    try:
        u.sendto(b"x", (addr, 4500))
    except PermissionError:
        print(f"{(time.monotonic() - t0) * 1000:.2f} {wall:.6f} {out}", flush=True); break
    out += 1
    time.sleep(0.0002)
else:
    print(f"never {wall:.6f} {out}", flush=True)
s.close()
"""


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def decisions_in_namespace() -> None:
    """Child part, inside a namespace: the enforcer in process, libnftables against the real kernel."""
    from types import SimpleNamespace

    from agent.enforce.channel import derive
    from agent.enforce.enforcer import Enforcer
    from agent.enforce.nft import Elements, NftTable
    from agent.enforce.settings import EnforceConfig
    from agent.metrics import Metrics
    from agent.registry import load_registry

    tmp = Path(tempfile.mkdtemp(prefix="dw19-bench-"))
    (tmp / "registry.yaml").write_text(
        "host: {id: h, unit: U, department: D, custodian: zs, level: secret, zone: intranet}\n"
        "units: [{name: U, department: D}]\n"
        "zones: {default: internet, networks: [{name: intranet, cidrs: [10.0.0.0/8]}]}\n", encoding="utf-8")
    reg = load_registry(tmp / "registry.yaml")
    cfg = EnforceConfig(mode="enforce", ttl=600.0, table=f"dw19b{os.getpid()}")
    channel, _ = derive(SimpleNamespace(enforce=cfg, path="x", forward_syslog=None, listen="0.0.0.0:9847"), reg,
                        tmp / "none")
    e = Enforcer(cfg, channel, state_dir=tmp / "state", host="h", custodian="zs", unit="U",
                 record=lambda r: None, metrics=Metrics("b", process_metrics=False))
    e.start()
    base = int(ipaddress.IPv4Address("203.0.113.0"))
    for n in (0, 100, 1000):
        # ``n`` blocks already in force, then time the next decision.
        while len(e.active) < n:
            ip = str(ipaddress.IPv4Address(base + len(e.active) + 1 + 65536))
            e.put(_finding(ip))
        e.latencies.clear()
        t0 = time.perf_counter()
        for i in range(50):
            e.put(_finding(str(ipaddress.IPv4Address(base + 200000 + n * 100 + i))))
        dt = time.perf_counter() - t0
        lat = [x * 1000 for x in e.latencies]
        print(f"block finding to element in the kernel with {n:>4} blocks in force: p50 {statistics.median(lat):6.2f} "
              f"ms  p99 {pct(lat, 0.99):6.2f} ms; {50 / dt:,.0f} decisions/s with the state file and record")
    table = NftTable(cfg.table)
    for size in (10, 1000, 10000):
        el = Elements()
        for i in range(size):
            el.add("dest", ipaddress.ip_network(ipaddress.IPv4Address(base + 300000 + i)), 600)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            table.apply(el)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"nftables rebuild of the sets with {size:>5} elements: {med * 1000:8.2f} ms "
              f"({size / med:,.0f} elements/s, one atomic transaction)")
    e.shutdown()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


def _finding(ip: str) -> dict[str, object]:
    return {"type": "finding", "time": time.time(), "host": "h", "rule": "B", "severity": "high",
            "action": "block", "accountable": {"operator": "x"},
            "event": {"net": {"remote_ip": ip, "remote_zone": "internet"}},
            "enforce": {"kind": "network", "scope": "destination", "ttl": None}}


def end_to_end(by: str) -> None:
    """The real agent in a classified host's namespace: first packet to block in force, over ROUNDS addresses,
    with the reactive block made by the kernel (``by="kernel"``) or by the agent after its rule judged."""
    from tests.integration import test_enforce_network as t
    from tests.integration.netns import _end, _line

    before = t._routes()
    tag = os.getpid() % 100000
    host, inet_ns, intra_ns = f"dw19bh-{tag}", f"dw19bn-{tag}", f"dw19bi-{tag}"
    links = [(f"dw19ba{tag}", f"dw19bb{tag}", inet_ns), (f"dw19bc{tag}", f"dw19bd{tag}", intra_ns)]
    inet = [f"198.51.100.{33 + i}" for i in range(ROUNDS)]
    server = None
    agent = None
    try:
        for ns in (host, inet_ns, intra_ns):
            t._ip("netns", "add", ns)
            t._ip("-n", ns, "link", "set", "lo", "up")
        for a, b, peer in links:
            t._ip("link", "add", a, "type", "veth", "peer", "name", b)
            t._ip("link", "set", a, "netns", host)
            t._ip("link", "set", b, "netns", peer)
            t._ip("-n", host, "link", "set", a, "up")
            t._ip("-n", peer, "link", "set", b, "up")
        t._ip("-n", host, "addr", "add", "198.51.100.62/27", "dev", links[0][0])
        for a in inet:
            t._ip("-n", inet_ns, "addr", "add", f"{a}/27", "dev", links[0][1])
        t._ip("-n", host, "addr", "add", "198.51.100.1/29", "dev", links[1][0])
        t._ip("-n", intra_ns, "addr", "add", "198.51.100.2/29", "dev", links[1][1])
        server = subprocess.Popen(["ip", "netns", "exec", inet_ns, sys.executable, "-c", t.SERVER, *inet],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert _line(server, 15) == "ready"
        net = t.Net(host, inet_ns, intra_ns, "198.51.100.1", "198.51.100.62", inet[0], inet[1], "::1",
                    "198.51.100.2", server)
        work = Path(tempfile.mkdtemp(prefix="dw19-bench-"))
        agent = t.HostAgent(net, work, "  mode: enforce\n", ttl="10m")
        agent.config.write_text(agent.config.read_text().replace(
            "network: {resolvers: []}", f"network: {{resolvers: [], reactive: {by}}}"), encoding="utf-8")
        agent.start()
        delays, never, started, leaked = [], 0, {}, []
        for a in inet:
            out = t._ns_run(host, "/usr/bin/python3", "-c", PROBE, a, user=1000).split()
            started[a] = float(out[1])
            leaked.append(int(out[2]))
            if out[0] == "never":
                never += 1
            else:
                delays.append(float(out[0]))
        # The agent's own account of each block: the finding's time (the sniffer saw the packet and found
        # its process) and in_force_at (the kernel held the element), against the probe's connect().
        seen, held = [], []
        text = subprocess.run([sys.executable, "-m", "agent", "events", "--config", str(agent.config), "--type",
                               "all", "--format", "json"], capture_output=True, text=True, cwd=REPO, timeout=120).stdout
        for line in text.splitlines():
            rec = json.loads(line) if line.strip() else {}
            d = rec.get("detail") or {}
            if rec.get("kind") == "enforce.action" and d.get("target") in started and d.get("in_force_at"):
                seen.append((d["finding"]["time"] - started[d["target"]]) * 1000)
                held.append((d["in_force_at"] - started[d["target"]]) * 1000)
        if delays:
            how = "the table's own rule" if by == "kernel" else "sniffer to agent to nftables"
            print(f"first offending packet to block in force (reactive: {by}, {how}, {len(delays)} of "
                  f"{ROUNDS} rounds): p50 {statistics.median(delays):.1f} ms  p99 {pct(delays, 0.99):.1f} ms  "
                  f"max {max(delays):.1f} ms as the offender saw it (from before its connect() call, its own wake-ups "
                  f"included); never blocked within 5 s: {never}; already blocked when connect() returned in "
                  f"{sum(1 for n in leaked if n == 0)} of {len(leaked)} rounds (datagrams out after it: median "
                  f"{statistics.median(leaked):g}, max {max(leaked)})")
        else:
            print(f"first offending packet to block in force (reactive: {by}): never blocked in {ROUNDS} rounds")
        what = "the element in the kernel (in_force_at)" if by == "agent" else \
            "the agent adopting the kernel's block (in_force_at: when it read the log)"
        if held:
            print(f"  by the agent's journal ({len(held)} blocks): connect() to the sniffer's event p50 "
                  f"{statistics.median(seen):.1f} ms p99 {pct(seen, 0.99):.1f} ms; connect() to {what} p50 "
                  f"{statistics.median(held):.1f} ms p99 {pct(held, 0.99):.1f} ms max {max(held):.1f} ms")
    finally:
        if agent is not None and agent.proc is not None:
            agent.stop()
        if agent is not None:
            import shutil
            shutil.rmtree(agent.tmp, ignore_errors=True)
        if server is not None:
            _end(server)
        for ns in (host, inet_ns, intra_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    assert t._defaults(t._routes()) == t._defaults(before), "routes changed"


OPENER = r"""
import statistics, sys, time
path, n = sys.argv[1], int(sys.argv[2])
lat = []
for _ in range(n):
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        pass
    lat.append((time.perf_counter() - t0) * 1e6)
lat.sort()
print(f"{statistics.median(lat):.1f} {lat[int(0.99 * (n - 1))]:.1f}")
"""


def permission_checked_open() -> None:
    """Added latency of a classified open with the copy guard: with an unregistered stick mounted and nothing on
    it open (the open is only reported), and with a file on it open (every classified open waits for a decision)."""
    import json as _json
    import shutil

    from agent.enforce.copyproc import CopyGuardProcess
    from agent.registry import load_registry
    from tests.integration.mediakit import Stick

    top = Path(tempfile.mkdtemp(prefix="dw19-bench-copy-"))
    assets = top / "classified"
    assets.mkdir()
    doc = assets / "plan.txt"
    doc.write_text("x" * 4096)
    (top / "media").mkdir()
    reg_path = top / "registry.yaml"
    reg_path.write_text(_json.dumps({
        "host": {"id": "h", "unit": "U", "department": "D", "custodian": "zs", "level": "secret"},
        "units": [{"name": "U", "department": "D"}],
        "assets": [{"path": f"{assets}/**", "level": "secret", "unit": "U"}]}), encoding="utf-8")
    reg = load_registry(reg_path)
    stick = Stick.make(top / "s.img", "ext4")
    labels = ("without", "idle", "armed", "armed_normal")
    try:
        stick.mount(top / "media" / "s")
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in labels}
        decided = {k: 0 for k in labels}
        inside: dict[str, list[float]] = {k: [] for k in labels}  # the guard's own time per decision (median)
        priority = {k: "" for k in labels}
        for _ in range(RUNS):
            for label in labels:
                guard = held = None
                if label != "without":  # as the agent runs it: a process of its own
                    guard = CopyGuardProcess(reg, [str(top / "media")], Path("/sys"), lambda d, op: None,
                                             realtime=label != "armed_normal")
                    guard.start()
                if label.startswith("armed"):  # another process writes a file on the stick the whole time
                    held = subprocess.Popen(["sh", "-c", f"exec 3>{top / 'media' / 's' / 'w.txt'}; echo o; "
                                             "exec sleep 600"], stdout=subprocess.PIPE, text=True)
                    assert held.stdout is not None and held.stdout.readline().strip() == "o"
                    assert guard is not None and guard.stats()["armed"]
                out = subprocess.run([sys.executable, "-c", OPENER, str(doc), "3000"], capture_output=True,
                                     text=True, check=True).stdout.split()
                runs[label].append((float(out[0]), float(out[1])))
                if held is not None:
                    held.kill()
                    held.wait()
                if guard is not None:
                    st = guard.stats()
                    decided[label] += st["decided"]
                    priority[label] = st.get("priority", "")
                    if st.get("decision_us") is not None:
                        inside[label].append(st["decision_us"])
                    guard.stop()
        med = {k: (statistics.median(x[0] for x in runs[k]), statistics.median(x[1] for x in runs[k]))
               for k in labels}
        w50, w99 = med["without"]
        for label, what in (("idle", "an unregistered stick mounted, nothing on it open"),
                            ("armed", "a file on the unregistered stick open, every open decided"),
                            ("armed_normal", "the same, the guard at normal priority")):
            g50, g99 = med[label]
            own = f"; the guard's own work p50 {statistics.median(inside[label]):.1f} us" if inside[label] else ""
            print(f"open of a classified file, {what}: without the guard p50 {w50:.1f} us p99 {w99:.1f} us; with "
                  f"it p50 {g50:.1f} us p99 {g99:.1f} us; added p50 {g50 - w50:.1f} us p99 {g99 - w99:.1f} us "
                  f"({decided[label] // RUNS} decisions a run, priority {priority[label] or 'n/a'}{own}; median of "
                  f"{RUNS} runs of 3000 opens)")
    finally:
        stick.release()
        shutil.rmtree(top, ignore_errors=True)


def main() -> None:
    if os.geteuid() != 0:
        print("bench_enforce: needs root (network namespaces, nftables); skipped")
        return
    import logging
    logging.disable(logging.WARNING)  # a line per decision would swamp the figures
    if len(sys.argv) > 1 and sys.argv[1] == "--in-namespace":
        decisions_in_namespace()
        return
    load = os.getloadavg()[0]
    print(f"load average at start {load:.1f}", flush=True)
    ns = f"dw19bd-{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--in-namespace"], check=True,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    only = os.environ.get("BENCH_ENFORCE_ONLY", "")  # "open" or "block": one part (an A/B run)
    if only in ("", "open"):
        permission_checked_open()
    if only in ("", "block"):
        end_to_end("kernel")
        end_to_end("agent")
    print(f"load average at start {load:.1f} (a shared machine: compare ratios, not absolute figures)")


if __name__ == "__main__":
    main()
