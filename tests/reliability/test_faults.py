"""Faults: a locked or corrupt journal at start, clock jumps, a collector that raises, SIGTERM in a storm."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.errors import DutyWatchError
from agent.events import Event
from collectors.base import Availability, Emit, Health
from tests.integration.agent_harness import REPO, AgentProcess
from tests.reliability.kit import (
    RunningAgent,
    config_tree,
    exec_from_tmp,
    http_get,
    journal_findings,
    metric,
    verify,
    wait_for,
)


def run_cmd(cfg: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def test_second_agent_on_a_locked_journal_refuses_clearly_and_touches_nothing(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    with RunningAgent(cfg) as ra:
        ra.injector.send(exec_from_tmp(10))
        wait_for(lambda: ra.agent.writer.durable_seq >= 10, "findings not journaled")
        db = tmp_path / "state" / "journal.db"
        r = run_cmd(cfg)
        assert r.returncode == 1
        out = r.stdout + r.stderr
        assert "in use by another process" in out and f"pid {os.getpid()}" in out, out
        assert not list(db.parent.glob("*.corrupt-*")), "a locked journal must never be quarantined"
    assert verify(tmp_path / "state" / "journal.db").returncode == 0


def test_journal_held_by_a_foreign_sqlite_writer_is_a_clear_error(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    with RunningAgent(cfg):
        pass
    db = tmp_path / "state" / "journal.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        before = hashlib.sha256(db.read_bytes()).hexdigest()
        r = run_cmd(cfg)
        assert r.returncode == 1
        assert "locked" in r.stdout + r.stderr, r.stdout + r.stderr
        assert not list(db.parent.glob("*.corrupt-*"))
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_corrupt_journal_at_start_is_kept_aside_byte_for_byte_and_a_new_one_starts(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    with RunningAgent(cfg) as ra:
        ra.injector.send(exec_from_tmp(50))
        wait_for(lambda: ra.agent.writer.durable_seq >= 50, "findings not journaled")
    db = tmp_path / "state" / "journal.db"
    raw = bytearray(db.read_bytes())
    raw[100:4096] = os.urandom(3996)  # the header and the schema page
    db.write_bytes(bytes(raw))
    digest = hashlib.sha256(raw).hexdigest()
    with RunningAgent(cfg) as ra:
        ra.injector.send(exec_from_tmp(5, 1000))
        wait_for(lambda: ra.agent.writer.durable_seq >= 5, "new journal not written")
    (kept,) = db.parent.glob("journal.db.corrupt-*")
    assert kept.stat().st_mode & 0o077 == 0
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == digest, "the damaged file was changed"
    v = verify(db)
    assert v.returncode == 0, v.stdout + v.stderr
    assert {r["event"]["process"]["pid"] for r in journal_findings(cfg)} == {101000 + i for i in range(5)}
    kinds = [r["kind"] for r in _all(cfg) if r.get("type") == "lifecycle"]
    assert kinds[0] == "journal.quarantined"


def _all(cfg: Path) -> list[dict[str, object]]:
    import json
    r = subprocess.run([sys.executable, "-m", "agent", "events", "--config", str(cfg), "--format", "json",
                        "--type", "all", "--since", "3650d",
                        "--until", "2200-01-01"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


class JumpingClock:
    """Wall time plus an offset the test moves, as NTP or an operator would."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_clock_jumping_back_and_forward_keeps_seq_order_and_verify(tmp_path: Path) -> None:
    cfg = config_tree(tmp_path)
    clock = JumpingClock()
    sent = 0
    with RunningAgent(cfg, clock=clock) as ra:
        for jump in (0.0, -3600.0, -86400.0 * 30, +86400.0 * 400, -86400.0 * 400):
            clock.offset = jump
            ra.injector.send(exec_from_tmp(100, sent))
            sent += 100
            wait_for(lambda n=sent: ra.agent.writer.durable_seq >= n, "findings not journaled after a jump")
    records = _all(cfg)
    seqs = [int(r["seq"]) for r in records]  # type: ignore[call-overload]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap in sequence numbers"
    assert sum(r.get("type") == "finding" for r in records) == sent, "records lost across clock jumps"
    v = verify(tmp_path / "state" / "journal.db")
    assert v.returncode == 0, v.stdout + v.stderr


