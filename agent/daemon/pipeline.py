"""The event pipeline: a bounded queue, one worker, independent sinks.

Collectors ``offer`` events without blocking; a full queue drops the event
and counts it per collector (``events_dropped_total{reason="queue_full"}``).
Events of the agent's own processes (the agent and its descendants) are
set aside unevaluated and counted (``events_own_total``): what the agent does is no one's
operation. The worker attributes each event, evaluates it, counts it, and hands each
finding's record to the sinks. The stage (attributor and engine) is swapped
whole on reload, so an event is never judged by half a rule set.

Counts are exact, for the stop record: the worker and ``process_now`` (the
agent's own lifecycle events, on the caller's thread) each keep their own
tally, so no increment is lost to the other thread, and the caller never takes
an event off the worker's queue. At stop, ``close`` refuses what collectors
still offer (counted as dropped, reason ``stopping``) and evaluates what the
queue still holds after the worker ended: every accepted event is processed,
set aside as the agent's own, or counted as failed.
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


class _Tally:
    """What one thread evaluated (only that thread writes it)."""

    __slots__ = ("findings", "own", "processed")

    def __init__(self) -> None:
        self.processed = 0
        self.findings = 0
        self.own = 0


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
        self.metrics = metrics
        self.capacity = capacity
        self.clock = clock
        self.monotonic = monotonic
        self.sinks: list[FindingSink] = []
        self._queue: deque[Event] = deque()
        self._wake = threading.Event()
        self.accepted = 0
        self._worker = _Tally()  # written by the worker thread only
        self._caller = _Tally()  # written under _now_lock only (process_now, close)
        self._now_lock = threading.Lock()
        self.closed = False
        self.last_progress = monotonic()
        self._busy = False  # the worker holds events taken off the queue
        metrics.watch_queue(self.depth, capacity)

    @property
    def processed(self) -> int:
        """Events evaluated."""
        return self._worker.processed + self._caller.processed

    @property
    def findings(self) -> int:
        """Findings made (each handed to the sinks once)."""
        return self._worker.findings + self._caller.findings

    @property
    def own(self) -> int:
        """Events of the agent's own processes, set aside unevaluated."""
        return self._worker.own + self._caller.own

    def depth(self) -> int:
        """Events waiting."""
        return len(self._queue)

    def offer(self, event: Event) -> bool:
        """Queue an event; False (and counted) when the queue is full or the pipeline closed."""
        if len(self._queue) >= self.capacity or self.closed:
            self.metrics.dropped(event.collector or "unknown", "stopping" if self.closed else "queue_full")
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
                self._drain(queue, 256, self._worker)
            finally:
                self._busy = False

    def _drain(self, queue: deque[Event], n: int, tally: _Tally) -> None:
        stage = self.stage
        metrics = self.metrics
        perf = time.perf_counter
        kinds: dict[str, int] = {}
        took: list[float] = []
        try:
            for _ in range(n):
                try:
                    event = queue.popleft()
                except IndexError:
                    break
                if event.process.pid is not None and event.kind.startswith(_OPERATED) and self.is_own(event.process):
                    tally.own += 1
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
                took.append(perf() - t0)
                kinds[event.kind] = kinds.get(event.kind, 0) + 1
                tally.processed += 1
                for rule in rules:
                    self._emit(Finding(rule, attributed, self.stage.attribute.names), tally)
        finally:
            # Counted per batch taken off the queue (at most 256 events), not per event: one lock each.
            if took:
                metrics.observe_evaluations(took)
                metrics.events_counted(kinds)
            self.last_progress = self.monotonic()

    def _emit(self, finding: Finding, tally: _Tally) -> None:
        record = finding.to_record()
        if record["time"] is None:
            record["time"] = self.clock()
        tally.findings += 1
        self.metrics.finding(finding.rule.id, finding.rule.severity, finding.rule.action,
                             finding.event.host.unit)
        for sink in self.sinks:
            sink(record)

    def process_now(self, event: Event) -> int:
        """Evaluate one event on the caller's thread (lifecycle events); returns findings made."""
        with self._now_lock:
            before = self._caller.findings
            self._drain(deque((event,)), 1, self._caller)
            return self._caller.findings - before

    def close(self, worker_ended: bool) -> int:
        """Refuse further offers; evaluate what is still queued if the worker has ended. Returns events left."""
        self.closed = True
        if not worker_ended:
            return len(self._queue)  # the worker still holds the queue: never two drainers on it
        with self._now_lock:
            while self._queue:
                self._drain(self._queue, 256, self._caller)
        return 0
