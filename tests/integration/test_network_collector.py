"""The network collector against real sockets: loopback and a namespace behind a veth pair.

Traffic goes only to loopback and to a network namespace each test creates
and removes, addressed from the benchmark ranges (198.18.0.0/15 and
2001:2::/48) on the two veth ends alone.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from agent.events import Event
from collectors.network import NetworkCollector
from collectors.sniff import DecodeError, decode, dns_query_name
from tests.integration.netns import QUICK_PORT, VethPair, _end, _line
from tests.integration.netrun import Running, started

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: AF_PACKET, ip netns, veth"),
]

REPO = Path(__file__).resolve().parents[2]
EXE = os.path.realpath(sys.executable)
BASH = os.path.realpath("/bin/bash")
USER_UID = 1000
_seq = itertools.count()

CLIENT = r"""
import socket, sys
peer, domain = sys.argv[1], sys.argv[2]
fam = socket.AF_INET6 if ":" in peer else socket.AF_INET
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen()
port = lst.getsockname()[1]
t = socket.create_connection((peer, 8080), timeout=5)
lo = socket.create_connection(("127.0.0.1", port), timeout=5)
u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(5); u.connect((peer, 53))
labels = b"".join(bytes([len(p)]) + p.encode() for p in domain.split("."))
u.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01")
answer = u.recv(512)
print(port, answer[3] & 0x0F, flush=True)
sys.stdin.read()  # keep every socket open until the test has looked
"""


@pytest.fixture
def veth() -> Iterator[VethPair]:
    pair = VethPair()
    try:
        yield pair
    finally:
        pair.destroy()


@pytest.fixture
def running() -> Iterator[Callable[[NetworkCollector], Running]]:
    yield from started()


def _client(peer: str, domain: str) -> tuple[subprocess.Popen[str], int, int]:
    child = subprocess.Popen([sys.executable, "-c", CLIENT, peer, domain],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port, rcode = _line(child, 15).split()
    return child, int(port), int(rcode)


@pytest.mark.parametrize("mode", ["sniff", "poll"])
def test_connect_dns_and_listen_carry_the_process(
        mode: str, veth: VethPair, running: Callable[[NetworkCollector], Running]) -> None:
    veth.create()
    run = running(NetworkCollector({"mode": mode}))
    assert run.collector.health.mode == mode
    child, port, rcode = _client(veth.peer_ip, "probe.dutywatch.test")
    try:
        assert rcode == 3  # the namespace's DNS responder answered
        mine: Callable[[Event], bool] = lambda e: e.process.pid == child.pid  # noqa: E731
        conn = run.find(lambda e: mine(e) and e.kind == "net.connect" and e.net.remote_ip == veth.peer_ip,
                        "no net.connect to the namespace")
        assert (conn.net.proto, conn.net.direction, conn.net.remote_port) == ("tcp", "out", 8080)
        assert conn.net.local_ip == veth.host_ip and conn.net.local_port
        assert conn.process.exe == EXE and conn.process.ppid == os.getpid()
        assert conn.collector == "network" and conn.time is not None

        dns = run.find(lambda e: mine(e) and e.kind == "net.dns", "no net.dns")
        assert (dns.net.proto, dns.net.remote_ip, dns.net.remote_port) == ("udp", veth.peer_ip, 53)
        if mode == "sniff":
            assert dns.net.domain == "probe.dutywatch.test"
        else:
            assert dns.net.domain is None  # polling sees the socket, not the query

        listen = run.find(lambda e: e.kind == "net.listen" and e.net.local_port == port, "no net.listen")
        assert listen.process.pid == child.pid and listen.process.exe == EXE
        assert (listen.net.proto, listen.net.local_ip) == ("tcp", "127.0.0.1")

        # The loopback connection is reported once, though lo shows each packet twice.
        run.find(lambda e: mine(e) and e.kind == "net.connect" and e.net.remote_port == port, "no loopback connect")
        time.sleep(1.5)  # a duplicate would arrive within a poll interval
        assert [e.kind for e in run.events if e.kind == "net.connect" and e.net.remote_port == port] == ["net.connect"]
    finally:
        _end(child)


def test_ipv6_connect_and_dns(veth: VethPair, running: Callable[[NetworkCollector], Running]) -> None:
    veth.create()
    run = running(NetworkCollector({"mode": "sniff"}))
    child, _, _ = _client(veth.peer_ip6, "v6.dutywatch.test")
    try:
        conn = run.find(lambda e: e.kind == "net.connect" and e.net.remote_ip == veth.peer_ip6, "no IPv6 connect")
        assert (conn.net.local_ip, conn.net.remote_port, conn.process.pid) == (veth.host_ip6, 8080, child.pid)
        dns = run.find(lambda e: e.kind == "net.dns" and e.net.remote_ip == veth.peer_ip6, "no IPv6 DNS query")
        assert (dns.net.domain, dns.process.pid) == ("v6.dutywatch.test", child.pid)
    finally:
        _end(child)


def test_named_interface_is_captured_once_it_appears(
        veth: VethPair, running: Callable[[NetworkCollector], Running]) -> None:
    run = running(NetworkCollector({"mode": "sniff", "interfaces": [veth.host_if]}))
    veth.create()  # after the collector started
    time.sleep(2.5)  # the collector retries missing interfaces each second
    child, port, _ = _client(veth.peer_ip, "late.dutywatch.test")
    try:
        conn = run.find(lambda e: e.kind == "net.connect" and e.net.remote_ip == veth.peer_ip,
                        "no connect on the late interface")
        assert conn.process.pid == child.pid
        run.find(lambda e: e.kind == "net.dns" and e.net.domain == "late.dutywatch.test", "no DNS on it")
        time.sleep(0.5)
        # Loopback is not among the named interfaces: the child's connection over lo is not seen.
        assert not [e for e in run.events if e.kind == "net.connect" and e.net.remote_port == port]
    finally:
        _end(child)


def test_malformed_dns_query_is_traffic_not_an_error(running: Callable[[NetworkCollector], Running]) -> None:
    run = running(NetworkCollector({"mode": "sniff", "interfaces": ["lo"]}))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        # a query header announcing one question, followed by a truncated name
        s.sendto(b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab", ("127.0.0.1", 53))
        got = run.find(lambda e: e.net.local_port == port, "no event for the malformed query")
    assert (got.kind, got.net.proto, got.net.remote_port, got.net.dns_malformed) == ("net.connect", "udp", 53, True)
    assert got.net.domain is None and got.process.pid == os.getpid()
    assert run.thread.is_alive()


def test_decoding_rejects_truncated_packets() -> None:
    with pytest.raises(DecodeError):
        decode(b"\x45\x00\x00")
    with pytest.raises(DecodeError, match="shorter than its header"):
        dns_query_name(b"\x00\x01")
    response = b"\x00\x07\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01"
    with pytest.raises(DecodeError, match="response"):
        dns_query_name(response)


UNPRIVILEGED = r"""
import ctypes, json, os, socket, threading, time
import encodings.idna, psutil  # loaded before the drop: the interpreter's files are not readable by uid 65534
from collectors.network import NetworkCollector
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, cleared by setuid; /proc/self/fd needs it
c = NetworkCollector({})
avail = c.available()
events, stop = [], threading.Event()
t = threading.Thread(target=c.run, args=(lambda e: events.append(e) is None, stop), daemon=True)
t.start()
deadline = time.monotonic() + 15
while not c.health.up and time.monotonic() < deadline:
    time.sleep(0.05)
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(); port = lst.getsockname()[1]
conn = socket.create_connection(("127.0.0.1", port))
def seen():
    return {e.kind for e in events if e.process.pid == os.getpid() and port in (e.net.local_port, e.net.remote_port)}
