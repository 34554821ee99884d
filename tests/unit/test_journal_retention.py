"""Retention: pruning by age and size keeps the chain verifiable and says what it did."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from test_journal_support import HOST, T0, finding, raw_db, stepping_clock

from agent.journal.store import Journal
from agent.journal.verify import verify_journal

DAY = 86400.0


def _pruned_records(db: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT body FROM records WHERE type = 'lifecycle'").fetchall()
    finally:
        conn.close()
    return [r for r in (json.loads(b) for (b,) in rows) if r["kind"] == "journal.pruned"]


def test_prune_by_age(tmp_path: Path, crypto: str) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(T0 + 200 * DAY),
                 retention_days=180, checkpoint_every=7, crypto=crypto) as j:
        j.append_many([finding(i, t=T0 + i * DAY) for i in range(40)])  # day 0..39
        assert j.prune(now=T0 + 200 * DAY) is not None
        result = j.prune(now=T0 + 200 * DAY)
        assert result is None  # nothing more is old enough
    db = tmp_path / "s" / "journal.db"
    r = verify_journal(db)
    assert r.ok, r.problem
    assert r.first_seq == 21 and r.last_seq == 41  # days 20..39 kept, plus the pruned record
    [note] = _pruned_records(db)
    assert note["detail"] == {"removed": 20, "up_to_seq": 20, "reason": "age",
                              "retention_days": 180, "max_size_mb": 2048, "alerts_carried": 0}


def test_prune_keeps_a_prefix_when_the_clock_jumped(tmp_path: Path) -> None:
    times = [T0, T0 + DAY, T0 + 300 * DAY, T0 + 2 * DAY, T0 + 3 * DAY]  # a jump forward, then back
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(T0 + 200 * DAY)) as j:
        j.append_many([finding(i, t=t) for i, t in enumerate(times)])
        res = j.prune(now=T0 + 200 * DAY)
        assert res is not None and res.up_to_seq == 2  # old records after seq 3 wait for it
    r = verify_journal(tmp_path / "s" / "journal.db")
    assert r.ok and r.first_seq == 3


def test_prune_everything_then_continue(tmp_path: Path) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(T0 + 400 * DAY)) as j:
        j.append_many([finding(i) for i in range(10)])
        res = j.prune(now=T0 + 400 * DAY)
        assert res is not None and res.removed == 10 and res.record_seq == 11
    with Journal(tmp_path / "s", host=HOST) as j:
        assert j.append(finding(99)) == 12
    r = verify_journal(tmp_path / "s" / "journal.db")
    assert r.ok and (r.first_seq, r.last_seq) == (11, 12)


def test_prune_by_size(tmp_path: Path) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(), max_size_mb=0.25,
                 retention_days=0) as j:
        for start in range(0, 1000, 100):
            j.append_many([finding(i) for i in range(start, start + 100)])
        res = j.prune()
        assert res is not None and res.reason == "size" and res.removed > 0
        assert j.prune() is None  # within the cap now
    db = tmp_path / "s" / "journal.db"
    r = verify_journal(db)
    assert r.ok and r.first_seq == res.up_to_seq + 1
    conn = sqlite3.connect(db)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    assert pages * size <= 0.25 * 1024 * 1024  # the file itself shrank


def test_forged_prune_anchor_is_named(tmp_path: Path, crypto: str) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(T0 + 400 * DAY), crypto=crypto) as j:
        j.append_many([finding(i, t=T0 + i * DAY) for i in range(300)])
        j.prune(now=T0 + 400 * DAY)
    db = tmp_path / "s" / "journal.db"
    with raw_db(db) as c:
        # Hide more history: drop records and move the anchor along.
        c.execute("DELETE FROM records WHERE seq < 260")
        c.execute("UPDATE anchors SET seq = 260, prev = (SELECT prev FROM records WHERE seq = 260)")
    r = verify_journal(db)
    assert r.problem is not None and r.problem.subject == "prune anchor"
    assert "forged" in r.problem.what


def test_deleting_the_anchor_is_named(tmp_path: Path, crypto: str) -> None:
    with Journal(tmp_path / "s", host=HOST, clock=stepping_clock(T0 + 400 * DAY), crypto=crypto) as j:
        j.append_many([finding(i, t=T0 + i * DAY) for i in range(300)])
        res = j.prune(now=T0 + 400 * DAY)
        assert res is not None
    db = tmp_path / "s" / "journal.db"
    with raw_db(db) as c:
        c.execute("DELETE FROM anchors")
    r = verify_journal(db)
    assert r.problem is not None and r.problem.seq == 1 and "missing" in r.problem.what
