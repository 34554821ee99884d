"""Test hosts in network namespaces: a veth pair into a namespace with TCP and DNS servers.

The TCP server on port 8080 holds each connection open until its client
closes it, so a client lives as long as the test means it to; the one on
``QUICK_PORT`` closes each connection as soon as it is accepted.

Addresses come from the benchmark ranges (198.18.0.0/15, 2001:2::/48) and
live only on the two veth ends each test creates and removes.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import select
import subprocess
import sys

_seq = itertools.count()

QUICK_PORT = 8081

SERVER = r"""
import socket, sys, threading
QUICK = int(sys.argv[1])
socks = []
for a in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.bind((a, 8080)); t.listen(16); socks.append(t)
    q = socket.socket(fam, socket.SOCK_STREAM)
    q.bind((a, QUICK)); q.listen(16); socks.append(q)
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.bind((a, 53)); socks.append(u)
def hold(c):
    # Keep each connection open until the client closes it (or 60 s pass), as a real server would:
    # a client that waits for an answer must not be cut off at once.
    c.settimeout(60)
    try:
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()
def tcp(s):
    while True:
        c, _ = s.accept()
        if s.getsockname()[1] == QUICK:
            c.close()
        else:
            threading.Thread(target=hold, args=(c,), daemon=True).start()
def dns(s):
    while True:
        q, peer = s.recvfrom(512)
        s.sendto(q[:2] + b"\x81\x83" + q[4:], peer)  # the question back, NXDOMAIN
for s in socks:
    threading.Thread(target=tcp if s.type == socket.SOCK_STREAM else dns, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class VethPair:
    """A namespace and a veth pair into it, with test-only addresses on both ends."""

    def __init__(self) -> None:
        n = next(_seq)
        tag = f"dwt{os.getpid()}{n}"
        self.ns, self.host_if, self.ns_if = tag, f"{tag}a", f"{tag}b"
        idx = (os.getpid() * 8 + n) % 32768
        base = int(ipaddress.IPv4Address("198.18.0.0")) + idx * 4
        self.host_ip, self.peer_ip = str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))
        self.host_ip6, self.peer_ip6 = f"2001:2:0:{idx:x}::1", f"2001:2:0:{idx:x}::2"
        self.server: subprocess.Popen[str] | None = None

    def create(self) -> None:
        """Make the namespace, the pair and the addresses; start the TCP and DNS servers inside."""
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("addr", "add", f"{self.host_ip6}/64", "dev", self.host_if, "nodad")
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.peer_ip}/30", "dev", self.ns_if)
        _ip("-n", self.ns, "addr", "add", f"{self.peer_ip6}/64", "dev", self.ns_if, "nodad")
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", SERVER, str(QUICK_PORT), self.peer_ip,
             self.peer_ip6],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert _line(self.server, 15) == "ready"

    def destroy(self) -> None:
        """Stop the servers and remove the pair and the namespace (each step even if another failed)."""
        if self.server is not None:
            _end(self.server)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)


def _line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child printed nothing in time"
    return proc.stdout.readline().strip()


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


