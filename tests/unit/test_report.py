"""``dutywatch report`` over a journal of every shipped pack's findings: sections, formats, limits."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.controls import CONTROLS
from agent.journal.store import Journal
from agent.journal.verify import verify_journal
from agent.report.build import Options, local_report
from agent.report.html import write_html
from agent.report.sources import Period
from tests.unit.test_report_support import HOST, T0, build_journal, run_cli, shipped_ruleset, stepping_clock

SCHEMA = json.loads((Path(__file__).parent / "report.schema.json").read_text(encoding="utf-8"))
SECTION_IDS = ("summary", "controls", "accountability", "violations", "continuity", "integrity")
ZH_TITLES = ("一、概况", "二、控制点覆盖", "三、责任追究", "四、违规事件及证据", "五、监控连续性", "六、完整性验证")
EN_TITLES = ("1. Summary", "2. Control coverage", "3. Accountability", "4. Violations and evidence",
             "5. Monitoring continuity", "6. Integrity")


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A state dir whose journal holds every shipped sample's findings and lifecycle records."""
    state = tmp_path_factory.mktemp("report") / "state"
    n = build_journal(state, shipped_ruleset())
    return state, n


def _report(state: Path, tmp: Path, fmt: str, lang: str, *extra: str) -> tuple[int, Path, str]:
    out = tmp / f"report-{lang}.{fmt}"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--format", fmt, "--lang", lang,
                              "--out", str(out), *extra])
    return status, out, err


def _json(state: Path, tmp: Path, *extra: str) -> dict[str, Any]:
    status, out, err = _report(state, tmp, "json", "en", *extra)
    assert status == 0, err
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.validate(doc, SCHEMA)
    return doc


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_html_has_every_section_self_contained(journal: tuple[Path, int], tmp_path: Path, lang: str) -> None:
    state, _ = journal
    status, out, err = _report(state, tmp_path, "html", lang)
    assert status == 0, err
    html = out.read_text(encoding="utf-8")
    for sid, title in zip(SECTION_IDS, ZH_TITLES if lang == "zh" else EN_TITLES, strict=True):
        assert f'<section id="{sid}">' in html
        assert title in html
    assert "<svg" in html and "@page" in html and "display: table-header-group" in html
    # Self-contained: no script, no stylesheet link, no remote load.
    for bad in ("<script", "<link", "src=\"http", "url(http", "@import"):
        assert bad not in html
    assert "省发改委信息中心" in html and "BM-NET-001" in html


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_json_matches_schema_and_counts(journal: tuple[Path, int], tmp_path: Path, lang: str) -> None:
    state, n = journal
    status, out, err = _report(state, tmp_path, "json", lang)
    assert status == 0, err
    doc = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.validate(doc, SCHEMA)
    assert doc["summary"]["findings"]["total"] == n
    packs = {r["pack"] for c in doc["controls"] for r in c["rules"] if r["findings"]}
    assert packs == {"baomi", "dengbao", "accountability", "inventory"}
    by_unit = sum(u["total"] for u in doc["summary"]["by_unit"])
    by_day = sum(d["total"] for d in doc["summary"]["by_day"])
    assert by_unit == by_day == n


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_csv_one_row_per_finding_with_bom(journal: tuple[Path, int], tmp_path: Path, lang: str) -> None:
    state, n = journal
    status, out, err = _report(state, tmp_path, "csv", lang)
    assert status == 0, err
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert len(rows) == n
    if lang == "zh":  # Chinese headers in a Chinese report; the same columns, in the same order
        from agent.report.csvout import COLUMNS, COLUMNS_ZH
        assert list(rows[0]) == list(COLUMNS_ZH) and "操作人员" in rows[0]
        assert {r["级别"] for r in rows} <= {"严重", "高", "中", "低", "提示"}
        rows = [dict(zip(COLUMNS, r.values(), strict=True)) for r in rows]
    # no cell is a bare "-" turned into "'-" by the formula guard: a missing value is （未知） / (unknown)
    assert not any(v.startswith("'-") for r in rows for v in r.values())
    assert {r["pack"] for r in rows} == {"baomi", "dengbao", "accountability", "inventory"}
    net = next(r for r in rows if r["rule"] == "BM-NET-001")
    assert net["unit"] == "省发改委信息中心" and net["object"].startswith("203.0.113.9:443")
    ww = next(r for r in rows if r["rule"] == "BM-FILE-001")
    assert ww["operator"] == "王五" and ww["operator_unit"] == ww["owner_unit"] == "省发改委办公室"
    assert ("连接互联网" in net["message"]) == (lang == "zh")


