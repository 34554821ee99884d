"""Cutting 违规外联 for real: the agent's nftables table in a classified host's network namespace.

Three namespaces made here (``dw19h/n/i-PID``) joined by veth pairs: the
classified host, where the agent runs; an "Internet" one with two addresses
(198.51.100.0/24 and 2001:db8::/32); an intranet one with a Prometheus-like
scraper and a syslog receiver. No route or rule is added outside them, and
``ip route`` of this machine is the same after. The person at the keyboard
is uid 1000 (张三); every attempt below is made as that uid.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_harness import REGISTRY, REPO
from tests.integration.netns import _end, _line

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ip netns, veth, nftables, AF_PACKET"),
    pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode != 0,
                       reason="nftables is not installed (.ci/deps installs it)"),
]
USER = 1000
OFF = "  {name}: {{enabled: false}}\n"
COLLECTORS = "".join(OFF.format(name=n) for n in ("audit", "process", "files", "media", "host")) + \
    "  network: {enabled: true, mode: sniff}\n"
BLOCK_RULE = """\
pack: local
rules:
  - id: BM-NET-001
    override: {{action: block, enforce: {{kind: network, scope: {scope}, ttl: {ttl}}}}}
"""
SERVER = r"""
import socket, sys, threading
count = {}
lock = threading.Lock()
def hold(c):
    c.settimeout(20)
    try:
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()
def serve(s, key):
    while True:
        c, _ = s.accept()
        with lock:
            count[key] = count.get(key, 0) + 1
        threading.Thread(target=hold, args=(c,), daemon=True).start()
socks = []
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, 8080)); s.listen(1024)
    threading.Thread(target=serve, args=(s, a), daemon=True).start()
    u = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((a, 4500)); socks.append(u)
    def udp(u=u, a=a):
        while True:
            u.recv(2048)
            with lock:
                count["udp " + a] = count.get("udp " + a, 0) + 1
    threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    with lock:
        print(json.dumps(count) if False else repr(count), flush=True)
"""
# Intranet side: a syslog receiver counting frames, and a scraper that fetches /metrics every 0.1 s.
INTRANET = r"""
import socket, sys, threading, time, urllib.request
syslog_ip, target = sys.argv[1], sys.argv[2]
got = {"syslog": b"", "scrape_ok": 0, "scrape_fail": 0}
lock = threading.Lock()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((syslog_ip, 6514)); srv.listen(8)
web = socket.socket(); web.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
web.bind((syslog_ip, 8080)); web.listen(64)
def web_accept():
    while True:
        c, _ = web.accept()
        c.close()
threading.Thread(target=web_accept, daemon=True).start()
def conn(c):
    while True:
        b = c.recv(65536)
        if not b:
            return
        with lock:
            got["syslog"] += b
def accept():
    while True:
        c, _ = srv.accept()
        threading.Thread(target=conn, args=(c,), daemon=True).start()
def scrape():
    while True:
        try:
            with urllib.request.urlopen(f"http://{target}/metrics", timeout=1) as r:
                r.read()
            with lock:
                got["scrape_ok"] += 1
        except OSError:
            with lock:
                got["scrape_fail"] += 1
        time.sleep(0.1)
