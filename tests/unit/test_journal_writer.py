"""The journal writer on a real journal: alert heads witnessed at once, and coalesced in a storm."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.daemon.journal_writer import Coalesced, JournalWriter
from agent.journal.store import Journal
from agent.metrics import Metrics

HOST = "dw-test-host"


def _finding(i: int, action: str = "alert") -> dict[str, Any]:
    return {"type": "finding", "time": time.time(), "host": HOST, "rule": "DB-MAL-001", "severity": "high",
            "action": action, "event": {"event": {"kind": "process.exec"}, "process": {"pid": 1000 + i}},
            "accountable": {"operator": "zhangsan", "unit": "办公室"}}


class _Witnessing:
    """A writer whose alert batches ask for the head to be witnessed, as the agent's do."""

    def __init__(self, state: Path, every: float) -> None:
        self.journal = Journal(state, host=HOST, checkpoint_every=100_000, checkpoint_interval=3600)
        self.sent: list[tuple[float, int]] = []  # (monotonic time, head seq) of each head witnessed
        self.heads = Coalesced(self._send, every)
        self.writer = JournalWriter(self.journal, Metrics("test", process_metrics=False),
                                    on_commit=self._commit, on_idle=self.heads.due)

    def _send(self) -> None:
        self.sent.append((time.monotonic(), self.journal.head.seq))

    def _commit(self, records: list[dict[str, Any]]) -> None:
        if any(r.get("action") == "alert" for r in records):
            self.heads.ask()

    def wait_durable(self, seq: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.writer.durable_seq < seq:
            assert time.monotonic() < deadline, "records not written"
            time.sleep(0.01)


@pytest.fixture
def witnessing(tmp_path: Path) -> Iterator[_Witnessing]:
    w = _Witnessing(tmp_path / "state", every=1.0)
    w.writer.start()
    try:
        yield w
    finally:
        w.writer.stop()


def test_a_lone_alert_is_witnessed_at_once(witnessing: _Witnessing) -> None:
    start = witnessing.journal.head.seq
    witnessing.writer.put(_finding(0))
    witnessing.wait_durable(start + 1)
    assert witnessing.sent and witnessing.sent[-1][1] == start + 1


def test_audit_findings_ask_for_no_head(witnessing: _Witnessing) -> None:
    """The near miss: records that are not alerts are not witnessed one by one."""
    start = witnessing.journal.head.seq
    for i in range(20):
        witnessing.writer.put(_finding(i, action="audit"))
    witnessing.wait_durable(start + 20)
    time.sleep(1.2)
    assert witnessing.sent == []


def test_an_alert_storm_sends_one_head_a_second_and_the_last_alert_is_witnessed(
        witnessing: _Witnessing) -> None:
    start = witnessing.journal.head.seq
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:  # many small batches, each holding an alert
        witnessing.writer.put(_finding(n))
        n += 1
        witnessing.wait_durable(start + n)
    assert n > 10, "the storm needs more batches than heads"
    # No new record comes after the storm: the writer wakes by itself for the owed head.
    deadline = time.monotonic() + 10
    while not witnessing.sent or witnessing.sent[-1][1] < start + n:
        assert time.monotonic() < deadline, f"the last alert (seq {start + n}) was never witnessed"
        time.sleep(0.05)
    times = [t for t, _ in witnessing.sent]
    assert len(times) <= 5, f"{len(times)} heads for a 2.5 s storm of {n} alert batches"
    assert all(b - a >= 0.99 for a, b in itertools.pairwise(times))
    # The first head went out with the first alert, not a second later.
    assert witnessing.sent[0][1] == start + 1


def test_coalesced_counts_time_from_the_last_send() -> None:
    now = [100.0]
    sends: list[float] = []
    c = Coalesced(lambda: sends.append(now[0]), 1.0, monotonic=lambda: now[0])
    assert c.due() is None
    c.ask()
    assert sends == [100.0] and c.due() is None
    now[0] = 100.4
    c.ask()
    assert sends == [100.0] and c.due() == pytest.approx(0.6)
    now[0] = 101.0
    assert c.due() is None and sends == [100.0, 101.0]
    now[0] = 105.0
    c.ask()
    assert sends == [100.0, 101.0, 105.0]


def _until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "not written in time"
        time.sleep(0.01)


def test_a_quiet_journal_gets_a_signed_heartbeat_and_a_busy_one_none(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state", host=HOST, checkpoint_every=100_000, checkpoint_interval=3600)
    forwarded: list[dict[str, Any]] = []
    writer = JournalWriter(journal, Metrics("test", process_metrics=False), on_checkpoint=forwarded.append)
    writer.start()
    try:
        now = time.time()
        writer.put(_finding(1))
        # a record a moment ago proves the agent alive: no heartbeat owed yet
        assert not writer.heartbeat(now + 10, 300, {"pid": 1})
        assert writer.heartbeat(now + 301, 300, {"pid": 1})
        _until(lambda: bool(forwarded))
        # it counts as the newest record: the next is owed a full interval later, not at every check
        assert not writer.heartbeat(now + 302, 300, {"pid": 1})
        # chained and signed at once (a kill right after it leaves it provable) ...
        cp = journal.latest_checkpoint()
        assert cp is not None and cp.seq == 2 and journal.unsigned == 0
        # ... and that checkpoint, signing the finding before it too, is forwarded like any other
        assert [f["seq"] for f in forwarded] == [2]
        # a second heartbeat alone: signed, but its checkpoint is not sent to the witnesses
        assert writer.heartbeat(now + 602, 300, {"pid": 1})
        _until(lambda: writer.durable_seq >= 3 and not writer.pending())
        time.sleep(0.2)
        cp = journal.latest_checkpoint()
        assert cp is not None and cp.seq == 3
        assert [f["seq"] for f in forwarded] == [2]
    finally:
        writer.stop()
    import sqlite3
    kinds = [r[0] for r in sqlite3.connect(tmp_path / "state" / "journal.db").execute(
        "SELECT json_extract(CAST(body AS TEXT), '$.kind') FROM records ORDER BY seq")]
    assert kinds == [None, "agent.heartbeat", "agent.heartbeat"]


def test_the_heartbeat_setting_is_checked(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.errors import LoadErrors
    cfg = tmp_path / "agent.yaml"
    assert load_config(_write(cfg, "{}\n")).journal.heartbeat == 300
    assert load_config(_write(cfg, "journal: {heartbeat: 2m}\n")).journal.heartbeat == 120
    with pytest.raises(LoadErrors, match=r"agent\.yaml:1:22: journal\.heartbeat must be between 1s and 1h"):
        load_config(_write(cfg, "journal: {heartbeat: 2h}\n"))
    with pytest.raises(LoadErrors, match=r"agent\.yaml:1:22: journal\.heartbeat: bad duration"):
        load_config(_write(cfg, "journal: {heartbeat: often}\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
