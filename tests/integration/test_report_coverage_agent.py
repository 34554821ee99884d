"""Coverage of a real agent's timeline: started late, killed with -9, restarted, paused, stopped early."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import promkit
from tests.integration.agent_harness import AgentProcess
from tests.integration.test_self_protection import collectors

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as the agent")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path, collectors=collectors(), extra_config="protect: {pause_after: 3s}\n")
    yield a
    if a.proc is not None and a.proc.poll() is None:
        a.stop()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def test_report_coverage_follows_the_agents_timeline(agent: AgentProcess, tmp_path: Path) -> None:
    since = math.floor(time.time())
    time.sleep(3)  # the period begins before the agent does
    agent.start()
    time.sleep(2)
    killed = time.time()
    agent.kill()
    time.sleep(5)
    restarted = time.time()
    agent.start()
    time.sleep(1.5)
    agent.signal(signal.SIGSTOP)
    paused = time.time()
    time.sleep(6)
    agent.signal(signal.SIGCONT)
    resumed = time.time()
    agent.wait(lambda: any(r.get("kind") == "agent.tamper" and r["detail"].get("reason") == "paused"
                           for r in agent.events()), "no pause journaled")
    assert agent.stop() == 0
    stopped = time.time()
    time.sleep(3)  # and ends after it stopped
    until = math.ceil(time.time())
    out = tmp_path / "r.json"
    r = agent.cli("report", "--config", str(agent.config), "--format", "json", "--out", str(out),
                  "--since", _iso(since), "--until", _iso(until))
    assert r.returncode == 0, r.stderr
    (h,) = json.loads(out.read_text(encoding="utf-8"))["coverage"]["hosts"]
    assert h["host"] == "test-host-01"
    length = until - since
    assert h["monitored_seconds"] + h["before_seconds"] + h["gap_seconds"] + h["after_seconds"] == \
        pytest.approx(length, abs=0.01)
    assert h["before_seconds"] >= 2.5  # the period began before the agent
    assert h["after_seconds"] >= until - stopped - 0.5
    stretches = [(x["where"], x["since"], x["until"]) for x in h["unmonitored"]]
    # The kill: unmonitored from no later than the kill to the restart. The killed run is watched only up to
    # its last sign of life in the journal (its last record, or the heartbeat the next start names), so it
    # may read as not watched at all: never more than was proven, never less than the kill.
    assert any(a <= killed + 0.5 and b >= restarted - 0.5 for _, a, b in stretches), stretches
    # the pause: its window
    assert any(w == "gap" and a <= paused + 1.0 and b >= resumed - 1.0 for w, a, b in stretches), stretches
    assert h["monitored_seconds"] <= (killed - since - 3) + (stopped - restarted) - (resumed - paused) + 1.0


def _coverage(agent: AgentProcess, tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    r = agent.cli("report", "--config", str(agent.config), "--format", "json", "--out", str(out), *args)
    assert r.returncode == 0, r.stderr
    (h,) = json.loads(out.read_text(encoding="utf-8"))["coverage"]["hosts"]
    return dict(h)


def test_a_killed_agent_is_covered_up_to_its_last_heartbeat(tmp_path: Path) -> None:
    """kill -9 on a quiet agent: its run is proven up to its last journaled heartbeat, in the report from the
    journal and in the fleet report from an evidence bundle alike; the rest up to the restart is a gap."""
    a = AgentProcess(tmp_path, collectors=collectors(), extra_config="journal: {heartbeat: 1s}\n")
    since = math.floor(time.time())
    a.start()
    try:
        def beats() -> list[dict[str, Any]]:
            return a.events("--type", "heartbeat")
        a.wait(lambda: len(beats()) >= 3, "no heartbeats journaled by a quiet agent")
        a.kill()
        killed = time.time()
        last = max(float(r["time"]) for r in beats())
        assert last <= killed
        time.sleep(4)
        restarted = time.time()
        a.start()
        time.sleep(1)
        assert a.stop() == 0
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.kill()
    until = math.ceil(time.time()) + 1
    period = ("--since", _iso(since), "--until", _iso(until))
    local = _coverage(a, tmp_path, "local", *period)
    gaps = [x for x in local["unmonitored"] if x["where"] == "gap"]
    # the killed run ends exactly at its last heartbeat, the next run begins at its start
    assert len(gaps) == 1 and gaps[0]["since"] == pytest.approx(last, abs=0.01), local["unmonitored"]
    assert restarted - 0.5 <= gaps[0]["until"] <= restarted + 30
    # a heartbeat a second, checked on the main thread's 2 s turn: what is lost to the kill is that short
    assert killed - last <= 10
    bundle = tmp_path / "evidence.dwb"
    r = a.cli("export", "--config", str(a.config), "--since", _iso(since), "--out", str(bundle))
    assert r.returncode == 0, r.stderr
    fleet = _coverage(a, tmp_path, "fleet", *period, "--evidence", str(bundle))
    for key in ("monitored_seconds", "before_seconds", "gap_seconds", "after_seconds", "unmonitored"):
        assert fleet[key] == local[key], key


def test_a_killed_agent_in_prometheus_agrees_with_the_journal(tmp_path: Path) -> None:
    """kill -9 under a real Prometheus: both see the interruption, and Prometheus' down time (failed scrapes, from
    the first one after the kill) never exceeds what the journal leaves unmonitored (from the last heartbeat)."""
    a = AgentProcess(tmp_path, collectors=collectors(), extra_config="journal: {heartbeat: 1s}\n")
    with promkit.prometheus(tmp_path, [f"127.0.0.1:{a.port}"]) as url:
        try:
            a.start()
            since = math.floor(time.time())
            time.sleep(4)
            a.kill()
            killed = time.time()
            time.sleep(6)
            a.start()
            time.sleep(4)
            assert a.stop() == 0
            time.sleep(3)
            until = math.floor(time.time()) - 1  # Prometheus has scraped up to here
            out = tmp_path / "r.json"
            r = a.cli("report", "--config", str(a.config), "--format", "json", "--out", str(out),
                      "--since", _iso(since), "--until", _iso(until), "--prometheus", url)
            assert r.returncode == 0, r.stderr
        finally:
            if a.proc is not None and a.proc.poll() is None:
                a.kill()
    doc = json.loads(out.read_text(encoding="utf-8"))
    (h,) = doc["coverage"]["hosts"]
    (down,) = [d for d in doc["prometheus"]["downtime"] if d["instance"] == f"127.0.0.1:{a.port}"]
    gaps = [x for x in h["unmonitored"] if x["where"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["since"] <= killed <= gaps[0]["until"]
    # Prometheus saw the kill too (some 6 s of failed scrapes, and those after the stop)
    assert down["down_seconds"] >= 3, down
    # and never counts more down time than the journal leaves unmonitored (a scrape step of slack per edge)
    assert down["down_seconds"] <= h["gap_seconds"] + h["after_seconds"] + 3 * doc["prometheus"]["step"], (down, h)