threading.Thread(target=accept, daemon=True).start()
threading.Thread(target=scrape, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    with lock:
        if line.startswith("metrics"):
            try:
                with urllib.request.urlopen(f"http://{target}/metrics", timeout=3) as r:
                    body = r.read().decode()
            except OSError as exc:
                body = f"error {exc}"
            print(repr({"metrics": body}), flush=True)
        else:
            print(repr({"syslog": got["syslog"].decode(errors="replace"), "scrape_ok": got["scrape_ok"],
                        "scrape_fail": got["scrape_fail"]}), flush=True)
"""
# Attempts from the classified host: one connection, a burst of N with a deadline, and the ways around.
CLIENT = r"""
import errno, select, socket, sys, time
mode, addr = sys.argv[1], sys.argv[2]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
hold = 0.5  # a connection lives a moment, as a real one does: long enough to be tied to its process
def one(src=None, timeout=1.0):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if src:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(src)
    s.settimeout(timeout)
    try:
        s.connect((addr, 8080)); s.sendall(b"x"); time.sleep(hold); return "connected"
    except OSError as exc:
        return f"failed {exc.__class__.__name__}"
    finally:
        s.close()
if mode == "one":
    print(one(), flush=True)
elif mode == "from-port":
    print(one((sys.argv[3], int(sys.argv[4]))), flush=True)
elif mode == "udp":
    u = socket.socket(fam, socket.SOCK_DGRAM)
    refused = 0
    for _ in range(20):
        try:
            u.sendto(b"secret", (addr, 4500))
        except PermissionError:  # a local drop in the output hook says EPERM to the sender
            refused += 1
    print(f"sent 20, {refused} refused", flush=True)
elif mode == "burst":
    n, window = int(sys.argv[3]), float(sys.argv[4])
    socks, done = [], 0
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_STREAM); s.setblocking(False)
        try:
            s.connect((addr, 8080))
        except BlockingIOError:
            pass
        except OSError:
            s.close(); continue
        socks.append(s)
    pending = list(socks)
    while pending and time.monotonic() - t0 < window:
        _, w, _ = select.select([], pending, [], 0.05)
        for s in w:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done += 1
            pending.remove(s)
    print(f"{done} {len(socks)}", flush=True)
    for s in socks:
        s.close()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _routes() -> str:
    return "".join(subprocess.run(["ip", *v, "route"], capture_output=True, text=True, timeout=30).stdout
                   for v in ([], ["-6"]))


def _defaults(routes: str) -> list[str]:
    return sorted(line for line in routes.splitlines() if line.startswith("default"))


