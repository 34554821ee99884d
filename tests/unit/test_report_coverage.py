"""Reports never conclude more than was watched: coverage per host, empty periods, late starts, bad sources."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.journal.bundle import export_bundle
from agent.journal.signing import load_private_key
from agent.journal.store import Journal
from tests.unit.test_report_support import HOST, T0, lifecycle, run_cli, stepping_clock

SCHEMA = json.loads((Path(__file__).parent / "report.schema.json").read_text(encoding="utf-8"))
H = 3600.0


def _iso(t: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _finding(t: float, rule: str = "BM-NET-001", host: str = HOST) -> dict[str, Any]:
    return {"type": "finding", "time": t, "host": host, "rule": rule, "pack": "baomi", "severity": "critical",
            "action": "alert", "title": {"zh": "涉密计算机违规外联", "en": "Classified host connected to the Internet"},
            "message": {"zh": "张三 连接互联网", "en": "zhangsan connected to the Internet"}, "roles": ["operator"],
            "event": {"event": {"kind": "net.connect"}, "net": {"remote_ip": "203.0.113.9", "remote_port": 443}},
            "accountable": {"operator": "张三", "unit": "省发改委信息中心", "department": "省发展和改革委员会",
                            "custodian": "张三"}, "controls": ["保密法 第二十四条"], "tags": []}


def _journal(state: Path, records: list[dict[str, Any]], host: str = HOST) -> Path:
    with Journal(state, host=host, clock=stepping_clock(T0 + 400 * H), checkpoint_every=5) as j:
        for rec in records:
            j.append(rec)
    return state / "journal.db"


def _timeline(host: str = HOST, beats: bool = False) -> list[dict[str, Any]]:
    """Day one, 00:00-24:00: started at 01:00 (late), killed at 06:00 and back at 08:00 (a 2 h gap found at
    the start), paused 12:00-12:30, a violation at 14:00, stopped cleanly at 22:00 (ended early)."""
    heartbeats = [lifecycle("agent.heartbeat", T0 + 5.75 * H, host, pid=4242),
                  lifecycle("agent.heartbeat", T0 + 6 * H, host, pid=4242)] if beats else []
    return [
        lifecycle("agent.start", T0 + 1 * H, host, version="0.1"),
        _finding(T0 + 5.5 * H, host=host),
        *heartbeats,
        # killed with -9 after its last heartbeat at 06:00: no stop; the next start journals the gap from the
        # run state file's later claim (06:20), which is not signed and does not lengthen the run
        lifecycle("agent.start", T0 + 8 * H, host, version="0.1"),
        lifecycle("agent.tamper", T0 + 8 * H + 1, host, since=T0 + 6 * H + 1200, until=T0 + 8 * H,
                  message="monitoring interrupted"),
        lifecycle("agent.tamper", T0 + 12.5 * H, host, since=T0 + 12 * H, until=T0 + 12.5 * H, message="paused"),
        _finding(T0 + 14 * H, host=host),
        lifecycle("agent.stop", T0 + 22 * H, host, message="clean stop"),
    ]


def _report(args: list[str], tmp: Path, fmt: str = "json", lang: str = "en") -> tuple[int, Any, str]:
    out = tmp / f"r-{lang}.{fmt}"
    if out.exists():
        out.unlink()
    status, _, err = run_cli(["report", "--format", fmt, "--lang", lang, "--out", str(out), *args])
    if fmt == "json":
        doc = json.loads(out.read_text(encoding="utf-8"))
        jsonschema.validate(doc, SCHEMA)
        return status, doc, err
    return status, out.read_text(encoding="utf-8"), err


def _page_one(html: str) -> str:
    """The header and the verdict: what is printed before the first section after it."""
    return html[: html.index('<section id="summary">')]


def test_week_without_any_run_says_nothing_was_monitored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _journal(state, _timeline())
    week = ["--state-dir", str(state), "--since", _iso(T0 + 10 * 86400), "--until", _iso(T0 + 17 * 86400)]
    status, doc, err = _report(week, tmp_path)
    assert status == 0, err
    cov = doc["coverage"]
    assert cov["monitored_seconds"] == 0 and cov["complete"] is False
    (h,) = cov["hosts"]
    assert h["host"] == HOST and h["share"] == 0 and h["before_seconds"] == 7 * 86400
    for lang in ("zh", "en"):
        _, html, _ = _report(week, tmp_path, "html", lang)
        first = _page_one(html)
        if lang == "zh":
            assert '<p class="bad">期间内没有任何监控（0 秒）' in first
            # none of the clean conclusions an unwatched week used to get
            for claim in ("期间内没有违规", "期间内没有监控中断", "没有监控中断", "期间内没有发现"):
                assert claim not in html, claim
            assert "本期间没有任何记录" in first
        else:
            assert '<p class="bad">Nothing was monitored in this period (0 s)' in first
            for claim in ("No violations in the period", "No gaps in the period", "No findings in the period"):
                assert claim not in html, claim


def test_constructed_timeline_late_start_kill_pause_early_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _journal(state, _timeline(beats=True))
    day = ["--state-dir", str(state), "--since", _iso(T0), "--until", _iso(T0 + 24 * H)]
    status, doc, err = _report(day, tmp_path)
    assert status == 0, err
    (h,) = doc["coverage"]["hosts"]
    # watched 01:00-06:00 (its last heartbeat before the kill), 08:00-12:00, 12:30-22:00
    assert h["before_seconds"] == 1 * H
    assert h["gap_seconds"] == 2 * H + 0.5 * H
    assert h["after_seconds"] == 2 * H
    assert h["monitored_seconds"] == 5 * H + 4 * H + 9.5 * H
    assert [(x["where"], x["since"] - T0, x["until"] - T0) for x in h["unmonitored"]] == [
        ("before", 0, 1 * H), ("gap", 6 * H, 8 * H), ("gap", 12 * H, 12.5 * H), ("after", 22 * H, 24 * H)]
    assert h["share"] == pytest.approx(18.5 / 24)
    _, html, _ = _report(day, tmp_path, "html", "zh")
    first = _page_one(html)
    assert "期间内有 5小时30分 未受监控（监控覆盖 77.1%）" in first
    assert "违规 2 起：严重 2。" in first
    # heartbeats prove the run alive and clutter nothing: no row, no lifecycle count, no record type listed
    assert "heartbeat" not in html and "agent.heartbeat" not in json.dumps(doc["continuity"], ensure_ascii=False)


def test_a_killed_run_without_heartbeats_ends_at_its_last_record(tmp_path: Path) -> None:
    """The gap record's start comes from the unsigned run state file: it never lengthens the killed run."""
    state = tmp_path / "state"
    _journal(state, _timeline())
    status, doc, err = _report(["--state-dir", str(state), "--since", _iso(T0), "--until", _iso(T0 + 24 * H)],
                               tmp_path)
    assert status == 0, err
    (h,) = doc["coverage"]["hosts"]
    assert ("gap", 5.5 * H, 8 * H) in [(x["where"], x["since"] - T0, x["until"] - T0) for x in h["unmonitored"]]
    assert h["monitored_seconds"] == 4.5 * H + 4 * H + 9.5 * H