def test_pdf_written_in_both_languages(journal: tuple[Path, int], tmp_path: Path) -> None:
    state, _ = journal
    for lang in ("zh", "en"):
        status, out, err = _report(state, tmp_path, "pdf", lang)
        assert status == 0, err
        data = out.read_bytes()
        assert data.startswith(b"%PDF-") and b"/FontFile2" in data  # the CJK font is embedded


def test_control_coverage(journal: tuple[Path, int], tmp_path: Path) -> None:
    doc = _json(journal[0], tmp_path)
    controls = {c["control"]: c for c in doc["controls"]}
    assert list(controls) == [c.name for c in CONTROLS]
    access = controls["GB/T 22239-2019 8.1.4.2"]
    assert access["status"] == "found"
    assert {"ZR-001", "BM-FILE-001"} <= {r["id"] for r in access["rules"]}
    assert access["findings"] == sum(r["findings"] for r in access["rules"])
    # The management-centre clause: the policy rules' findings, and where the rest of its evidence lies.
    centre = controls["GB/T 22239-2019 8.1.5.2"]
    assert centre["status"] == "found" and {r["id"] for r in centre["rules"]} == {"DB-POL-001", "DB-POL-002"}
    assert centre["built_in"] == "export"


def test_accountability_and_unattributed(journal: tuple[Path, int], tmp_path: Path) -> None:
    doc = _json(journal[0], tmp_path)
    acc = doc["accountability"]
    people = {(p["operator"], p["unit"]): p for p in acc["operators"]}
    zs = people[("张三", "省发改委信息中心")]
    assert zs["violations"] > 0 and zs["audits"] > 0
    un = acc["unattributed"]
    rules = {r["rule"] for r in un["rows"]}
    assert {"ZR-001", "ZR-002"} <= rules
    # An interface coming up is the custodian's to answer for: not an unattributed operation.
    assert not rules & {"BM-IF-001", "BM-IF-002"}
    units = {(u["department"], u["unit"]): u for u in acc["units"]}
    assert units[("省发展和改革委员会", "省发改委信息中心")]["violations"] > 0


def test_continuity_runs_gaps_reloads(journal: tuple[Path, int], tmp_path: Path) -> None:
    doc = _json(journal[0], tmp_path)
    c = doc["continuity"]
    assert [r["clean"] for r in c["runs"]] == [False, True]  # a start with no stop, then a clean run
    assert len(c["gaps"]) == 1 and c["gap_seconds"] == pytest.approx(3 * 3600 - 10)
    assert c["counts"]["agent.reload"] == 1 and c["counts"]["config.changed"] == 1
    assert {e["kind"] for e in c["events"]} >= {"agent.start", "agent.stop", "agent.tamper", "agent.reload"}


def test_integrity_uses_verify(journal: tuple[Path, int], tmp_path: Path) -> None:
    state, _ = journal
    doc = _json(state, tmp_path)
    v = verify_journal(state / "journal.db")
    (i,) = doc["integrity"]
    assert i["ok"] and i["head_hash"] == v.head_hash and i["fingerprint"] == v.fingerprint
    # the period is the whole journal here: its last record is the head
    assert i["through_seq"] == v.last_seq and i["through_hash"] == v.head_hash
    assert i["command"] == (f"dutywatch verify --journal {state / 'journal.db'} --through {v.last_seq} "
                            "--pubkey HOST-PUBKEY.pem")


def test_tampered_journal_is_reported_and_fails(tmp_path: Path) -> None:
    import sqlite3
    state = tmp_path / "state"
    build_journal(state, shipped_ruleset())
    conn = sqlite3.connect(state / "journal.db")
    conn.execute("UPDATE records SET body = replace(body, 'js-fgw-0042', 'js-fgw-0043') WHERE seq = 5")
    conn.commit()
    conn.close()
    status, out, err = _report(state, tmp_path, "html", "zh")
    assert status == 1 and "FAILED journal" in err and "record 5" in err
    assert "验证失败" in out.read_text(encoding="utf-8")


def test_violation_rows_capped_by_severity_then_time(journal: tuple[Path, int], tmp_path: Path) -> None:
    doc = _json(journal[0], tmp_path, "--max-rows", "5")
    v = doc["violations"]
    assert v["listed"] == 5 and v["omitted"] == v["total"] - 5
    assert sum(v["omitted_by_severity"].values()) == v["omitted"]
    order = ["critical", "high", "medium", "low", "info"]
    keys = [(order.index(r["severity"]), r["time"]) for r in v["rows"]]
    assert keys == sorted(keys)
    assert all(r["severity"] == "critical" for r in v["rows"])


