"""The capture filter the agent assembles, run by the kernel on real packets.

Each probe runs in a network namespace of its own (``dw14n-f...``), so its
loopback carries only the probe's packets: the filter is attached to an
AF_PACKET socket there, the probe sends every class of packet, and what the
kernel let through is decoded and compared with what should have passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.bpf import BPFError, Insn, Label, assemble, jeq, ld_abs, ret
from collectors.sniff import filter_program

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, socket, struct, sys, time
from collectors.sniff import Sniffer, decode

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

HBH = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # a hop-by-hop header holding one PadN option
sniffer = Sniffer(["lo"])
sniffer.open()
servers = {}
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    for port in (53, 0):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((host, port)); s.listen()
        servers[(host, port)] = s
plain4 = servers[("127.0.0.1", 0)].getsockname()[1]
plain6 = servers[("::1", 0)].getsockname()[1]
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03tcp\x04test\x00\x00\x01\x00\x01"
held = []

def tcp(fam, host, port, data, hbh=False):
    c = socket.socket(fam, socket.SOCK_STREAM)
    if hbh:
        c.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, HBH)
    c.connect((host, port))
    peer, _ = servers[(host, 53 if port == 53 else 0)].accept()
    c.sendall(data); peer.recv(4096); peer.sendall(b"ok"); c.recv(16)
    held.extend((c, peer))
    return c.getsockname()[1]

tcp(socket.AF_INET, "127.0.0.1", plain4, b"x" * 3000)          # SYN and SYN-ACK only
tcp(socket.AF_INET, "127.0.0.1", 53, struct.pack("!H", len(query)) + query)  # and the data to port 53
tcp(socket.AF_INET6, "::1", plain6, b"y" * 3000)               # SYN and SYN-ACK only
hbh = tcp(socket.AF_INET6, "::1", plain6, b"z" * 100, hbh=True)  # behind a hop-by-hop header: all of it
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"u" * 40, ("127.0.0.1", 9))
ul = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE); ul.sendto(b"l" * 40, ("127.0.0.1", 9))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, HBH); u6.sendto(b"h" * 40, ("::1", 9))
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
body = struct.pack("!HH", 0x4242, 1) + b"p" * 48
icmp.sendto(struct.pack("!BBH", 8, 0, csum(struct.pack("!BBH", 8, 0, 0) + body)) + body, ("127.0.0.1", 0))
gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47); gre.sendto(b"\0\0\x08\0" + b"g" * 40, ("127.0.0.1", 0))
time.sleep(0.3)
got = []
for _ in range(20):
    batch = sniffer.read(0.1)
    if not batch and got:
        break
    for data in batch:
        p = decode(data)
        if p is not None:
            got.append([p.proto, p.src_port, p.dst_port, p.flags, p.icmp_type, len(p.payload), data[0] >> 4,
                        data[6] if data[0] >> 4 == 6 else data[9]])
print(json.dumps({"plain4": plain4, "plain6": plain6, "hbh": hbh, "got": got}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"dw14n-f{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: AF_PACKET, ip netns")
def test_kernel_filter_passes_flow_starts_and_every_protocol_but_not_tcp_data(netns: str) -> None:
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", PROBE], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout)
    got = [tuple(g) for g in report["got"]]
    plain4, plain6 = report["plain4"], report["plain6"]
    # [proto, sport, dport, tcp flags, icmp type, payload bytes, IP version, first next-header]
    to_plain4 = [g for g in got if g[0] == "tcp" and g[6] == 4 and plain4 in (g[1], g[2])]
    assert sorted(g[3] for g in to_plain4) == [0x02, 0x12], to_plain4  # the SYN and the SYN-ACK, once each
    to_dns = [g for g in got if g[0] == "tcp" and g[6] == 4 and g[2] == 53]
    assert 0x02 in [g[3] for g in to_dns] and any(g[5] > 0 for g in to_dns)  # the query itself reached us
    assert not [g for g in got if g[0] == "tcp" and g[6] == 4 and g[1] == 53 and not g[3] & 0x02]  # answers stay
    direct6 = [g for g in got if g[0] == "tcp" and g[6] == 6 and g[7] == 6]
    # the plain connection's SYN and SYN-ACK; the server answers the other one without the option
    assert sorted(g[3] for g in direct6 if plain6 in (g[1], g[2]) and report["hbh"] not in (g[1], g[2])) == [2, 18]
    assert [g[3] for g in direct6 if report["hbh"] == g[2]] == [0x12]
    behind = [g for g in got if g[0] == "tcp" and g[6] == 6 and g[7] == 0]
    assert 0x02 in [g[3] for g in behind] and any(g[5] == 0 and g[3] & 0x10 for g in behind)
    assert len([g for g in got if g[0] == "udp" and g[6] == 4 and g[2] == 9]) == 1  # lo's second copy is not
    assert len([g for g in got if g[0] == "udplite" and g[2] == 9]) == 1
    assert [g[2] for g in got if g[0] == "udp" and g[6] == 6 and g[7] == 0] == [9]  # hop-by-hop walked
    # the echo request, the kernel's reply, and its "port unreachable" for the datagrams to port 9
    assert sorted(g[4] for g in got if g[0] == "icmp") == [0, 3, 3, 8]
    assert [g[0] for g in got if g[7] == 47] == ["gre"]


def test_assembler_refuses_what_the_kernel_would() -> None:
    with pytest.raises(BPFError, match="end with a return"):
        assemble([ld_abs(0x10, 0)])
    with pytest.raises(BPFError, match="unknown label"):
        assemble([jeq(1, "nowhere"), ret(0)])
    with pytest.raises(BPFError, match="jumps forward"):
        assemble([Label("back"), ret(0), jeq(1, "back"), ret(0)])
    with pytest.raises(BPFError, match="placed twice"):
        assemble([Label("a"), Label("a"), ret(0)])
    far: list[Insn | Label] = [jeq(1, "end"), *[ld_abs(0x10, 0)] * 300, Label("end"), ret(0)]
    with pytest.raises(BPFError, match="at most 255"):
        assemble(far)
    code = filter_program()
    assert len(code) % 8 == 0 and code[-8:] == b"\x06\x00\x00\x00\x00\x00\x00\x00"  # ends: ret #0
