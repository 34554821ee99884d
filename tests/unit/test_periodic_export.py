"""Evidence back to the centre: one signed bundle per period, meeting exactly, and a day off shows."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon.exports import PeriodicExport, boundary_at_or_before, bundle_name
from agent.errors import LoadErrors
from agent.journal.bundlecheck import verify_bundle
from agent.journal.store import KEY_FILE, Journal

DAY = 86400.0


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return time.mktime((y, mo, d, h, mi, 0, 0, 0, -1))


def setup(tmp_path: Path, clock: Clock) -> tuple[Journal, PeriodicExport, Path]:
    j = Journal(tmp_path / "state", host="host-a1", clock=clock)
    out = tmp_path / "share"
    exp = PeriodicExport(every=DAY, to=out, state_dir=tmp_path / "state", journal_path=j.path,
                         key_path=tmp_path / "state" / KEY_FILE, host=lambda: "host-a1", put=j.append, clock=clock)
    return j, exp, out


def kinds(j: Journal) -> list[str]:
    conn = sqlite3.connect(j.path)
    try:
        return [json.loads(b)["kind"] for (b,) in conn.execute("SELECT body FROM records WHERE type = 'lifecycle'")]
    finally:
        conn.close()


def rec(clock: Clock, n: int) -> dict[str, Any]:
    return {"type": "lifecycle", "time": clock(), "host": "host-a1", "kind": "agent.reload", "detail": {"n": n}}


def test_each_day_is_one_bundle_and_consecutive_bundles_meet_exactly(tmp_path: Path) -> None:
    clock = Clock(local(2026, 12, 1, 10))
    j, exp, out = setup(tmp_path, clock)
    j.append(rec(clock, 1))
    assert exp.run_once() is None  # the day is not over
    clock.t = local(2026, 12, 1, 23, 59)
    j.append(rec(clock, 2))
    clock.t = local(2026, 12, 2, 0, 0) + 5
    first = exp.run_once()
    assert first == out / "host-a1" / "host-a1_2026-12-01.dwe"
    assert exp.run_once() is None  # written once
    for n in range(3, 6):
        clock.t += 3600
        j.append(rec(clock, n))
    # The agent is down for all of 3 December and comes back on the 4th.
    clock.t = local(2026, 12, 4, 9)
    second = exp.run_once()
    assert second == out / "host-a1" / "host-a1_2026-12-02_2026-12-03.dwe"  # one span, its days named
    a, b = verify_bundle(first), verify_bundle(second)
    assert a.ok and b.ok, (a.problem, b.problem)
    assert a.first_seq == 1 and b.first_seq == a.last_seq + 1
    # The first bundle holds records 1, 2 (not the cut that closed it: that opens the next).
    assert a.records == 2
    assert b.records == 3 + 2  # the cut of 2 Dec, its "exported" note, records 3..5
    j.close()


def test_a_share_that_cannot_be_written_is_journaled_and_tried_again_from_the_same_record(tmp_path: Path) -> None:
    clock = Clock(local(2026, 12, 1, 10))
    j, exp, out = setup(tmp_path, clock)
    j.append(rec(clock, 1))
    out.write_text("not a directory")  # the share is not mounted: a file sits where it should be
    clock.t = local(2026, 12, 2, 0, 1)
    assert exp.run_once() is None
    assert "evidence.export_failed" in kinds(j)
    assert exp.retry_at is not None
    out.unlink()
    clock.t = exp.retry_at + 1
    path = exp.run_once()
    assert path is not None and verify_bundle(path).ok
    assert verify_bundle(path).first_seq == 1
    assert kinds(j).count("evidence.cut") == 2  # one per try; the bundle runs up to the last
    j.close()


def test_bundle_names_and_boundaries() -> None:
    t = local(2026, 12, 2, 13, 37)
    assert boundary_at_or_before(t, DAY) == local(2026, 12, 2)
    assert boundary_at_or_before(t, 3600) == local(2026, 12, 2, 13)
    assert bundle_name("h/1", local(2026, 12, 2), local(2026, 12, 3), DAY) == "h_1_2026-12-02.dwe"
    assert bundle_name("h", local(2026, 12, 2, 13), local(2026, 12, 2, 14), 3600) == \
        "h_2026-12-02T1300_2026-12-02T1400.dwe"


def test_the_export_setting_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("export: {every: 7m, to: /srv/evidence}\n")
    with pytest.raises(LoadErrors, match=r"agent\.yaml:1:17: export\.every must divide a day"):
        load_config(cfg)
    cfg.write_text("export: {every: 1h}\n")
    with pytest.raises(LoadErrors, match="to"):
        load_config(cfg)
    cfg.write_text("export: {every: 6h, to: evidence}\n")
    c = load_config(cfg)
    assert c.export.every == 21600 and c.export.to == tmp_path / "evidence"


def test_a_day_whose_bundle_never_arrived_shows_in_the_fleet_report(tmp_path: Path) -> None:
    """The agent ran for four days; day 3's bundle is lost on the way: that day is no evidence, not clean."""
    import jsonschema

    from tests.unit.test_report_support import run_cli

    clock = Clock(local(2026, 12, 1, 0, 0) + 1)
    j, exp, _ = setup(tmp_path, clock)
    j.append({"type": "lifecycle", "time": clock(), "host": "host-a1", "kind": "agent.start", "detail": {}})
    written = []
    for day in range(1, 5):
        for h in (6, 12, 18):
            clock.t = local(2026, 12, day, h)
            j.append(rec(clock, day * 100 + h))
        clock.t = local(2026, 12, day + 1, 0, 0) + 2
        path = exp.run_once()
        assert path is not None
        written.append(path)
    j.close()
    key = tmp_path / "keys"
    key.mkdir()
    from agent.journal.signing import load_private_key
    (key / "host-a1.pem").write_text(load_private_key(tmp_path / "state" / KEY_FILE).public().pem())
    lost = written.pop(2)
    assert lost.name == "host-a1_2026-12-03.dwe"
    report = tmp_path / "fleet.json"
    status, _, err = run_cli(["report", "--format", "json", "--out", str(report), "--evidence", *map(str, written),
                              "--keys", str(key), "--since", "2026-12-01", "--until", "2026-12-05"])
    doc = json.loads(report.read_text(encoding="utf-8"))
    jsonschema.validate(doc, json.loads((Path(__file__).parent / "report.schema.json").read_text()))
    (host,) = doc["coverage"]["hosts"]
    holes = [(x["since"], x["until"]) for x in host["unmonitored"] if x["where"] == "no_evidence"]
    assert (local(2026, 12, 3), local(2026, 12, 4)) in holes, host["unmonitored"]
    assert host["monitored_seconds"] <= 3 * DAY + 10 and not doc["coverage"]["complete"]
    # With every bundle there, the four days are monitored whole.
    status, _, err = run_cli(["report", "--format", "json", "--out", str(report), "--evidence",
                              *map(str, [*written[:2], lost, written[2]]), "--keys", str(key),
                              "--since", "2026-12-01", "--until", "2026-12-05"])
    assert status == 0, err
    (host,) = json.loads(report.read_text(encoding="utf-8"))["coverage"]["hosts"]
    assert not [x for x in host["unmonitored"] if x["where"] == "no_evidence"], host["unmonitored"]
