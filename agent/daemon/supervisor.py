"""Runs each collector on its own thread and restarts it with backoff if it raises."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.daemon.threadname import set_thread_name
from collectors.base import Collector, Emit

_log = logging.getLogger("dutywatch.collectors")


class Supervisor:
    """Keeps collectors running; one failing collector never stops the others."""

    def __init__(self, collectors: list[Collector], emit: Emit, stop: threading.Event,
                 sleep: Callable[[float], bool] | None = None, max_backoff: float = 60.0) -> None:
        self.collectors = collectors
        self.emit = emit
        self.stop = stop
        self._sleep = sleep or stop.wait
        self.max_backoff = max_backoff
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start one thread per collector."""
        for c in self.collectors:
            t = threading.Thread(target=self._keep, args=(c,), name=f"collector {c.name}", daemon=True)
            t.start()
            self.threads.append(t)

    def _keep(self, c: Collector) -> None:
        set_thread_name(c.name)
        backoff = 1.0
        while not self.stop.is_set():
            try:
                # The collector marks itself up once it is really watching.
                c.run(self.emit, self.stop)
                if self.stop.is_set():
                    break
                _log.warning("collector %s returned early; restarting", c.name)
            except Exception:
                _log.exception("collector %s failed; restarting in %.0f s", c.name, backoff)
            c.health.up = False
            c.health.restarts += 1
            if self._sleep(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff)
        c.health.up = False

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the collector threads after ``stop`` was set."""
        for t in self.threads:
            t.join(timeout)
