"""The shared collector loop: collectors on it keep the supervisor's contract (restart, health, stop)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from agent.daemon.supervisor import Supervisor, shares_loop
from agent.events import Event
from collectors.base import Availability, Health, StopEvent
from collectors.host import HostCollector
from collectors.loop import Loop
from collectors.media import MediaCollector


class Flaky:
    """A loop collector on a real pipe: raises on the first byte it reads, then works."""

    name = "flaky"

    def __init__(self) -> None:
        self.health = Health()
        self.attached = 0
        self.read: list[bytes] = []
        self._r, self.w = os.pipe()

    def available(self) -> Availability:
        return Availability("pipe")

    def run(self, emit: object, stop: threading.Event) -> None:
        raise AssertionError("a loop collector is never run on a thread by the supervisor")

    def attach(self, loop: Loop, emit: object) -> None:
        self.attached += 1
        self.health.mode, self.health.up = "pipe", True
        loop.register(self._r, self._readable, self)

    def _readable(self) -> None:
        data = os.read(self._r, 1)
        if self.attached == 1:
            raise RuntimeError("broken on purpose")
        self.read.append(data)

    def detach(self) -> None:
        self.health.up = False


def _up(c: HostCollector | MediaCollector | Flaky) -> bool:
    return c.health.up


def _until(cond: object, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if callable(cond) and cond():
            return True
        time.sleep(0.05)
    return False


def test_loop_collectors_share_one_thread_restart_alone_and_stop(tmp_path: Path) -> None:
    host, flaky = HostCollector({"interval": 30.0}), Flaky()
    media = MediaCollector({"roots": [str(tmp_path)]})
    assert shares_loop(host) and shares_loop(flaky) and shares_loop(media)
    events: list[Event] = []
    stop = StopEvent()

    def emit(e: Event) -> bool:
        events.append(e)
        return True

    sup = Supervisor([host, media, flaky], emit, stop)  # type: ignore[list-item]
    sup.start()
    try:
        assert len(sup.threads) == 1, "all three collectors run on the one loop thread"
        assert _until(lambda: host.health.up and media.health.up and flaky.health.up)
        assert host.health.mode == "netlink"
        assert any(e.kind == "iface.up" and e.iface.name == "lo" for e in events)  # the start report
        os.write(flaky.w, b"a")  # the first read raises: flaky is detached and attached again after 1 s
        assert _until(lambda: flaky.health.restarts == 1)
        assert not flaky.health.up and host.health.up and media.health.up, "a failing collector takes no other one down"
        assert _until(lambda: flaky.attached == 2 and flaky.health.up, 5.0)
        os.write(flaky.w, b"b")
        assert _until(lambda: flaky.read == [b"b"])
        assert host.health.restarts == 0 and media.health.restarts == 0
    finally:
        began = time.monotonic()
        stop.set()
        sup.join(5.0)
    assert not sup.threads[0].is_alive(), "the loop ends at stop"
    assert time.monotonic() - began < 5.0
    assert not _up(host) and not _up(media) and not _up(flaky)
    assert media._fd is None, "the mount table is closed at stop"
    assert host._sock is None, "the rtnetlink socket is closed at stop"


def test_a_served_descriptor_is_read_on_its_own_thread_until_stopped() -> None:
    from collectors.loop import Served
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    got: list[bytes] = []
    done = threading.Event()

    def readable() -> None:
        got.append(os.read(r, 100))
        done.set()
    served = Served(r, readable, "test-served")
    served.start()
    try:
        os.write(w, b"hello")
        assert done.wait(10) and got == [b"hello"] and served.alive
    finally:
        served.stop()
    assert not served.alive
    os.write(w, b"later")  # nothing reads it once stopped
    time.sleep(0.1)
    assert got == [b"hello"]
    os.close(r)
    os.close(w)
