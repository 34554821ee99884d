"""DNS messages of sniffed packets are parsed in a confined worker: privilege, crashes, hangs, a full queue.

The collector tests capture real packets on the loopback interface; every
datagram goes to 127.0.0.1 port 53, where nothing listens.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collectors.dns_worker import CRASH_PROBE, HANG_PROBE, MAX_MESSAGE, MEMORY, TEST_HOOK, DnsWorker, DnsWorkerError
from collectors.network import NetworkCollector
from collectors.sniff import DecodeError, dns_query
from tests.integration.netrun import Running, started
from tests.integration.worker_checks import assert_confined, proc_status

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: AF_PACKET, dropping to nobody")

QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x1c\x00\x01"


def _query(name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return b"\x55\x66\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01"


@pytest.fixture
def worker() -> Iterator[DnsWorker]:
    w = DnsWorker(timeout=1.0)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def hooked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started from now on crash on CRASH_PROBE and spin on HANG_PROBE."""
    monkeypatch.setenv(TEST_HOOK, "1")


@pytest.mark.root
@root_only
def test_worker_holds_no_privilege(worker: DnsWorker) -> None:
    worker.start()
    assert worker.pid is not None
    assert_confined(worker.pid, worker.confinement, files=8, memory=MEMORY)


def test_worker_answers_as_the_parser_does(worker: DnsWorker) -> None:
    """Well-formed, malformed and random messages: the worker's answer is the parser's, message for message."""
    rng = random.Random(16)
    messages = [QUERY, _query("a.b.c"), b"\x00\x01", QUERY[:20], b"\x12\x34\x81\x80" + QUERY[4:],
                QUERY[:12] + b"\xc0\x0c\x00\x01\x00\x01", QUERY[:12] + b"\x01\xff" + b"\x00\x00\x01\x00\x01",
                QUERY + b"x" * (MAX_MESSAGE + 100)]
    messages += [QUERY[:12] + bytes(rng.randrange(256) for _ in range(rng.randrange(40))) for _ in range(150)]
    answers = []
    for i in range(0, len(messages), 32):
        answers += worker.parse(messages[i:i + 32])
    assert len(answers) == len(messages)
    for m, a in zip(messages, answers, strict=True):
        try:
            q = dns_query(m[:MAX_MESSAGE])
        except DecodeError as e:
            assert (a.name, a.error) == (None, str(e))
        else:
            assert (a.name, a.qtype, a.flags, a.error) == (q.name, q.qtype, q.flags, None)
    assert answers[0].name == "www.example.com" and answers[0].qtype == 28 and answers[0].flags == 0x0100
    assert worker.restarts == 0


def test_a_crash_and_a_hang_are_stopped_and_the_worker_replaced(hooked: None, worker: DnsWorker) -> None:
    worker.start()
    first = worker.pid
    with pytest.raises(DnsWorkerError, match="died \\(SIGABRT\\)"):
        worker.parse([QUERY, CRASH_PROBE])
    assert worker.restarts == 1 and worker.pid is None
    assert worker.parse([QUERY])[0].name == "www.example.com"  # a new worker answers the next batch
    second = worker.pid
    assert second is not None and second != first
    with pytest.raises(DnsWorkerError, match="no answer within"):
        worker.parse([HANG_PROBE, QUERY])
    assert (worker.killed, worker.restarts) == (1, 2)
    assert not Path(f"/proc/{second}").exists()  # the hung worker was killed and reaped
    assert worker.parse([_query("after.hang")])[0].name == "after.hang"
    assert worker.pid not in (None, first, second)


def test_the_hook_is_off_unless_set(worker: DnsWorker) -> None:
    """Without the test variable the probes are only malformed messages: no crash, no hang."""
    os.environ.pop(TEST_HOOK, None)
    answers = worker.parse([CRASH_PROBE, HANG_PROBE])
    assert [a.name for a in answers] == [None, None] and worker.restarts == 0


# -- the collector, on real packets ---------------------------------------------------------------------------------