def test_period_cut_in_the_middle_of_a_run_counts_from_its_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _journal(state, _timeline())
    # 15:00-20:00: the run began at 08:00, before the period; nothing in the period but its records
    status, doc, err = _report(["--state-dir", str(state), "--since", _iso(T0 + 15 * H),
                                "--until", _iso(T0 + 20 * H)], tmp_path)
    assert status == 0, err
    (h,) = doc["coverage"]["hosts"]
    assert h["monitored_seconds"] == 5 * H and h["before_seconds"] == 0 and doc["coverage"]["complete"]
    # a period starting before the first start counts the time before it
    status, doc, err = _report(["--state-dir", str(state), "--since", _iso(T0 - 24 * H),
                                "--until", _iso(T0 + 5 * H)], tmp_path)
    assert status == 0, err
    (h,) = doc["coverage"]["hosts"]
    assert h["before_seconds"] == 25 * H and h["monitored_seconds"] == 4 * H


def test_agent_dead_before_the_period_is_not_counted_as_watching(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # started, wrote one finding, then killed; never came back
    _journal(state, [lifecycle("agent.start", T0, HOST), _finding(T0 + H)])
    status, doc, err = _report(["--state-dir", str(state), "--since", _iso(T0 + 2 * H),
                                "--until", _iso(T0 + 3 * H)], tmp_path)
    assert status == 0, err
    (h,) = doc["coverage"]["hosts"]
    assert h["monitored_seconds"] == 0 and h["before_seconds"] == H
    # no stop in the journal: said plainly, and still not counted as watched
    assert h["still_running"] is True
    _, html, _ = _report(["--state-dir", str(state), "--since", _iso(T0 + 2 * H), "--until", _iso(T0 + 3 * H)],
                         tmp_path, "html", "zh")
    assert "日志中最后一次运行没有停止记录" in _page_one(html)


def test_tampered_journal_is_a_banner_and_in_no_figure(tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = _journal(state, _timeline())
    conn = sqlite3.connect(db)
    conn.execute("UPDATE records SET body = replace(body, '203.0.113.9', '203.0.113.8') WHERE seq = 2")
    conn.commit()
    conn.close()
    day = ["--state-dir", str(state), "--since", _iso(T0), "--until", _iso(T0 + 24 * H)]
    status, doc, err = _report(day, tmp_path)
    assert status == 1 and "FAILED journal" in err
    assert doc["summary"]["records"] == 0 and doc["summary"]["findings"]["total"] == 0
    assert doc["coverage"]["monitored_seconds"] == 0
    out = tmp_path / "r.csv"
    status, _, err = run_cli(["report", "--format", "csv", "--out", str(out), *day])
    assert status == 1 and "FAILED journal" in err
    assert len(out.read_text(encoding="utf-8-sig").splitlines()) == 1  # the header, no row of the failed journal
    status, html, _ = _report(day, tmp_path, "html", "zh")
    first = _page_one(html)
    assert status == 1
    assert re.search(r'<p class="bad">未纳入本报告：journal \S+journal.db（主机 js-fgw-0042）验证失败：record 2', first)


def test_fleet_tampered_bundle_is_refused_on_page_one(tmp_path: Path) -> None:
    bundles = []
    keys = tmp_path / "keys"
    keys.mkdir()
    for host in ("js-fgw-0042", "js-dsj-0007"):
        state = tmp_path / host
        _journal(state, _timeline(host), host=host)
        (keys / f"{host}.pem").write_text(load_private_key(state / "journal.key").public().pem())
        b = tmp_path / f"{host}.bundle"
        export_bundle(state / "journal.db", state / "journal.key", b, since=None, until=None,
                      period={"since": None, "until": None}, clock=lambda: T0 + 30 * 86400)
        bundles.append(b)
    lines = bundles[1].read_bytes().splitlines(keepends=True)
    i = next(k for k, raw in enumerate(lines) if b"203.0.113.9" in raw)
    lines[i] = lines[i].replace(b"203.0.113.9", b"203.0.113.8")
    bundles[1].write_bytes(b"".join(lines))
    args = ["--evidence", *map(str, bundles), "--keys", str(keys), "--since", _iso(T0), "--until",
            _iso(T0 + 24 * H)]
    status, doc, err = _report(args, tmp_path)
    assert status == 1 and f"REFUSED bundle {bundles[1]}" in err
    assert [c["host"] for c in doc["coverage"]["hosts"]] == ["js-fgw-0042"]
    assert doc["summary"]["hosts"] == ["js-fgw-0042"]
    status, html, _ = _report(args, tmp_path, "html", "zh")
    first = _page_one(html)
    assert status == 1
    assert f'<p class="bad">未纳入本报告：证据包 {bundles[1]}（主机 js-dsj-0007）被拒绝' in first
    header = first[: first.index("<section")]
    assert str(bundles[0]) in header and str(bundles[1]) not in header  # not listed as a source


def test_integrity_is_of_the_period_same_in_both_languages_and_verifiable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = _journal(state, _timeline())
    day = ["--state-dir", str(state), "--since", _iso(T0), "--until", _iso(T0 + 10 * H)]
    _, zh, _ = _report(day, tmp_path, "json", "zh")
    # the agent goes on writing after the period: the period's head must not move
    with Journal(state, host=HOST, clock=stepping_clock(T0 + 500 * H), checkpoint_every=5) as j:
        for k in range(7):
            j.append(_finding(T0 + 30 * H + k))
    _, en, _ = _report(day, tmp_path, "json", "en")
    (a,), (b,) = zh["integrity"], en["integrity"]
    assert a["through_seq"] == b["through_seq"] == zh["summary"]["last_seq"] == 4
    assert a["through_hash"] == b["through_hash"] and a["command"] == b["command"]
    assert a["head_hash"] != b["head_hash"]  # the journal's own head moved on
    assert a["command"] == f"dutywatch verify --journal {db} --through 4 --pubkey HOST-PUBKEY.pem"
    assert a["signed_seq"] == 5  # the first checkpoint at or after seq 4
    # the printed command, with the trusted key, checks exactly that record and prints the same hash
    pem = tmp_path / "host.pem"
    pem.write_text(load_private_key(state / "journal.key").public().pem())
    status, out, err = run_cli(["verify", "--journal", str(db), "--through", "4", "--pubkey", str(pem)])
    assert status == 0, err
    assert f"chain hash at seq 4: {a['through_hash']}" in out and "the checkpoint at seq 5" in out
    # the key beside the journal is the host vouching for itself: said so; a given key is trusted
    assert a["trusted"] is False and a["key_source"].endswith("journal.key")
    _, html, _ = _report(day, tmp_path, "html", "zh")
    assert "验证密钥取自被审计主机本身" in _page_one(html) and "相当于主机自证" in _page_one(html)
    _, doc, _ = _report([*day, "--pubkey", str(pem)], tmp_path)
    assert doc["integrity"][0]["trusted"] is True and "--pubkey " + str(pem) in doc["integrity"][0]["command"]


def test_verify_through_a_changed_record_fails(tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = _journal(state, _timeline())
    conn = sqlite3.connect(db)
    conn.execute("UPDATE records SET body = replace(body, '203.0.113.9', '203.0.113.8') WHERE seq = 2")
    conn.commit()
    conn.close()
    status, _, err = run_cli(["verify", "--journal", str(db), "--through", "4"])
    assert status == 1 and "record 2" in err
    status, _, err = run_cli(["verify", "--journal", str(db), "--through", "99"])
    assert status == 1


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_incident_sheet_for_a_critical_finding(tmp_path: Path, lang: str) -> None:
    import shutil
    import subprocess
    state = tmp_path / "state"
    db = _journal(state, _timeline())
    out = tmp_path / f"incident-{lang}.html"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--incident", "2", "--lang", lang,
                              "--out", str(out)])
    assert status == 0, err
    html = out.read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", " ", html)
    assert ("网络安全事件报告单" if lang == "zh" else "Network security incident sheet") in text
    assert "2024-05-01\u00a005:30:00" in text  # first detected
    assert "js-fgw-0042" in text and "省发改委信息中心" in text and "张三" in text and "203.0.113.9:443" in text
    assert f"dutywatch verify --journal {db} --through 2 --pubkey HOST-PUBKEY.pem" in text
    due = "最迟 1 小时（2024-05-01\u00a006:30:00" if lang == "zh" else "within 4 h (by 2024-05-01\u00a009:30:00"
    assert due in text
    if shutil.which("pdfinfo") is not None:
        pdf = tmp_path / f"incident-{lang}.pdf"
        status, _, err = run_cli(["report", "--state-dir", str(state), "--incident", "2", "--lang", lang,
                                  "--format", "pdf", "--out", str(pdf)])
        assert status == 0, err
        info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True, timeout=60).stdout
        assert "Pages:           1" in info  # one page
    # a lifecycle record has no incident sheet; a changed record's sheet says its evidence failed
    status, _, err = run_cli(["report", "--state-dir", str(state), "--incident", "1", "--out", str(out)])
    assert status == 1 and "not a finding" in err
    conn = sqlite3.connect(db)
    conn.execute("UPDATE records SET body = replace(body, '203.0.113.9', '203.0.113.8') WHERE seq = 2")
    conn.commit()
    conn.close()
    out.unlink()
    status, _, err = run_cli(["report", "--state-dir", str(state), "--incident", "2", "--out", str(out)])
    assert status == 1 and "FAILED" in err
    assert "核验失败" in out.read_text(encoding="utf-8")  # zh by default


