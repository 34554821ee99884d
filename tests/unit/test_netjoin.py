"""The join of the audit source's send to port 53 with the sniffer's name of it (collectors.netjoin)."""

from __future__ import annotations

from agent.events import Event, Net, Parent, Process
from collectors.netjoin import DnsJoin


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def audit(pid: int | None, ip: str = "198.51.100.7", t: float = 1.0) -> Event:
    return Event("net.connect", t, "audit", process=Process(pid=pid, exe="/tmp/q", loginuid=4242),
                 parent=Parent(pid=1), net=Net(proto="tcp", direction="out", remote_ip=ip, remote_port=53))


def sniffed(pid: int | None, name: str = "a.example", ip: str = "198.51.100.7", port: int = 40000) -> Event:
    return Event("net.dns", 2.0, "network", process=Process(pid=pid),
                 net=Net(proto="udp", direction="out", local_ip="10.0.0.1", local_port=port, remote_ip=ip,
                         remote_port=53, domain=name))


def join() -> tuple[DnsJoin, Clock]:
    clock = Clock()
    j = DnsJoin(window=2.0, clock=clock)
    j.active = True
    return j, clock


def test_either_order_makes_one_event_with_the_name_and_the_kernels_process() -> None:
    for first_audit in (True, False):
        j, _ = join()
        if first_audit:
            assert j.from_audit(audit(7)) is None
            got = j.from_sniffer(sniffed(7))
        else:
            assert j.from_sniffer(sniffed(None)) is None  # the process was gone when the sniffer looked
            got = j.from_audit(audit(7))
        assert got is not None
        assert (got.kind, got.net.domain, got.net.proto, got.net.local_port) == ("net.dns", "a.example", "udp", 40000)
        assert (got.process.exe, got.process.loginuid, got.time, got.collector) == ("/tmp/q", 4242, 1.0, "audit")
        assert j.audit_expired(everything=True) == [] and j.sniffer_expired(everything=True) == []


def test_another_process_or_server_is_not_joined_and_each_goes_out_alone_after_the_window() -> None:
    j, clock = join()
    assert j.from_audit(audit(7)) is None
    assert j.from_sniffer(sniffed(8)) is None  # another process's query to the same server
    assert j.from_sniffer(sniffed(7, ip="198.51.100.9")) is None  # the same process, another server
    clock.now += 1.9
    assert j.audit_expired() == [] and j.sniffer_expired() == []
    assert j.audit_due() == 102.0
    clock.now += 0.2
    assert [e.kind for e in j.audit_expired()] == ["net.connect"]
    assert [e.process.pid for e in j.sniffer_expired()] == [8, 7]


def test_not_sniffing_the_audit_event_goes_out_at_once() -> None:
    j, _ = join()
    j.active = False
    ev = audit(7)
    assert j.from_audit(ev) is ev


def test_a_later_query_on_a_joined_socket_is_named_at_once_only_for_the_same_holder() -> None:
    j, _ = join()
    j.from_audit(audit(7))
    assert j.from_sniffer(sniffed(7)) is not None
    again = j.from_sniffer(sniffed(7, name="b.example"))
    assert again is not None and again.process.exe == "/tmp/q" and again.net.domain == "b.example"
    # The same local port now held by another process (a reused port): it waits for its own record.
    assert j.from_sniffer(sniffed(9, name="c.example")) is None
    assert j.from_sniffer(sniffed(None, name="d.example")) is None


def test_bounded_a_full_side_lets_the_new_event_go_out_alone() -> None:
    j = DnsJoin(size=2)
    j.active = True
    assert j.from_audit(audit(1)) is None and j.from_audit(audit(2)) is None
    ev = audit(3)
    assert j.from_audit(ev) is ev


def test_the_network_collector_counts_no_process_only_for_what_goes_out_unnamed() -> None:
    from collectors.network import NetworkCollector

    class Source:
        def __init__(self) -> None:
            self.dns_join = DnsJoin()
            self.dns_join.active = True

        def covers(self, kind: str) -> bool:
            return kind == "net.connect"

    source = Source()
    net = NetworkCollector({}, audit=source)
    out: list[Event] = []

    def emit(e: Event) -> bool:
        out.append(e)
        return True

    assert source.dns_join.from_audit(audit(7)) is None
    dns = Net(proto="udp", direction="out", local_ip="10.0.0.1", local_port=40000, remote_ip="198.51.100.7",
              remote_port=53, domain="a.example")
    net._send(emit, "net.dns", dns, Process(), Parent(), join=True, unnamed=True)  # joined: named by the kernel
    tcp = Net(proto="tcp", direction="out", remote_ip="198.51.100.8", remote_port=443)
    net._send(emit, "net.connect", tcp, Process(), Parent(), unnamed=True)  # the audit source reports it
    assert [e.process.exe for e in out] == ["/tmp/q"] and net.health.drops == {}
    other = Net(proto="udp", direction="out", local_ip="10.0.0.1", local_port=40001, remote_ip="198.51.100.9",
                remote_port=53, domain="b.example")
    net._send(emit, "net.dns", other, Process(), Parent(), join=True, unnamed=True)  # waits for its record
    source.dns_join.window = 0.0
    net._unjoined(emit)  # it never came: out as the sniffer saw it, unnamed, and counted
    assert out[-1].net.domain == "b.example" and net.health.drops == {"no_process": 1}