@pytest.fixture
def running() -> Iterator[Callable[[NetworkCollector], Running]]:
    yield from started()


def _send(payload: bytes, keep: list[socket.socket], dport: int = 53) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.sendto(payload, ("127.0.0.1", dport))
    keep.append(s)  # open until the test ends, so its owner can be named
    return int(s.getsockname()[1])


@pytest.mark.root
@root_only
@pytest.mark.parametrize("probe", [CRASH_PROBE, HANG_PROBE], ids=["crash", "hang"])
def test_a_packet_the_worker_fails_on_is_reported_unparsed_and_the_next_is_parsed(
        hooked: None, running: Callable[[NetworkCollector], Running], probe: bytes) -> None:
    worker = DnsWorker(timeout=1.0)
    run = running(NetworkCollector({"mode": "sniff", "interfaces": ["lo"]}, dns_worker=worker))
    first = worker.pid
    assert first is not None  # started with the collector
    keep: list[socket.socket] = []
    try:
        bad = _send(probe + b"\x00" * 16, keep)
        run.wait(lambda: bool(run.on_port(bad)), "the packet the worker failed on was not reported")
        (ev,) = run.on_port(bad)
        assert (ev.kind, ev.net.proto, ev.net.remote_port, ev.net.dns_malformed) == ("net.connect", "udp", 53, True)
        assert ev.net.domain is None and ev.process.pid == os.getpid()
        assert run.collector.health.partials.get("dns_worker") == 1
        assert worker.restarts == 1 and worker.killed == (1 if probe == HANG_PROBE else 0)
        good = _send(_query("next.dutywatch.test"), keep)
        run.wait(lambda: bool(run.on_port(good)), "the next query was not reported")
        (ev,) = run.on_port(good)
        assert (ev.kind, ev.net.domain, ev.process.pid) == ("net.dns", "next.dutywatch.test", os.getpid())
        assert worker.pid not in (None, first)
        assert run.collector.health.partials.get("dns_worker") == 1
    finally:
        for s in keep:
            s.close()


@pytest.mark.root
@root_only
def test_a_full_queue_never_stalls_the_sniffer_and_loses_no_packet(
        hooked: None, running: Callable[[NetworkCollector], Running]) -> None:
    """The worker hangs; packets keep being captured, DNS beyond the queue goes out unparsed and counted."""
    worker = DnsWorker(timeout=60.0)
    run = running(NetworkCollector({"mode": "sniff", "interfaces": ["lo"]}, dns_queue=4, dns_worker=worker))
    keep: list[socket.socket] = []
    try:
        hang = _send(HANG_PROBE, keep)
        run.wait(lambda: worker.pid is not None and proc_status(worker.pid)["State"].startswith("R"),
                 "the worker did not take the hanging message")
        ports = [_send(_query(f"q{i}.dutywatch.test"), keep) for i in range(20)]
        other = _send(b"not dns", keep, dport=4444)
        # While the worker still hangs, the other traffic and the queries beyond the queue are reported.
        run.wait(lambda: bool(run.on_port(other)), "the sniffer stalled behind the DNS worker")
        full = run.collector.health.partials.get("dns_queue_full", 0)
        run.wait(lambda: sum(bool(run.on_port(p)) for p in ports) >= 16, "queries beyond the queue were lost")
        assert worker.killed == 0  # all of that happened during the hang
        overflow = [p for p in ports if run.on_port(p)]
        assert len(overflow) == run.collector.health.partials["dns_queue_full"] >= 16
        assert full <= len(overflow)
        for p in overflow:
            (ev,) = run.on_port(p)
            assert (ev.kind, ev.net.dns_malformed, ev.process.pid) == ("net.connect", True, os.getpid())
        # Stopping the collector ends the hang: the held message and the queued ones go out unparsed.
        run.close()
        got = {p: run.on_port(p) for p in [hang, *ports]}
        assert all(len(evs) == 1 for evs in got.values()), "a packet was lost or reported twice"
        assert run.collector.health.partials["dns_worker"] == 1 + 20 - len(overflow)
    finally:
        for s in keep:
            s.close()
