"""The pipeline's counts are exact: what the stop record says is what the sinks were handed."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.attribution import Attributor
from agent.daemon.pipeline import Pipeline, Stage
from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.events import Event, Process
from agent.metrics import Metrics
from agent.packages import no_owners
from agent.paths import DEMO_REGISTRY
from agent.registry import load_registry

RULES = """\
pack: counts
rules:
  - id: T-EXEC
    title: {zh: 执行, en: exec}
    when: event.kind == "process.exec"
    severity: info
    action: audit
    accountable: [operator]
    controls: [test]
    message: {zh: x, en: x}
  - id: T-TAMPER
    title: {zh: 篡改, en: tamper}
    when: event.kind == "agent.tamper"
    severity: high
    action: alert
    accountable: [operator]
    controls: [test]
    message: {zh: y, en: y}
"""


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[tuple[Pipeline, list[dict[str, Any]], Metrics]]:
    (tmp_path / "counts.yaml").write_text(RULES, encoding="utf-8")
    stage = Stage(Attributor(load_registry(DEMO_REGISTRY), lambda uid: None, no_owners),
                  Engine(load_rules([tmp_path / "counts.yaml"])))
    metrics = Metrics("test")
    p = Pipeline(stage, metrics, capacity=1 << 20, own=lambda _p: False)
    seen: list[dict[str, Any]] = []
    p.sinks.append(seen.append)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: races show
    yield p, seen, metrics
    sys.setswitchinterval(old)


def _exec(i: int) -> Event:
    return Event("process.exec", 1.0, "inject", Process(pid=10 + i, exe="/tmp/x", uid=1000, loginuid=1000))


def test_findings_made_on_two_threads_at_once_are_all_counted(
        pipe: tuple[Pipeline, list[dict[str, Any]], Metrics]) -> None:
    p, seen, _ = pipe
    stop = threading.Event()
    worker = threading.Thread(target=p.run, args=(stop,))
    worker.start()
    n, m = 20000, 3000
    feeder = threading.Thread(target=lambda: [p.offer(_exec(i)) for i in range(n)])
    feeder.start()
    for _ in range(m):  # the main loop's tamper records, evaluated while the worker drains the storm
        p.process_now(Event("agent.tamper", 1.0, "agent", detail="signal: x"))
    feeder.join()
    stop.set()
    p.wake()
    worker.join(60)
    assert p.close(not worker.is_alive()) == 0
    assert len(seen) == p.findings == n + m
    assert p.processed == n + m
    assert sum(r["rule"] == "T-TAMPER" for r in seen) == m


def test_what_is_offered_after_the_worker_ended_is_evaluated_or_refused_and_counted(
        pipe: tuple[Pipeline, list[dict[str, Any]], Metrics]) -> None:
    p, seen, metrics = pipe
    stop = threading.Event()
    stop.set()
    worker = threading.Thread(target=p.run, args=(stop,))
    worker.start()
    worker.join(10)
    # A collector that outlived the supervisor's join still offers: queued after the worker ended.
    assert all(p.offer(_exec(i)) for i in range(5))
    assert p.close(worker_ended=True) == 0
    assert len(seen) == p.findings == p.processed == 5
    assert not p.offer(_exec(99))  # after close: refused, and counted, never silently lost
    assert metrics.pipeline_drops.value(("inject", "stopping")) == 1
