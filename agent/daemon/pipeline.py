"""The event pipeline: a bounded queue, one worker, independent sinks.

Collectors ``offer`` events without blocking; a full queue drops the event
and counts it per collector (``events_dropped_total{reason="queue_full"}``).
Events of the agent's own processes (the agent and its descendants) are
set aside unevaluated and counted (``events_own_total``): what the agent does is no one's
operation. The worker attributes each event, evaluates it, counts it, and hands each
finding's record to the sinks. The stage (attributor and engine) is swapped
whole on reload, so an event is never judged by half a rule set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.attribution import Attributor
from agent.daemon.ownprocs import OwnProcesses
from agent.daemon.threadname import set_thread_name
from agent.engine.engine import Engine, Finding
from agent.events import Event, Process
from agent.metrics import Metrics

_log = logging.getLogger("dutywatch.pipeline")
FindingSink = Callable[[dict[str, Any]], None]
_OPERATED = ("process.", "net.", "file.", "auth.", "account.", "media.")  # agent.* events stay


@dataclass(frozen=True, slots=True)
class Stage:
    """What judges events: the registry's attributor and the compiled rules."""

    attribute: Attributor
    engine: Engine


class Pipeline:
    """Bounded queue plus worker; see the module docstring."""

    def __init__(self, stage: Stage, metrics: Metrics, *, capacity: int = 65536,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 own: Callable[[Process], bool] | None = None) -> None:
        self.stage = stage
        self.is_own = own if own is not None else OwnProcesses()
        self.own = 0  # events of the agent's own processes, not evaluated
        self.metrics = metrics
        self.capacity = capacity
        self.clock = clock
        self.monotonic = monotonic
        self.sinks: list[FindingSink] = []
        self._queue: deque[Event] = deque()
        self._wake = threading.Event()
        self.accepted = 0
        self.processed = 0
        self.findings = 0
        self.last_progress = monotonic()
        self._busy = False  # the worker holds events taken off the queue
        metrics.watch_queue(self.depth, capacity)

    def depth(self) -> int:
        """Events waiting."""
        return len(self._queue)

    def offer(self, event: Event) -> bool:
        """Queue an event; False (and counted) when the queue is full."""
        if len(self._queue) >= self.capacity:
            self.metrics.dropped(event.collector or "unknown", "queue_full")
            return False
        self._queue.append(event)
        self.accepted += 1
        if not self._wake.is_set():
            self._wake.set()
        return True

    def wake(self) -> None:
        """End the worker's wait for events (at stop, after the stop event is set)."""
        self._wake.set()

    def stalled(self, after: float) -> bool:
        """True when events wait, or one is in hand, but none was processed for ``after`` seconds."""
        return (self._busy or bool(self._queue)) and self.monotonic() - self.last_progress > after

    def run(self, stop: threading.Event) -> None:
        """Process events until ``stop`` is set and the queue is empty."""
        set_thread_name("pipeline")
        queue = self._queue
        while True:
            if not queue:
                if stop.is_set():
                    return
                self._wake.clear()
                if not queue and not stop.is_set():
                    self._wake.wait()  # until an event is offered or wake() is called at stop
                self.last_progress = self.monotonic()
                continue
            self._busy = True
            try:
                self._drain(queue, 256)
            finally:
                self._busy = False

    def _drain(self, queue: deque[Event], n: int) -> None:
        stage = self.stage
        metrics = self.metrics
        perf = time.perf_counter
        for _ in range(n):
            try:
                event = queue.popleft()
            except IndexError:
                break
            if event.process.pid is not None and event.kind.startswith(_OPERATED) and self.is_own(event.process):
                self.own += 1
                metrics.own_event(event.kind)
                continue
            t0 = perf()
            try:
                attributed = stage.attribute(event)
                rules = stage.engine.match(attributed)
            except Exception:  # a bug in a stage must cost one event, not the agent
                _log.exception("event could not be evaluated: %s", event.kind)
                metrics.dropped(event.collector or "unknown", "evaluation_error")
                continue
            metrics.observe_evaluation(perf() - t0)
            metrics.event(event.kind)
            self.processed += 1
            for rule in rules:
                self._emit(Finding(rule, attributed))
        self.last_progress = self.monotonic()

    def _emit(self, finding: Finding) -> None:
        record = finding.to_record()
        if record["time"] is None:
            record["time"] = self.clock()
        self.findings += 1
        self.metrics.finding(finding.rule.id, finding.rule.severity, finding.rule.action,
                             finding.event.host.unit)
        for sink in self.sinks:
            sink(record)

    def process_now(self, event: Event) -> int:
        """Evaluate one event on the caller's thread (lifecycle events); returns findings made."""
        before = self.findings
        self._queue.appendleft(event)
        self._drain(self._queue, 1)
        return self.findings - before
