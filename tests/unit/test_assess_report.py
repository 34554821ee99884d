"""The configuration assessment in reports: per clause and item with evidence, a score per clause, fleets compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from agent.assess.context import HostContext
from agent.assess.evaluate import run_check
from agent.assess.policy import load_policies, shipped_policy_dir
from agent.assess.samples import built_root, load_samples
from agent.daemon.assessor import snapshot_record
from agent.journal.bundle import export_bundle
from tests.unit.test_report_support import T0, build_journal, registry_variant, run_cli, shipped_ruleset

SCHEMA = json.loads((Path(__file__).parent / "report.schema.json").read_text(encoding="utf-8"))


def _snapshot(host: str, t: float, files: dict[str, Any], unit: str, dept: str) -> dict[str, Any]:
    """A real run of the shipped policy on the hardened sample root with ``files`` changed."""
    ps = load_policies([shipped_policy_dir()])
    sample = next(s for s in load_samples(shipped_policy_dir() / "tests" / "l3-host.yaml") if s.root.get(
        "/etc/os-release", "").startswith("PRETTY_NAME=\"Debian"))
    sample.files = files
    with built_root(sample) as root:
        ctx = HostContext(root)
        results = [run_check(c, ctx) for c in ps.checks]
    doc = {"family": "debian", "seconds": 0.1, "policies": ps.names,
           "not_provable": [{"item": u.item, "clause": u.clause, "reason": {"zh": u.reason.zh, "en": u.reason.en}}
                            for u in ps.unprovable]}
    return snapshot_record(host, t, "schedule", doc, results, unit, dept)


ROOT_LOGIN = {"/etc/ssh/sshd_config.d/00-root.conf": "PermitRootLogin yes\n"}


def _report(argv: list[str], out: Path) -> tuple[int, str, str]:
    status, _, err = run_cli(["report", *argv, "--out", str(out)])
    return status, out.read_text(encoding="utf-8"), err


def test_local_report_shows_each_check_with_evidence_and_a_score_per_clause(tmp_path: Path) -> None:
    state = tmp_path / "state"
    host = "js-fgw-0042"
    extra = [_snapshot(host, T0 + 10, ROOT_LOGIN, "省发改委信息中心", "省发展和改革委员会"),
             _snapshot(host, T0 + 20, {**ROOT_LOGIN, "/etc/profile.d/tmout.sh": "TMOUT=3600\n"},
                       "省发改委信息中心", "省发展和改革委员会")]
    build_journal(state, shipped_ruleset(), extra=extra)
    status, text, err = _report(["--state-dir", str(state), "--format", "json", "--lang", "en"], tmp_path / "r.json")
    assert status == 0, err
    doc = json.loads(text)
    jsonschema.validate(doc, SCHEMA)
    (h,) = doc["assessment"]["hosts"]
    assert h["time"] == T0 + 20  # the latest run of the period
    by = {c["clause"]: c for c in h["clauses"]}
    ac = by["GB/T 22239-2019 8.1.4.2"]
    assert ac["fail"] == 1 and 0 < ac["score"] < 100
    checks = {c["check"]: c for it in ac["items"] for c in it["checks"]}
    assert checks["DW-L3-AC-002"]["result"] == "fail"
    assert "/etc/ssh/sshd_config.d/00-root.conf:1: PermitRootLogin yes" in checks["DW-L3-AC-002"]["evidence"][0]
    assert by["GB/T 22239-2019 8.1.4.1"]["fail"] == 1  # TMOUT in the later run
    assert by["GB/T 22239-2019 8.1.4.5"]["score"] == 100.0
    assert {u["item"] for u in h["not_provable"]} >= {"L3-CES1-04", "L3-CES1-11"}
    status, html, err = _report(["--state-dir", str(state), "--format", "html", "--lang", "zh"], tmp_path / "r.html")
    assert status == 0, err
    assert "配置核查" in html and "PermitRootLogin yes" in html and "SSH禁止root直接登录" in html
    assert "双因素" in html  # the items a host cannot prove, with the reason


def test_fleet_report_compares_hosts_and_units(tmp_path: Path) -> None:
    bundles = []
    hosts = (("js-fgw-0042", "省发改委信息中心", "省发展和改革委员会", {}),
             ("js-dsj-0007", "省大数据管理中心", "省政务服务管理办公室", ROOT_LOGIN))
    for host, unit, dept, files in hosts:
        state = tmp_path / host
        build_journal(state, shipped_ruleset(), registry=registry_variant(tmp_path, host, unit, dept), host=host,
                      extra=[_snapshot(host, T0 + 10, files, unit, dept)])
        b = tmp_path / f"{host}.bundle"
        export_bundle(state / "journal.db", state / "journal.key", b, since=None, until=None,
                      period={"since": None, "until": None}, clock=lambda: T0 + 30 * 86400)
        bundles.append(str(b))
    status, text, err = _report(["--format", "json", "--evidence", *bundles], tmp_path / "f.json")
    assert status == 0, err
    doc = json.loads(text)
    jsonschema.validate(doc, SCHEMA)
    scores = {h["host"]: {c["clause"]: c["score"] for c in h["clauses"]} for h in doc["assessment"]["hosts"]}
    assert scores["js-fgw-0042"]["GB/T 22239-2019 8.1.4.2"] == 100.0
    assert scores["js-dsj-0007"]["GB/T 22239-2019 8.1.4.2"] < 100.0
    assert {h["unit"] for h in doc["assessment"]["hosts"]} == {"省发改委信息中心", "省大数据管理中心"}
    status, html, err = _report(["--format", "html", "--lang", "en", "--evidence", *bundles], tmp_path / "f.html")
    assert status == 0, err
    assert "Hosts compared" in html and "Units compared" in html and "省大数据管理中心" in html