def test_folded_repeats_count_as_many_findings(tmp_path: Path) -> None:
    """A folded record (the agent journals repeats in a window once, with their count) is that many findings."""
    state = tmp_path / "state"
    first = _finding(T0 + 2 * H)
    fold = _finding(T0 + 2 * H + 290)
    fold["folded"] = {"count": 40, "first": T0 + 2 * H + 5, "last": T0 + 2 * H + 290, "window": 300}
    _journal(state, [lifecycle("agent.start", T0 + H, HOST), first, fold,
                     lifecycle("agent.stop", T0 + 3 * H, HOST)])
    status, doc, err = _report(["--state-dir", str(state), "--since", _iso(T0), "--until", _iso(T0 + 4 * H)],
                               tmp_path)
    assert status == 0, err
    assert doc["summary"]["findings"]["alerts"] == 41 and doc["violations"]["total"] == 41
    (g,) = doc["violation_groups"]["groups"]
    assert g["count"] == 41 and g["first"] == T0 + 2 * H and g["last"] == T0 + 2 * H + 290
    assert doc["violations"]["omitted"] == 0 and [r["count"] for r in doc["violations"]["rows"]] == [1, 40]
    (p,) = [p for p in doc["accountability"]["operators"] if p["operator"] == "张三"]
    assert p["violations"] == 41


