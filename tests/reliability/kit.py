"""Shared set-up for the reliability scenarios: a config tree in a temp dir, an in-process agent."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.daemon.agent import Agent
from agent.events import Event
from collectors.base import Availability, Emit, Health
from tests.integration.agent_harness import REGISTRY, REPO, free_port


def config_tree(tmp: Path, *, state: Path | None = None, extra: str = "", queue_size: int = 65536) -> Path:
    """agent.yaml, registry.yaml and a rules dir (the shipped packs) under ``tmp``; returns the config path."""
    assets = tmp / "assets"
    assets.mkdir(exist_ok=True)
    (tmp / "registry.yaml").write_text(REGISTRY.format(assets=assets), encoding="utf-8")
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    for f in (REPO / "rules").glob("*.yaml"):
        shutil.copy(f, rules / f.name)
    cfg = tmp / "agent.yaml"
    cfg.write_text(f"registry: {tmp / 'registry.yaml'}\nrules: [{rules}]\nstate_dir: {state or tmp / 'state'}\n"
                   f"listen: 127.0.0.1:{free_port()}\nqueue_size: {queue_size}\n{extra}"
                   + ("" if "assess:" in extra else "\nassess: {enabled: false}\n"), encoding="utf-8")
    return cfg


class Injector:
    """A collector that emits what a test hands it, as fast as asked."""

    name = "inject"

    def __init__(self) -> None:
        self.health = Health(mode="inject")
        self.batches: list[list[Event]] = []
        self.ready = threading.Event()
        self.offered = 0
        self.refused = 0
        self._emit: Emit | None = None

    def available(self) -> Availability:
        """Always available."""
        return Availability("inject")

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Hand ``emit`` to the test and wait for the stop."""
        self._emit = emit
        self.health.up = True
        self.ready.set()
        stop.wait()

    def send(self, events: list[Event]) -> int:
        """Offer events; returns how many the pipeline accepted."""
        assert self._emit is not None, "injector not started"
        ok = 0
        for e in events:
            if self._emit(e):
                ok += 1
        self.offered += len(events)
        self.refused += len(events) - ok
        return ok


class RunningAgent:
    """An Agent running ``run()`` on a thread of this process, with an injector collector."""

    def __init__(self, config: Path, *, clock: Callable[[], float] = time.time,
                 collectors: list[Any] | None = None, notifier: Any = None) -> None:
        self.injector = Injector()
        self.agent = Agent(config, clock=clock, collectors=[self.injector, *(collectors or [])],
                           notifier=notifier)
        self.thread = threading.Thread(target=self.agent.run, kwargs={"install_signals": False}, daemon=True)

    def __enter__(self) -> RunningAgent:
        self.thread.start()
        assert self.injector.ready.wait(10), "injector never started"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop and wait for the clean shutdown."""
        self.agent.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent did not stop"


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``cond`` until true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


def rss_mb() -> float:
    """This process's resident set, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the agent's exporter on loopback: (status, body)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the series of ``name`` in an exposition whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def exec_from_tmp(n: int, start: int = 0) -> list[Event]:
    """``n`` execs of programs in /tmp by zhangsan: each one a DB-MAL-001 finding, each distinguishable by pid."""
    from agent.events import Process
    return [Event("process.exec", None, "inject",
                  Process(pid=100000 + start + i, name="x", exe=f"/tmp/dropper-{start + i}", uid=1000,
                          user="zhangsan", loginuid=1000))
            for i in range(n)]


def journal_findings(config: Path, rule: str = "DB-MAL-001") -> list[dict[str, Any]]:
    """The findings of ``rule`` the journal holds, read back by `dutywatch events`."""
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "agent", "events", "--config", str(config), "--format", "json",
                        "--rule", rule, "--since", "3650d"], capture_output=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode("utf-8")  # strict: the output must be valid UTF-8 whatever the events held
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def verify(journal: Path) -> subprocess.CompletedProcess[str]:
    """`dutywatch verify` on a journal."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "agent", "verify", "--journal", str(journal)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
