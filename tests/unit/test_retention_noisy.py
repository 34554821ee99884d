"""Retention on a noisy host, over 200 days of a virtual clock: audit and info records go before alerts.

The host makes far more info findings than the size cap holds (here 400 a
day against a 1 MB cap, which holds about three days of them: the same
proportion as 1,000 a minute against the default 2 GB),
and two alerts a day. After 200 virtual days, with pruning once a day as the
agent would, every alert of the last 180 days is still in the journal, the
info records are only the last few days', the file is within its cap and the
chain verifies.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from test_journal_support import HOST, T0

from agent.journal.retention import DAY
from agent.journal.store import Journal
from agent.journal.verify import verify_journal

DAYS = 200
INFO_PER_DAY = 400
CAP_MB = 1


def record(t: float, i: int, alert: bool) -> dict[str, object]:
    return {"type": "finding", "time": t, "host": HOST, "rule": "DB-MAL-001" if alert else "ZR-009",
            "severity": "high" if alert else "info", "action": "alert" if alert else "audit",
            "message": {"zh": "一条记录", "en": f"record {i}"},
            "event": {"event": {"kind": "process.exec"}, "process": {"pid": i, "exe": f"/usr/lib/d/worker-{i}"}},
            "accountable": {"operator": "root", "unit": "信息中心"}}


def test_a_noisy_host_keeps_180_days_of_alerts_within_its_cap(tmp_path: Path) -> None:
    now = [T0]
    with Journal(tmp_path / "s", host=HOST, clock=lambda: now[0], retention_days=180, max_size_mb=CAP_MB,
                 checkpoint_every=1000) as j:
        i = 0
        for day in range(DAYS):
            start = T0 + day * DAY
            batch = []
            for k in range(INFO_PER_DAY):
                t = start + k * (DAY / INFO_PER_DAY)
                batch.append(record(t, i, alert=k in (100, 300)))
                i += 1
                if len(batch) == INFO_PER_DAY:
                    now[0] = t
                    j.append_many(batch)
                    batch = []
            now[0] = start + DAY - 1
            j.prune(now[0])
        end = now[0]
    db = tmp_path / "s" / "journal.db"
    assert db.stat().st_size <= CAP_MB * 1024 * 1024 * 1.05
    r = verify_journal(db)
    assert r.ok, r.problem
    conn = sqlite3.connect(db)
    alert_times = [t for (t,) in conn.execute("SELECT time FROM records WHERE action = 'alert'")]
    info_days = conn.execute("SELECT MIN(time) FROM records WHERE action = 'audit'").fetchone()[0]
    conn.close()
    recent = [t for t in alert_times if t >= end - 180 * DAY]
    assert len(recent) >= 2 * 180 - 1, f"only {len(recent)} alerts of the last 180 days are left"
    assert len(set(alert_times)) == len(alert_times), "an alert was kept twice"
    assert end - info_days < 10 * DAY, "info records were kept while alerts would have gone"
