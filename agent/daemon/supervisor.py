"""Runs the collectors and restarts each with backoff if it raises; one failing collector never stops the others.

Threads: a collector with ``attach``/``detach`` (``collectors.loop.LoopCollector``: it only waits
on descriptors and timers and does little per event) shares one loop thread (``dw-loop``) with the
others of its kind; every other collector keeps a thread of its own, because it blocks in a call of
its own or does enough work per event to hold up the rest (its module docstring says which).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.daemon.threadname import set_thread_name
from collectors.base import Collector, Emit
from collectors.loop import Loop, LoopCollector

_log = logging.getLogger("dutywatch.collectors")


def shares_loop(c: Collector) -> bool:
    """Whether ``c`` can run on the shared collector loop."""
    return callable(getattr(c, "attach", None)) and callable(getattr(c, "detach", None))


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
        self.loop: Loop | None = None

    def start(self) -> None:
        """Start the shared loop (if any collector can share it) and one thread per other collector."""
        shared: list[LoopCollector] = [c for c in self.collectors if shares_loop(c)]  # type: ignore[misc]
        if shared:
            self.loop = Loop()
            for lc in shared:
                self._attach(lc, 1.0)
            t = threading.Thread(target=self._serve, args=(self.loop, shared), name="collector loop", daemon=True)
            t.start()
            self.threads.append(t)
        for c in self.collectors:
            if shares_loop(c):
                continue
            t = threading.Thread(target=self._keep, args=(c,), name=f"collector {c.name}", daemon=True)
            t.start()
            self.threads.append(t)

    def _attach(self, c: LoopCollector, backoff: float) -> None:
        """Attach ``c`` on the loop's thread; when it fails, detach it and attach it again after ``backoff``."""
        loop = self.loop
        assert loop is not None

        def failed(exc: BaseException) -> None:
            _log.error("collector %s failed; restarting in %.0f s", c.name, backoff, exc_info=exc)
            try:
                c.detach()
            except Exception:
                _log.exception("collector %s: detach failed", c.name)
            c.health.up = False
            c.health.restarts += 1
            loop.call_later(backoff, lambda: self._attach(c, min(backoff * 2, self.max_backoff)), c)

        loop.on_error(c, failed)
        loop.call_soon(lambda: c.attach(loop, self.emit), c)

    def _serve(self, loop: Loop, shared: list[LoopCollector]) -> None:
        set_thread_name("loop")
        try:
            loop.run(self.stop)
        except Exception:  # the loop's own failure (not a collector's): the shared collectors are down
            _log.exception("collector loop failed")
        finally:
            for c in shared:
                try:
                    c.detach()
                except Exception:
                    _log.exception("collector %s: detach failed", c.name)
                c.health.up = False
                loop.forget(c)
            loop.close()

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
