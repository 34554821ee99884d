"""Folding identical findings: one record now, one with the count when the window closes."""

from __future__ import annotations

from typing import Any

from agent.daemon.folding import Folder


def finding(t: float, exe: str = "/usr/sbin/cron", rule: str = "ZR-001", uid: int = 0) -> dict[str, Any]:
    return {"type": "finding", "time": t, "host": "h", "rule": rule, "severity": "medium", "action": "alert",
            "message": {"zh": "无人负责", "en": "unattributed"},
            "event": {"event": {"kind": "process.exec"}, "process": {"exe": exe, "uid": uid}},
            "accountable": {"operator": None}}


def test_repeats_within_the_window_become_one_record_with_count_and_times() -> None:
    out: list[dict[str, Any]] = []
    f = Folder(out.append, 300.0, clock=lambda: 0.0)
    for i in range(1000):
        f.put(finding(1000.0 + i * 0.06))  # 1,000 a minute
    assert len(out) == 1 and "folded" not in out[0]
    f.put(finding(1010.0, exe="/usr/bin/other"))  # a different object is its own record at once
    assert len(out) == 2
    f.tick(1000.0 + 299)
    assert len(out) == 2
    f.tick(1000.0 + 300)
    assert len(out) == 3
    folded = out[2]["folded"]
    assert folded["count"] == 999 and folded["first"] == 1000.06 and abs(folded["last"] - (1000 + 999 * 0.06)) < 1e-6
    assert "999 times like this" in out[2]["message"]["en"] and "999 次" in out[2]["message"]["zh"]


def test_a_different_rule_or_operator_is_never_folded_together_and_lifecycle_passes() -> None:
    out: list[dict[str, Any]] = []
    f = Folder(out.append, 300.0, clock=lambda: 0.0)
    f.put(finding(1.0))
    f.put(finding(2.0, rule="DB-MAL-001"))
    f.put(finding(3.0, uid=1000))
    f.put({"type": "lifecycle", "time": 4.0, "host": "h", "kind": "agent.start"})
    assert len(out) == 4
    f.flush()
    assert len(out) == 4  # nothing repeated: no folded record


def test_off_when_the_window_is_zero() -> None:
    out: list[dict[str, Any]] = []
    f = Folder(out.append, 0.0)
    for i in range(5):
        f.put(finding(float(i)))
    assert len(out) == 5


def test_repeats_from_two_sources_with_interleaved_times_stay_one_fold_and_every_one_is_counted() -> None:
    out: list[dict[str, Any]] = []
    f = Folder(out.append, 300.0, clock=lambda: 0.0)
    # The audit trail's kernel time and the process connector's read time, a few ms apart, interleaved.
    times = [1000.0 + i * 0.01 + (0.003 if i % 2 else -0.003) for i in range(400)]
    for t in times:
        f.put(finding(t))
    f.put(finding(999.0))  # older than the first by less than a window: still a repeat
    f.flush()
    assert len(out) == 2, [r.get("folded") for r in out]
    assert 1 + out[1]["folded"]["count"] == len(times) + 1 == f.sent + f.folded - 1
    assert out[1]["folded"]["first"] == 999.0 and out[1]["folded"]["last"] == max(times)