def test_period_limits_records(journal: tuple[Path, int], tmp_path: Path) -> None:
    day2 = dt.datetime.fromtimestamp(T0 + 86400, dt.UTC).date().isoformat()
    day3 = dt.datetime.fromtimestamp(T0 + 2 * 86400, dt.UTC).date().isoformat()
    doc = _json(journal[0], tmp_path, "--since", f"{day2}T00:00:00Z", "--until", f"{day3}T00:00:00Z")
    days = [d["day"] for d in doc["summary"]["by_day"]]
    assert days and set(days) <= {day2, day3}
    assert doc["summary"]["findings"]["total"] < journal[1]


HOSTILE = ('<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "a\x00b\x1b[31m\u202eexe.txt",
           "x" * 1_000_000)


def test_hostile_strings_are_escaped_and_cut(tmp_path: Path) -> None:
    state = tmp_path / "state"
    recs = []
    for i, s in enumerate(HOSTILE):
        recs.append({"type": "finding", "time": T0 + i, "host": HOST, "rule": "BM-FILE-001", "pack": "baomi",
                     "severity": "high", "action": "alert", "title": {"zh": s, "en": s},
                     "message": {"zh": s, "en": s}, "roles": ["operator"],
                     "event": {"event": {"kind": "file.open"}, "process": {"exe": s, "pid": 1, "cmdline": s},
                               "file": {"path": s}},
                     "accountable": {"operator": s, "unit": s, "department": s, "custodian": s},
                     "controls": [s], "tags": [s]})
    with Journal(state, host=HOST, clock=stepping_clock()) as j:
        j.append_many(recs)
    r = local_report(state / "journal.db", Options(Period(None, None), "en"), shipped_ruleset(), T0)
    buf = io.StringIO()
    write_html(r, buf)
    html = buf.getvalue()
    assert "<script" not in html and "<img" not in html and "onerror=alert(1)>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&quot;&gt;&lt;img" in html
    assert "\x00" not in html and "\x1b" not in html and "\u202e" not in html
    assert "a\\u0000b\\u001b[31m\\u202eexe.txt" in html
    assert len(html) < 200_000  # the 1 MB string was cut in every cell
    assert "x" * 300 not in html and "x" * 200 + "…" in html


def test_everyone_the_rule_names_is_answered_for(journal: tuple[Path, int], tmp_path: Path) -> None:
    """BM-FILE-001 names [operator, file.owner_unit, host.unit]: 王五 of 省发改委办公室 opened that office's
    top-secret file on 省发改委信息中心's secret host."""
    import sqlite3
    state, _ = journal
    conn = sqlite3.connect(state / "journal.db")
    body = conn.execute("SELECT body FROM records WHERE rule = 'BM-FILE-001'").fetchone()[0]
    conn.close()
    rec = json.loads(body)
    assert rec["answer"] == [{"role": "operator", "name": "王五", "account": "wangwu", "unit": "省发改委办公室"},
                             {"role": "file.owner_unit", "name": "省发改委办公室", "unit": None},
                             {"role": "host.unit", "name": "省发改委信息中心", "unit": None}]
    doc = _json(state, tmp_path)
    acc = doc["accountability"]
    people = {(p["operator"], p["unit"], p["host_unit"]): p for p in acc["operators"]}
    # the person under their own unit, the host's unit beside it
    ww = people[("王五", "省发改委办公室", "省发改委信息中心")]
    assert "operator" in ww["roles"] and any(x["rule"] == "BM-FILE-001" for x in ww["rules"])
    assert not any(p["operator"] == "王五" and p["unit"] == "省发改委信息中心" for p in acc["operators"])
    # the owning unit of the data is named
    owners = {o["unit"]: o for o in acc["owners"]}
    assert owners["省发改委办公室"]["violations"] >= 1
    # findings only the custodian answers for are the custodian's, not (unknown)'s
    custodian = people[("zhangsan", "省发改委信息中心", "省发改委信息中心")]
    assert custodian["roles"] == ["host.custodian"] or "host.custodian" in custodian["roles"]
    unknown = [p for p in acc["operators"] if p["operator"] is None]
    unknown_rules = {x["rule"] for p in unknown for x in p["rules"]}
    assert not unknown_rules & {"BM-IF-001", "BM-IF-002"}