while time.monotonic() < deadline and not {"net.listen", "net.connect"} <= seen():
    time.sleep(0.1)
stop.set(); t.join(5)
print(json.dumps({"uid": os.getuid(), "mode": avail.mode, "reason": avail.reason, "health": c.health.mode,
                  "returned": not t.is_alive(), "port": port,
                  "events": [e.to_dict() for e in events if e.process.pid == os.getpid()]}))
"""


def test_unprivileged_start_falls_back_to_polling() -> None:
    out = subprocess.run([sys.executable, "-c", UNPRIVILEGED], capture_output=True, text=True, timeout=60,
                         cwd=REPO, check=True)
    got = json.loads(out.stdout)
    assert got["uid"] == 65534
    assert got["mode"] == "poll" and "CAP_NET_RAW" in got["reason"]
    assert got["health"] == "poll" and got["returned"]
    kinds = {(e["event"]["kind"], e["net"].get("local_port"), e["net"].get("remote_port")) for e in got["events"]}
    assert ("net.listen", got["port"], None) in kinds
    assert any(k == "net.connect" and rport == got["port"] for k, _, rport in kinds)
    assert "poll mode" in out.stderr  # the reduced fidelity is said out loud


# bash connects and keeps the connection until the test closes its stdin.
HOLD = "exec 3<>/dev/tcp/{peer}/{port} && echo connected && read -r _"


def _bash_as(uid: int, script: str) -> subprocess.Popen[str]:
    """bash running ``script`` as ``uid`` (set in the child before exec, no Python code runs there)."""
    return subprocess.Popen(["/bin/bash", "-c", script], user=uid, group=uid, extra_groups=[],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _holding(uid: int, peer: str) -> tuple[subprocess.Popen[str], int]:
    """A bash child of ``uid`` connected to ``peer``:8080, and its local port."""
    child = _bash_as(uid, HOLD.format(peer=peer, port=8080))
    assert _line(child, 15) == "connected"
    (conn,) = [c for c in psutil.Process(child.pid).net_connections(kind="tcp") if c.raddr]
    return child, conn.laddr.port


def _connect_from(run: Running, peer: str, port: int) -> Event:
    return run.find(lambda e: e.kind == "net.connect" and e.net.remote_ip == peer and e.net.local_port == port,
                    f"no net.connect from port {port}")


def _account(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def test_connect_by_another_users_process_names_its_pid_exe_and_uid(
        veth: VethPair, running: Callable[[NetworkCollector], Running]) -> None:
    veth.create()
    run = running(NetworkCollector({"mode": "sniff", "interfaces": [veth.host_if]}))
    child, port = _holding(USER_UID, veth.peer_ip)
    try:
        conn = _connect_from(run, veth.peer_ip, port)
        assert (conn.process.pid, conn.process.exe, conn.process.uid) == (child.pid, BASH, USER_UID)
        assert conn.process.user == _account(USER_UID) and conn.process.ppid == os.getpid()
        # Other traffic on the interface (kernel-sent packets) may lack a process; this connection never does.
        mine = [e for e in run.events if e.net.remote_ip == veth.peer_ip and e.net.local_port == port]
        assert mine and all(e.process.pid == child.pid for e in mine)
    finally:
        _end(child)


def test_children_connecting_in_turn_each_get_their_own_pid(
        veth: VethPair, running: Callable[[NetworkCollector], Running]) -> None:
    veth.create()
    run = running(NetworkCollector({"mode": "sniff", "interfaces": [veth.host_if]}))
    first, first_port = _holding(USER_UID, veth.peer_ip)
    second: subprocess.Popen[str] | None = None
    third: subprocess.Popen[str] | None = None
    try:
        assert _connect_from(run, veth.peer_ip, first_port).process.pid == first.pid
        second, second_port = _holding(USER_UID, veth.peer_ip)  # while the first still holds its own
        assert _connect_from(run, veth.peer_ip, second_port).process.pid == second.pid
        _end(first)
        third, third_port = _holding(0, veth.peer_ip)  # after the first has gone, as another user
        got = _connect_from(run, veth.peer_ip, third_port).process
        assert (got.pid, got.uid) == (third.pid, 0)
    finally:
        for child in (first, second, third):
            if child is not None:
                _end(child)


def test_a_process_that_exits_at_once_is_never_misnamed(
        veth: VethPair, running: Callable[[NetworkCollector], Running]) -> None:
    """Connections that open and close within a millisecond: the owner may be gone before it is looked for."""
    veth.create()
    run = running(NetworkCollector({"mode": "sniff", "interfaces": [veth.host_if]}))
    pids: list[int] = []
    for _ in range(5):
        child = _bash_as(USER_UID, f"exec 3<>/dev/tcp/{veth.peer_ip}/{QUICK_PORT}")
        child.communicate(timeout=15)
        pids.append(child.pid)
    def quick() -> list[Event]:
        return [e for e in list(run.events) if e.kind == "net.connect" and e.net.remote_port == QUICK_PORT]

    run.wait(lambda: len(quick()) == len(pids), "not every quick connection was reported")
    events = quick()  # in the order of their SYNs, which is the order the children ran in
    for pid, ev in zip(pids, events, strict=True):
        assert ev.process.pid in (None, pid)  # the child itself, or no one: never another process
        assert ev.process.uid in (None, USER_UID)
        assert ev.process.exe in (None, BASH)
    unnamed = sum(1 for e in events if e.process.pid is None)
    assert run.collector.health.drops.get("no_process", 0) >= unnamed  # every loss is counted


def test_up_is_reported_only_once_connections_are_watched() -> None:
    """A supervisor may mark a collector up before run(); run() takes that back until it is watching."""
    started, release = threading.Event(), threading.Event()

    def slow_lister() -> list[object]:
        started.set()
        release.wait(15)
        return []

    c = NetworkCollector({"mode": "poll"}, lister=slow_lister)
    c.health.up = True
    stop = threading.Event()
    t = threading.Thread(target=c.run, args=(lambda e: True, stop), daemon=True)
    t.start()
    try:
        assert started.wait(15)
        assert not c.health.up  # the first listing has not come back: nothing is being watched yet
        release.set()
        deadline = time.monotonic() + 15
        while not c.health.up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.health.up and c.health.mode == "poll"
    finally:
        release.set()
        stop.set()
        t.join(5)
