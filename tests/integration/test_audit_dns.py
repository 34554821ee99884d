"""A DNS query with the audit source and the sniffer both running is one event: the name and the person.

A resolver in a test namespace (198.51.100.202, TEST-NET-2) answers every
query; the host's glibc resolver reaches it through a private mount namespace
whose /etc/resolv.conf names it (the host's own file is never touched). The
kernel's record of the send gives the process and person (even for a program
that sends one query and exits at once), the sniffer gives the name, and the
shipped rules see one lookup, not a lookup and a connection.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from auditkit import TEST_UID, Run, internet_host, judge, programs, registry, running

from agent.events import Event
from collectors.audit import AuditCollector
from collectors.network import NetworkCollector

pytestmark = pytest.mark.root

REGISTRY = registry("dw-audit-dns")

RESOLVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    s.sendto(q[:2] + b"\x81\x83" + q[4:], peer)  # the question back, NXDOMAIN
"""

# One query for argv[2] sent to argv[1]:53 with sendto, then exit at once (no wait for the answer).
QUERY_C = r"""#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
  unsigned char m[300] = {0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}; int n = 12;
  const char *p = argv[2];
  while (*p) { const char *d = strchr(p, '.'); int l = d ? d - p : (int)strlen(p);
    m[n++] = l; memcpy(m + n, p, l); n += l; p += l; if (*p) p++; }
  m[n++] = 0; m[n++] = 0; m[n++] = 1; m[n++] = 0; m[n++] = 1;
  struct sockaddr_in a; memset(&a, 0, sizeof a); a.sin_family = AF_INET; a.sin_port = htons(53);
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  sendto(s, m, n, 0, (struct sockaddr *)&a, sizeof a);
  return 0; }
"""


@contextmanager
def resolver(name: str) -> Iterator[tuple[str, str]]:
    """A namespace answering DNS at 198.51.100.202; yields (address, the host side's interface)."""
    with internet_host(name) as addr:
        srv = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", RESOLVER, addr],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
            yield addr, f"{name[:9]}-h"
        finally:
            srv.kill()
            srv.wait(10)


@contextmanager
def sniffing(collector: NetworkCollector, run: Run) -> Iterator[None]:
    stop = threading.Event()
    t = threading.Thread(target=collector.run, args=(run.emit, stop), daemon=True)
    t.start()
    end = time.monotonic() + 15
    while not collector.health.up and time.monotonic() < end and t.is_alive():
        time.sleep(0.02)
    assert collector.health.up, "network collector never came up"
    try:
        yield
    finally:
        stop.set()
        t.join(20)
        assert not t.is_alive(), "network collector did not stop"


def login_as(uid: int) -> Callable[[], None]:
    """A preexec function: the child's login identity (auid) is ``uid``; it stays root to set up its namespace."""
    def become() -> None:
        with open("/proc/self/loginuid", "w") as f:
            f.write(str(uid))
    return become


def lookup(conf: Path, name: str) -> int:
    """``getent ahosts NAME`` by the test person through glibc's resolver pointed at ``conf``; its pid."""
    script = (f"mount --bind {conf} /etc/resolv.conf && exec setpriv --reuid={TEST_UID} --regid={TEST_UID} "
              f"--clear-groups getent ahostsv4 {name}")
    p = subprocess.Popen(["unshare", "-m", "sh", "-c", script], preexec_fn=login_as(TEST_UID),
                         stdout=subprocess.DEVNULL)
    p.wait(30)
    assert p.returncode == 2, f"getent of {name} should find nothing (NXDOMAIN), exit {p.returncode}"
    return p.pid  # unshare execs sh, sh execs setpriv, setpriv execs getent: one pid


def test_a_query_is_one_event_with_the_name_and_the_person(tmp_path: Path) -> None:
    with programs("dns", {"query": QUERY_C}) as d:
        _run(tmp_path, d / "query")


def _run(tmp_path: Path, query: Path) -> None:
    audit = AuditCollector({})
    n = 10
    with resolver(f"dw13d-r{os.getpid() % 10000}") as (addr, host_if), running(audit) as run:
        assert audit.covers("net.connect"), "the audit source's connect rules are not in force"
        conf = tmp_path / "resolv.conf"
        conf.write_text(f"nameserver {addr}\noptions attempts:1 timeout:2\n", encoding="utf-8")
        net = NetworkCollector({"mode": "sniff", "interfaces": [host_if]}, audit=audit)
        with sniffing(net, run):
            names: dict[int, str] = {}
            for i in range(n):
                name = f"q{i}.lookup.example.org"
                names[lookup(conf, name)] = name
            for i in range(n):
                name = f"x{i}.leak.example.net"
                p = subprocess.Popen([str(query), addr, name], preexec_fn=_as_person)
                p.wait(10)
                names[p.pid] = name

            def ours(e: Event) -> bool:
                return e.process.pid in names and e.kind.startswith("net.")
            run.where(lambda e: ours(e) and e.kind == "net.dns", count=len(names), deadline=20)
            time.sleep(2.5)  # the join's window: anything that would still go out alone has gone by now
        got = [e for e in list(run.events) if ours(e)]
    by_pid: dict[int, list[Event]] = {}
    for e in got:
        by_pid.setdefault(e.process.pid or 0, []).append(e)
    for pid, name in names.items():
        evs = by_pid.get(pid, [])
        assert len(evs) == 1, f"{name} (pid {pid}): {len(evs)} events, want one: {[e.to_dict() for e in evs]}"
        e = evs[0]
        assert (e.kind, e.net.domain, e.net.proto) == ("net.dns", name, "udp")
        assert (e.net.remote_ip, e.net.remote_port) == (addr, 53)
        assert e.collector == "audit", "the process should be the kernel's word on it"
        assert e.process.loginuid == TEST_UID and e.process.uid == TEST_UID
        want = "/usr/bin/getent" if name.startswith("q") else str(query)
        assert e.process.exe == want
    fired = judge(got, REGISTRY, tmp_path)
    lookups = {e.process.pid for rule, e in fired if rule == "BM-NET-002" and e.operator.account == "tester"}
    assert lookups == set(names), "every query is a lookup from an Internet DNS server by the person"
    assert not [e for rule, e in fired if rule == "BM-NET-001"], "a lookup is no connection of its own"


def _as_person() -> None:
    with open("/proc/self/loginuid", "w") as f:
        f.write(str(TEST_UID))
    os.setgid(TEST_UID)
    os.setuid(TEST_UID)