def test_fleet_report_of_a_bundle_past_the_period_agrees_with_the_journal(tmp_path: Path) -> None:
    """A bundle checked through the period's last record is read on to the first records after the period, as the
    journal is, so a run still going at the period's end is watched to its end in both reports alike."""
    state = tmp_path / "state"
    with Journal(state, host=HOST, clock=stepping_clock(T0 + 400 * H), checkpoint_every=1) as j:
        for rec in _timeline(beats=True):  # a checkpoint after every record: one right at the period's last
            j.append(rec)
    bundle = tmp_path / "all.bundle"
    export_bundle(state / "journal.db", state / "journal.key", bundle, since=None, until=None,
                  period={"since": None, "until": None}, clock=lambda: T0 + 500 * H)
    period = ["--since", _iso(T0 + 13 * H), "--until", _iso(T0 + 20 * H)]
    status, local, err = _report(["--state-dir", str(state), *period], tmp_path)
    assert status == 0, err
    status, fleet, err = _report(["--evidence", str(bundle), *period], tmp_path)
    assert status == 0, err
    (a,), (b,) = local["coverage"]["hosts"], fleet["coverage"]["hosts"]
    assert a["monitored_seconds"] == b["monitored_seconds"] == 7 * H and a["unmonitored"] == b["unmonitored"] == []
    (i,) = fleet["integrity"]
    assert i["through_seq"] == local["integrity"][0]["through_seq"] and i["extends_to"] > i["through_seq"]
    assert i["through_hash"] == local["integrity"][0]["through_hash"]
