"""One contract for every collector: the shape DESIGN and collectors/base.py promise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.events import KIND_SET, Event
from collectors.base import Availability, Collector, Health, Sources
from collectors.files import FilesCollector
from collectors.host import HostCollector
from collectors.media import MediaCollector
from collectors.network import NetworkCollector
from collectors.process import ProcessCollector


def _files(tmp: Path) -> Collector:
    return FilesCollector({"paths": [str(tmp)]}, Sources())


FACTORIES: dict[str, Callable[[Path], Any]] = {
    "process": lambda tmp: ProcessCollector({"mode": "auto"}, Sources(), poll_interval=0.2),
    "network": lambda tmp: NetworkCollector({"mode": "auto", "interfaces": ["lo"]}, Sources()),
    "files": _files,
    "media": lambda tmp: MediaCollector({"roots": [str(tmp)]}, Sources()),
    "host": lambda tmp: HostCollector({"interval": 1.0}, Sources()),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_collector_keeps_the_contract(name: str, tmp_path: Path) -> None:
    c = FACTORIES[name](tmp_path)
    assert c.name == name
    assert isinstance(c.health, Health)
    avail = c.available()
    assert isinstance(avail, Availability)
    assert avail.mode is not None, f"{name} cannot run here: {avail.reason}"
    events: list[Event] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            c.run(lambda e: events.append(e) is None, stop)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(1.5)
    assert not errors, errors
    assert t.is_alive(), f"{name}.run returned before stop was set"
    assert c.health.mode not in ("", "off"), f"{name} does not report its mode"
    stop.set()
    t.join(5.0)
    assert not t.is_alive(), f"{name}.run did not return within 5 s of stop"
    for e in events:  # whatever it saw meanwhile is a well-formed event of a known kind, from this collector
        assert isinstance(e, Event) and e.kind in KIND_SET and e.collector == name
        assert Event.from_json(e.to_json()) == e
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in c.health.drops.items())
