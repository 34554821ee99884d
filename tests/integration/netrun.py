"""A network collector running on a thread for a test, its events collected (shared by the network tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from agent.events import Event
from collectors.network import NetworkCollector


class Running:
    """A collector running on a thread, its events collected."""

    def __init__(self, collector: NetworkCollector) -> None:
        self.collector = collector
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.wait(lambda: collector.health.up, "collector never came up")

    def _run(self) -> None:
        try:
            self.collector.run(lambda e: self.events.append(e) is None, self.stop)
        except BaseException as exc:
            self.error = exc

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        """Until ``cond()`` holds; fails naming ``what`` after ``timeout`` s or when the collector failed."""
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.error is None, f"collector failed: {self.error}"
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    def find(self, pred: Callable[[Event], bool], what: str) -> Event:
        """The first event matching ``pred``, waiting for it."""
        found: list[Event] = []
        self.wait(lambda: bool(found.extend(e for e in list(self.events) if pred(e)) or found), what)
        return found[0]

    def on_port(self, port: int) -> list[Event]:
        """The events whose local port is ``port``."""
        return [e for e in list(self.events) if e.net.local_port == port]

    def close(self) -> None:
        """Stop the collector; it must return, without an error, and say it is down."""
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "run() did not return after stop"
        assert self.error is None, f"collector failed: {self.error}"
        assert not self.collector.health.up


def started() -> Iterator[Callable[[NetworkCollector], Running]]:
    """The body of a ``running`` fixture: start collectors with the function yielded, closed at the end."""
    runs: list[Running] = []

    def start(c: NetworkCollector) -> Running:
        runs.append(Running(c))
        return runs[-1]

    yield start
    for r in runs:
        r.close()