class Flaky:
    """A collector that raises the first ``fails`` times it runs, then emits one event and waits."""

    name = "flaky"

    def __init__(self, fails: int) -> None:
        self.health = Health(mode="test")
        self.fails = fails
        self.runs = 0

    def available(self) -> Availability:
        return Availability("test")

    def run(self, emit: Emit, stop: threading.Event) -> None:
        self.runs += 1
        if self.runs <= self.fails:
            raise RuntimeError(f"flaky collector failure {self.runs}")
        self.health.up = True
        emit(exec_from_tmp(1, 5000)[0])
        stop.wait()


def test_collector_that_raises_is_restarted_with_backoff_and_the_others_keep_going(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_tree(tmp_path)
    flaky = Flaky(fails=2)
    with RunningAgent(cfg, collectors=[flaky]) as ra:
        port = ra.agent.exporter.port
        t0 = time.monotonic()
        ra.injector.send(exec_from_tmp(20))  # the injector works while flaky is down
        wait_for(lambda: ra.agent.writer.durable_seq >= 20, "other collector's findings not journaled")
        wait_for(lambda: flaky.runs >= 3, "flaky collector not restarted", 30)
        took = time.monotonic() - t0
        text = http_get(port, "/metrics")[1]
        assert metric(text, "dutywatch_collector_restarts_total", collector="flaky") == 2
        assert metric(text, "dutywatch_collector_restarts_total", collector="inject") == 0
        assert metric(text, "dutywatch_collector_up", collector="inject") == 1
        wait_for(lambda: metric(http_get(port, "/metrics")[1], "dutywatch_collector_up", collector="flaky") == 1,
                 "flaky collector not up after restarts")
    assert took >= 2.5, "restarts did not back off (1 s, then 2 s)"
    assert sum("collector flaky failed; restarting" in r.getMessage() for r in caplog.records) == 2
    assert len(journal_findings(cfg)) == 21


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the netlink process connector")
def test_sigterm_during_an_exec_storm_stops_cleanly_and_loses_nothing_accepted(tmp_path: Path) -> None:
    # As shipped: folding on, the audit source on beside the process connector.
    off = "{enabled: false}"
    agent = AgentProcess(tmp_path, collectors=f"  process: {{enabled: true, mode: netlink}}\n  network: {off}\n"
                                              f"  files: {off}\n  media: {off}\n  host: {off}\n")
    exe = tmp_path / "dw-storm-true"
    shutil.copy("/bin/true", exe)
    agent.start()
    storm = subprocess.Popen(["/bin/sh", "-c", f"i=0; while [ $i -lt 3000 ]; do {exe}; i=$((i+1)); done"])
    try:
        agent.wait(lambda: agent.metric("dutywatch_findings_total", rule="DB-MAL-001") >= 200,
                   "storm not seen", 60)
        agent.signal(signal.SIGTERM)
        assert agent.stop() == 0
    finally:
        storm.kill()
        storm.wait(30)
    records = agent.events("--since", "3650d")
    stop = records[-1]
    assert stop["type"] == "lifecycle" and stop["kind"] == "agent.stop", stop
    findings = [r for r in records if r.get("type") == "finding"]
    # A folded record stands for its count of findings, the first of its kind (journaled at once) for one.
    made = sum((r.get("folded") or {}).get("count", 1) for r in findings)
    # The stop record counts every finding the pipeline made; each is in the journal, folded or not.
    assert made == stop["detail"]["findings"] >= 200
    assert len(findings) < made, "the storm's repeats were not folded"
    v = agent.cli("verify", "--journal", str(agent.state / "journal.db"))
    assert v.returncode == 0, v.stdout + v.stderr
    assert "chained, not yet signed" not in v.stdout
    print(f"SIGTERM in an exec storm: {made} findings made, all journaled in {len(findings)} records, clean stop")


def test_project_errors_only(tmp_path: Path) -> None:
    """A state_dir that is a file is refused with a project error, not a traceback."""
    cfg = config_tree(tmp_path, state=tmp_path / "afile")
    (tmp_path / "afile").write_text("x")
    r = run_cmd(cfg)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert "afile" in r.stdout + r.stderr
    assert issubclass(DutyWatchError, Exception)
    _ = Event