def _ns_run(ns: str, *argv: str, user: int | None = None, timeout: float = 60) -> str:
    # Into the namespace as root, then down to the user (setns needs the privilege the user lacks).
    drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    r = subprocess.run(["ip", "netns", "exec", ns, *drop, *argv], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout.strip()


@dataclass
class Net:
    """The three namespaces and their addresses."""

    host: str
    internet_ns: str
    intranet_ns: str
    host_intra: str  # the host's address toward the intranet (the agent listens there)
    host_inet: str  # the host's address toward the Internet
    internet: str
    internet2: str
    internet6: str
    intranet: str
    server: subprocess.Popen[str]

    def client(self, *args: str) -> str:
        """Run the attacker's client on the classified host as uid 1000."""
        return _ns_run(self.host, "/usr/bin/python3", "-c", CLIENT, *args, user=USER)

    def accepted(self) -> dict[str, int]:
        """Connections (and UDP datagrams) the Internet servers have had, by address."""
        assert self.server.stdin is not None
        self.server.stdin.write("count\n")
        self.server.stdin.flush()
        return dict(eval(_line(self.server, 10)))  # noqa: S307 - our own child's repr of a dict of ints

    def nft(self, *args: str) -> str:
        """``nft`` in the classified host's namespace ('' when it fails)."""
        r = subprocess.run(["ip", "netns", "exec", self.host, "nft", *args], capture_output=True, text=True,
                           timeout=30)
        return r.stdout if r.returncode == 0 else ""


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    before = _routes()
    tag = os.getpid() % 100000
    host, inet_ns, intra_ns = f"dw19h-{tag}", f"dw19n-{tag}", f"dw19i-{tag}"
    base = ipaddress.IPv4Address("198.51.100.0") + 128 + (tag % 8) * 16
    host_inet, internet, internet2 = str(base + 1), str(base + 2), str(base + 3)
    host_intra, intranet = str(base + 9), str(base + 10)
    six = f"2001:db8:19:{tag % 4096:x}"
    server: subprocess.Popen[str] | None = None
    links = [(f"dw19a{tag}", f"dw19b{tag}", inet_ns), (f"dw19c{tag}", f"dw19d{tag}", intra_ns)]
    try:
        for ns in (host, inet_ns, intra_ns):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for a, b, peer in links:
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", a, "netns", host)
            _ip("link", "set", b, "netns", peer)
            _ip("-n", host, "link", "set", a, "up")
            _ip("-n", peer, "link", "set", b, "up")
        (ha, hb, _), (ia, ib, _) = links
        _ip("-n", host, "addr", "add", f"{host_inet}/29", "dev", ha)
        _ip("-n", host, "addr", "add", f"{six}::1/64", "dev", ha, "nodad")
        for a in (internet, internet2):
            _ip("-n", inet_ns, "addr", "add", f"{a}/29", "dev", hb)
        _ip("-n", inet_ns, "addr", "add", f"{six}::2/64", "dev", hb, "nodad")
        _ip("-n", host, "addr", "add", f"{host_intra}/29", "dev", ia)
        _ip("-n", intra_ns, "addr", "add", f"{intranet}/29", "dev", ib)
        server = subprocess.Popen(["ip", "netns", "exec", inet_ns, sys.executable, "-c", SERVER,
                                   internet, internet2, f"{six}::2"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert _line(server, 15) == "ready"
        yield Net(host, inet_ns, intra_ns, host_intra, host_inet, internet, internet2, f"{six}::2", intranet,
                  server)
    finally:
        if server is not None:
            _end(server)
        for ns in (host, inet_ns, intra_ns):  # deleting a namespace deletes its veth ends and its nft tables
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    after = _routes()
    # Other tests on this machine add and remove their own links meanwhile: compare the uplink's
    # routes, and look for nothing of ours.
    assert _defaults(after) == _defaults(before), f"routes changed:\n{before}\n---\n{after}"
    assert "dw19" not in after  # no link of ours is left behind


class HostAgent:
    """The real agent, run inside the classified host's namespace."""

    def __init__(self, net: Net, tmp: Path, enforce: str, scope: str = "destination", ttl: str = "6s") -> None:
        self.net = net
        self.tmp = tmp
        tmp.mkdir(exist_ok=True)
        (tmp / "assets").mkdir(exist_ok=True)
        self.port = 9847
        self.table = f"dw19t{os.getpid() % 100000}"
        registry = REGISTRY.format(assets=tmp / "assets").replace(
            "{name: intranet, cidrs: [10.0.0.0/8]}",
            f"{{name: intranet, cidrs: [10.0.0.0/8, {ipaddress.ip_interface(net.host_intra + '/29').network}]}}")
        (tmp / "registry.yaml").write_text(registry, encoding="utf-8")
        (tmp / "local.yaml").write_text(BLOCK_RULE.format(scope=scope, ttl=ttl), encoding="utf-8")
        from agent.paths import shipped_rules_dir
        self.config = tmp / "agent.yaml"
        self.config.write_text(
            f"registry: {tmp / 'registry.yaml'}\nrules: [{shipped_rules_dir()}, {tmp / 'local.yaml'}]\n"
            f"state_dir: {tmp / 'state'}\nlisten: {net.host_intra}:{self.port}\n"
            f"collectors:\n{COLLECTORS}assess: {{enabled: false}}\njournal: {{fold_window: 0}}\n"
            f"forward: {{syslog: {{address: 'tcp://{net.intranet}:6514'}}}}\n"
            f"enforce:\n  table: {self.table}\n  lease: 10s\n  network: {{resolvers: []}}\n{enforce}",
            encoding="utf-8")
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.intra: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.intra = subprocess.Popen(["ip", "netns", "exec", self.net.intranet_ns, sys.executable, "-c", INTRANET,
                                       self.net.intranet, f"{self.net.host_intra}:{self.port}"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert _line(self.intra, 15) == "ready"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.net.host, sys.executable, "-m", "agent", "run", "--config",
                 str(self.config), "--log-level", "debug"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.wait(lambda: 'collector="network",mode="sniff"} 1.0' in self.metrics(), "agent not up, sniffing")

    def metrics(self) -> str:
        assert self.intra is not None and self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
        assert self.intra.stdin is not None
        self.intra.stdin.write("metrics\n")
        self.intra.stdin.flush()
        return str(eval(_line(self.intra, 10))["metrics"])  # noqa: S307 - our own child's repr

    def intranet_view(self) -> dict[str, Any]:
        """What the scraper and the syslog receiver have had."""
        assert self.intra is not None and self.intra.stdin is not None
        self.intra.stdin.write("state\n")
        self.intra.stdin.flush()
        return dict(eval(_line(self.intra, 10)))  # noqa: S307 - our own child's repr

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            key, _, value = line.rpartition(" ")
            if key.partition("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += float(value)
        return total

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.net.host, sys.executable, "-m", "agent", *args,
                               "--config", str(self.config)], capture_output=True, text=True, cwd=REPO, timeout=60)

    def records(self) -> list[dict[str, Any]]:
        r = subprocess.run([sys.executable, "-m", "agent", "events", "--config", str(self.config), "--type", "all",
                            "--format", "json"], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]

    def enforcements(self, kind: str = "enforce.action") -> list[dict[str, Any]]:
        return [r["detail"] for r in self.records() if r.get("kind") == kind]

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}\n--- agent log ---\n{self.log.read_text()[-6000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(60)
        finally:
            if self.intra is not None:
                _end(self.intra)
                self.intra = None
        return rc


def test_the_first_internet_packet_cuts_the_rest_while_management_works_and_the_ttl_lifts_it(
        net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "reactive", "  mode: enforce\n", ttl="15s")
    agent.start()
    try:
        assert net.client("one", net.intranet) == "connected"  # the intranet: no finding, nothing blocked
        # The first offence: its first packet gets out (and is seen), and the table blocks the address at
        # that packet, so even this connection never opens.
        assert net.client("one", net.internet).startswith("failed")
        t_first = time.monotonic()
        time.sleep(1.0)
        before = net.accepted().get(net.internet, 0)
        done, tried = map(int, net.client("burst", net.internet, "1000", "1.0").split())
        after = net.accepted().get(net.internet, 0)
        assert tried == 1000 and done <= 1 and after - before <= 1, (done, after - before)
        assert time.monotonic() - t_first < 15, "the burst ran past the TTL: the machine is too slow to judge"
        assert net.internet in agent.net.nft("list", "set", "inet", agent.table, "dest4")
        agent.wait(lambda: bool(agent.enforcements()), "the rule never confirmed the kernel's block")
        rec = agent.enforcements()
        assert len(rec) == 1
        d = rec[0]
        assert (d["kind"], d["target"], d["rule"], d["result"], d["operator"]) == \
            ("network", net.internet, "BM-NET-001", "enforced", "张三")
        # Adopted from the kernel's log (by: kernel), unless the finding overtook the log (the agent's own).
        assert d.get("by", "kernel") == "kernel"
        assert d["lift_by"]["command"] == f"dutywatch enforce lift {d['id']}"
        findings = [r for r in agent.records() if r.get("rule") == "BM-NET-001"]
        assert findings and findings[0]["action"] == "block" and findings[0]["enforcement"]["id"] == d["id"]
        assert d["finding"]["seq"] == findings[0]["seq"]
        # How an ordinary user would get around it, and what happens:
        # UDP to the same address is dropped too (the block is by address, not protocol) ...
        udp_before = net.accepted().get(f"udp {net.internet}", 0)
        assert net.client("udp", net.internet).startswith("sent 20")
        time.sleep(0.3)
        assert net.accepted().get(f"udp {net.internet}", 0) == udp_before
        # ... and a connection from the scrape port, which the table keeps open for answers only.
        assert net.client("from-port", net.internet, net.host_inet, str(agent.port)).startswith("failed")
        # The management channel keeps working: the scraper, and syslog carrying the finding.
        view = agent.intranet_view()
        assert view["scrape_ok"] > 0 and "BM-NET-001" in view["syslog"]
        ok_before = view["scrape_ok"]
        time.sleep(0.5)
        assert agent.intranet_view()["scrape_ok"] > ok_before
        assert net.client("one", net.intranet) == "connected"  # the near miss: the intranet stays reachable
        assert agent.metric("dutywatch_enforcements_total", kind="network", result="enforced") == 1
        # The TTL lifts it (the kernel's timeout and the agent's record agree).
        agent.wait(lambda: bool(agent.enforcements("enforce.lift")), "the block never lifted", 20)
        lift = agent.enforcements("enforce.lift")[0]
        assert (lift["id"], lift["how"], lift["result"]) == (d["id"], "ttl", "expired")
        assert net.internet not in agent.net.nft("list", "set", "inet", agent.table, "dest4")
        assert net.client("one", net.internet).startswith("failed")  # a new offence: a new block at once
        agent.wait(lambda: len(agent.enforcements()) == 2, "the second offence was not journaled")
        # The officer lifts it by command: journaled with who asked, and out of the kernel.
        second = agent.enforcements()[1]["id"]
        r = agent.cli("enforce", "lift", second, "--reason", "test ticket")
        assert r.returncode == 0, r.stdout + r.stderr
        agent.wait(lambda: any(x["id"] == second for x in agent.enforcements("enforce.lift")), "no lift")
        assert net.internet not in agent.net.nft("list", "set", "inet", agent.table, "dest4")
        lifts = [x for x in agent.enforcements("enforce.lift") if x["id"] == second]
        assert lifts and lifts[0]["how"] == "command" and lifts[0]["by"]["uid"] == 0
        assert lifts[0]["reason"] == "test ticket"
    finally:
        rc = agent.stop()
    assert rc == 0
    assert agent.net.nft("list", "table", "inet", agent.table) == ""  # the stop policy: lifted, table gone


def test_zone_scope_closes_the_other_internet_address_and_ipv6_too(net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "zone", "  mode: enforce\n", scope="zone", ttl="30s")
    agent.start()
    try:
        assert net.client("one", net.internet).startswith("failed")  # the kernel's block of the address
        agent.wait(lambda: any(x["target"] == "zone:internet" for x in agent.enforcements()), "no zone block")
        time.sleep(0.3)
        # With destination scope another Internet address would be a new first offence; the zone is shut.
        assert net.client("one", net.internet2).startswith("failed")
        assert net.client("one", net.internet6).startswith("failed")
        assert net.client("one", net.intranet) == "connected"
        assert agent.intranet_view()["scrape_ok"] > 0
        # The address the kernel blocked first is confirmed by the same finding (its record names it too).
        zone = next(x for x in agent.enforcements() if x["target"] == "zone:internet")
        firsts = [x for x in agent.enforcements() if x["target"] == net.internet]
        assert all(x["by"] == "kernel" and x["finding"]["seq"] == zone["finding"]["seq"] for x in firsts)
    finally:
        assert agent.stop() == 0
    assert net.client("one", net.internet2) == "connected"


def test_dryrun_blocks_nothing_and_records_what_it_would_have_done(net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "dry", "  mode: dryrun\n")
    agent.start()
    try:
        assert net.client("one", net.internet) == "connected"
        agent.wait(lambda: bool(agent.enforcements()), "no dry-run record")
        assert net.client("one", net.internet) == "connected"
        d = agent.enforcements()[0]
        assert (d["mode"], d["result"]) == ("dryrun", "dryrun") and d["message"].startswith("would block")
        assert agent.net.nft("list", "table", "inet", agent.table) == ""  # nothing reached the kernel
        assert agent.metric("dutywatch_enforcements_total", kind="network", result="dryrun") == 1
    finally:
        assert agent.stop() == 0


def test_a_killed_agent_leaves_no_host_cut_off_for_longer_than_its_lease(net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "killed", "  mode: enforce\n", ttl="1h")
    agent.start()
    assert net.client("one", net.internet).startswith("failed")
    agent.wait(lambda: bool(agent.enforcements()), "no enforcement")
    ident = agent.enforcements()[0]["id"]
    agent.stop(signal.SIGKILL)
    t_kill = time.monotonic()
    assert net.client("one", net.internet).startswith("failed")  # still in force right after the crash
    listing = agent.cli("enforce", "list")
    assert ident in listing.stdout and "no agent holds these" in listing.stdout
    assert "dutywatch enforce lift ID" in listing.stdout
    # The lease (10 s here) runs out in the kernel with no agent to renew it: the blocks, and the table's
    # rule that blocks a new destination at its first packet (every attempt below would renew a block).
    deadline = time.monotonic() + 30
    while net.client("one", net.internet) != "connected":
        assert time.monotonic() < deadline, "the block outlived the agent's lease"
        time.sleep(0.5)
    assert time.monotonic() - t_kill >= 5
    # The next start journals what the dead agent left, and who held it.
    agent2 = HostAgent(net, tmp_path / "killed", "  mode: enforce\n", ttl="1h")
    agent2.start()
    try:
        lifts = agent2.enforcements("enforce.lift")
        assert lifts and lifts[0]["id"] == ident and lifts[0]["how"] == "restart"
    finally:
        assert agent2.stop() == 0


def test_preventive_mode_shuts_the_zone_from_start_and_every_attempt_is_still_a_finding(
        net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "preventive", "  mode: enforce\n  network: {mode: preventive, resolvers: []}\n")
    agent.config.write_text(agent.config.read_text().replace("  network: {resolvers: []}\n", ""), encoding="utf-8")
    agent.start()
    try:
        assert net.client("one", net.internet).startswith("failed")  # never a first offence
        assert net.client("one", net.internet6).startswith("failed")
        assert net.client("one", net.intranet) == "connected"
        assert agent.intranet_view()["scrape_ok"] > 0
        # The dropped attempt is read back from the kernel's log and judged like any connection.
        agent.wait(lambda: any(r.get("rule") == "BM-NET-001" for r in agent.records()), "no finding for the attempt")
        f = next(r for r in agent.records() if r.get("rule") == "BM-NET-001")
        assert f["accountable"]["operator"] == "张三" and f["event"]["net"]["remote_ip"] in (net.internet,
                                                                                               net.internet6)
        assert f["enforcement"]["result"] == "in_force" and f["enforcement"]["target"] == "zone:internet"
        d = agent.enforcements()[0]
        assert (d["target"], d["until"], d["detail"]["preventive"]) == ("zone:internet", None, True)
    finally:
        assert agent.stop() == 0
    assert net.client("one", net.internet) == "connected"  # the stop policy lifts it


def test_a_reload_keeps_the_blocks_unless_the_enforce_section_changed(net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "reload", "  mode: enforce\n", ttl="10m")
    agent.start()
    try:
        assert net.client("one", net.internet).startswith("failed")
        agent.wait(lambda: bool(agent.enforcements()), "no enforcement")
        ident = agent.enforcements()[0]["id"]

        def reloads() -> int:
            return sum(1 for r in agent.records() if r.get("kind") == "agent.reload" and r["detail"].get("ok"))
        # A registry change (a new person): the block stays.
        reg = agent.tmp / "registry.yaml"
        lisi = "  - {account: lisi, uid: 1001, name: 李四, unit: 测试信息中心, clearance: secret}\n"
        reg.write_text(reg.read_text(encoding="utf-8").replace("people:\n", "people:\n" + lisi), encoding="utf-8")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait(lambda: reloads() >= 1, "no reload")
        assert net.client("one", net.internet).startswith("failed")
        assert not agent.enforcements("enforce.lift")
        # A changed enforce section: enforcement starts again, and the lift says so.
        agent.config.write_text(agent.config.read_text().replace("lease: 10s", "lease: 20s"), encoding="utf-8")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait(lambda: reloads() >= 2, "no second reload")
        agent.wait(lambda: bool(agent.enforcements("enforce.lift")), "the old enforcement was not lifted")
        assert agent.enforcements("enforce.lift")[0]["id"] == ident
        assert net.internet not in agent.net.nft("list", "set", "inet", agent.table, "dest4")
    finally:
        assert agent.stop() == 0


def test_reactive_by_the_agent_lets_the_first_connection_out_and_blocks_once_the_rule_judged(
        net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "by-agent", "  mode: enforce\n", ttl="30s")
    agent.config.write_text(agent.config.read_text().replace("network: {resolvers: []}",
                                                             "network: {resolvers: [], reactive: agent}"),
                            encoding="utf-8")
    agent.start()
    try:
        assert "@forbid4 add" not in agent.net.nft("list", "table", "inet", agent.table)
        assert net.client("one", net.internet) == "connected"  # out before any rule judged it
        agent.wait(lambda: bool(agent.enforcements()), "no enforcement")
        d = agent.enforcements()[0]
        assert (d["target"], d["rule"], d["result"], d.get("by")) == (net.internet, "BM-NET-001", "enforced", None)
        assert net.client("one", net.internet).startswith("failed")
    finally:
        assert agent.stop() == 0


def test_a_block_the_kernel_made_that_no_rule_confirms_is_lifted_and_journaled(net: Net, tmp_path: Path) -> None:
    agent = HostAgent(net, tmp_path / "unconfirmed", "  mode: enforce\n")
    # The site's rules only alert on Internet connections: the kernel's block is provisional.
    (agent.tmp / "local.yaml").write_text("pack: local\nrules:\n  - id: BM-NET-001\n    override: {action: alert}\n",
                                          encoding="utf-8")
    agent.start()
    try:
        assert net.client("one", net.internet).startswith("failed")
        agent.wait(lambda: bool(agent.enforcements("enforce.lift")), "the unconfirmed block was not lifted", 20)
        d = agent.enforcements()[0]
        assert (d["target"], d["result"], d["by"], d["rule"]) == \
            (net.internet, "unconfirmed", "kernel", "enforce.network.first_packet")
        assert agent.enforcements("enforce.lift")[0]["how"] == "unconfirmed"
        assert any(r.get("rule") == "BM-NET-001" and r["action"] == "alert" for r in agent.records())
        assert agent.metric("dutywatch_enforcements_total", kind="network", result="unconfirmed") == 1
    finally:
        assert agent.stop() == 0
