"""Prometheus rules in dashboards/prometheus/: promtool-clean, unit-tested, documented."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml
from centralkit import PROM, PROM_TESTS, README, RULE_FILES, readme_anchors

Tool = Callable[..., CompletedProcess[str]]
ANNOTATIONS = {"summary_zh", "summary_en", "description_zh", "description_en", "runbook_url"}
OUTBOUND_RULES = ("BM-NET-001", "BM-NET-002", "BM-NET-003")


def rules() -> list[dict[str, Any]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            out += group["rules"]
    return out


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def recordings() -> list[str]:
    return [r["record"] for r in rules() if "record" in r]


def test_rules_are_promtool_clean(promtool: Tool) -> None:
    res = promtool("check", "rules", *RULE_FILES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in res.stdout


@pytest.mark.parametrize("test_file", PROM_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool: Tool, test_file: Path) -> None:
    res = promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_both_fires_and_stays_silent_in_the_unit_tests() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in PROM_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for t in case.get("alert_rule_test", []):
                (fired if t.get("exp_alerts") else silent).add(t["alertname"])
    names = set(alerts())
    assert names - fired == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"
    assert (fired | silent) - names == set(), "tests name alerts that do not exist"


def test_every_recording_rule_is_checked_by_value() -> None:
    exprs = " ".join(t["expr"] for path in PROM_TESTS
                     for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
                     for t in case.get("promql_expr_test", []))
    assert [r for r in recordings() if r not in exprs] == []


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_bilingual_annotations_and_a_runbook_section(name: str) -> None:
    rule = alerts()[name]
    ann = rule["annotations"]
    assert set(ann) >= ANNOTATIONS
    assert re.search(r"[\u4e00-\u9fff]", ann["summary_zh"]) and re.search(r"[\u4e00-\u9fff]", ann["description_zh"])
    assert not re.search(r"[\u4e00-\u9fff]", ann["summary_en"].replace("{{ $labels.unit }}", ""))
    assert rule["labels"]["severity"] in ("page", "critical", "warning")
    url = ann["runbook_url"]
    assert url.split("#")[0].endswith("dashboards/README.md")
    anchor = url.split("#", 1)[1]
    assert anchor == name.lower()
    assert anchor in readme_anchors(), f"dashboards/README.md has no section for {name}"


def test_illegal_outbound_connection_pages_at_once_for_the_three_rules() -> None:
    rule = alerts()["DutyWatchIllegalOutboundConnection"]
    assert rule["labels"]["severity"] == "page"
    assert rule.get("for") in ("0m", "0s", 0)
    pattern = re.search(r'rule=~"([^"]+)"', rule["expr"])
    assert pattern is not None
    assert all(re.fullmatch(pattern.group(1), r) for r in OUTBOUND_RULES)
    assert not re.fullmatch(pattern.group(1), "BM-NET-004")


def test_readme_runbook_names_only_alerts_that_exist() -> None:
    text = README.read_text(encoding="utf-8")
    documented = set(re.findall(r"^### (DutyWatch\w+)\s*$", text, re.M))
    assert documented == set(alerts())


def test_unit_tests_catch_a_slower_page(promtool: Tool, tmp_path: Path) -> None:
    """The tests can fail: delaying the 违规外联 page by five minutes breaks them."""
    shutil.copytree(PROM, tmp_path / "prometheus")
    alerts_file = tmp_path / "prometheus" / "dutywatch-alerts.yml"
    text = alerts_file.read_text(encoding="utf-8")
    start = text.index("alert: DutyWatchIllegalOutboundConnection")
    end = text.index("for: 0m", start)
    alerts_file.write_text(text[:end] + "for: 5m" + text[end + len("for: 0m"):], encoding="utf-8")
    res = promtool("test", "rules", "violations.yml", cwd=tmp_path / "prometheus" / "tests")
    assert res.returncode != 0
    assert "DutyWatchIllegalOutboundConnection" in res.stdout + res.stderr
