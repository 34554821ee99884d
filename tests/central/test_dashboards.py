"""Grafana dashboards: valid against Grafana's schema, provisionable, and every query answers.

The queries are checked by the real promtool: each panel's expression, with
the dashboard variables filled in, is evaluated against a small fleet of
synthetic series (plus the recording rules) and must return data; the key
panels must return exactly the hosts an officer would expect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import jsonschema
import pytest
import yaml
from centralkit import DASHBOARDS, PROM

from tests.shared import shared_path

Tool = Callable[..., CompletedProcess[str]]
GRAFANA = DASHBOARDS / "grafana"
BOARDS = {p.stem: p for p in sorted(GRAFANA.glob("*.json"))}
CJK = re.compile(r"[\u4e00-\u9fff]")


def schema_path() -> Path:
    """Grafana's dashboard schema from the shared vendor folder beside the repository."""
    p = shared_path("vendor", "grafana", "dashboard.jsonschema.json")
    if p is not None:
        return p
    pytest.fail("dashboard.jsonschema.json not found in ../shared/vendor/grafana or /work/shared/vendor/grafana")


def load(name: str) -> dict[str, Any]:
    return dict(json.loads(BOARDS[name].read_text(encoding="utf-8")))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def panel(board: dict[str, Any], title_start: str) -> dict[str, Any]:
    found = [p for p in panels(board) if p["type"] != "row" and p.get("title", "").startswith(title_start)]
    assert len(found) == 1, f"expected one panel titled {title_start!r}"
    return found[0]


def test_the_three_dashboards_exist() -> None:
    assert set(BOARDS) == {"dutywatch-fleet-compliance", "dutywatch-host", "dutywatch-accountability"}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_validates_against_grafana_schema(name: str) -> None:
    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load(name)), key=lambda e: list(e.path))
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []


def test_schema_check_rejects_the_object_form_of_a_variable_query() -> None:
    """The validation is real: the object form of a variable query is refused, as the vendor notes say."""
    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    board = load("dutywatch-fleet-compliance")
    board["templating"]["list"][0]["query"] = {"query": "label_values(dutywatch_host_info, department)",
                                                "refId": "A"}
    assert not jsonschema.Draft7Validator(schema).is_valid(board)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_titles_and_panels_are_in_chinese_with_english(name: str) -> None:
    board = load(name)
    assert CJK.search(board["title"]) and re.search(r"\([A-Za-z ]+\)", board["title"])
    for p in panels(board):
        assert CJK.search(p["title"]) and re.search(r"[A-Za-z]{3}", p["title"]), p["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_variables_are_label_values_strings_from_host_info(name: str) -> None:
    variables = {v["name"]: v for v in load(name)["templating"]["list"]}
    assert {"department", "unit", "host"} <= set(variables)
    for v in variables.values():
        assert isinstance(v["query"], str)
        assert re.fullmatch(r"label_values\(dutywatch_host_info(\{.*\})?, \w+\)", v["query"]), v["query"]
    assert "$department" in variables["unit"]["query"]
    assert "$unit" in variables["host"]["query"]


def test_every_panel_uses_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "dutywatch.yaml").read_text(encoding="utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    uid = source["uid"]
    for name in BOARDS:
        board = load(name)
        for p in panels(board):
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": uid}
            assert p["targets"] and all(t["datasource"]["uid"] == uid for t in p["targets"])
        for v in board["templating"]["list"]:
            assert v["datasource"]["uid"] == uid


def test_dashboard_provider_loads_files_into_a_folder() -> None:
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dutywatch.yaml").read_text(encoding="utf-8"))
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["folder"] == "DutyWatch"
    assert provider["options"]["path"] in (DASHBOARDS / "README.md").read_text(encoding="utf-8")


def test_host_links_open_the_host_dashboard() -> None:
    host_uid = load("dutywatch-host")["uid"]
    links = [link for name in BOARDS for p in panels(load(name))
             for link in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
    assert links
    assert all(f"/d/{host_uid}/" in link["url"] and "var-host=" in link["url"] for link in links)


# -- every query against a synthetic fleet ------------------------------------

A = 'job="dutywatch",instance="10.0.0.1:9847"'
HOSTS = {  # instance -> host, unit, department
    "10.0.0.1:9847": ("js-fgw-0042", "省发改委信息中心", "省发展和改革委员会"),
    "10.0.0.2:9847": ("js-fgw-0107", "省发改委办公室", "省发展和改革委员会"),
    "10.1.0.5:9847": ("zwy-ops-0003", "省政务云运维中心", "省大数据管理局"),
    "10.0.0.3:9847": ("js-fgw-0043", "省发改委信息中心", "省发展和改革委员会"),  # goes down at 61m
    "10.0.0.4:9847": ("js-fgw-0044", "省发改委办公室", "省发展和改革委员会"),  # leaves the targets at 61m
}
EVAL = "90m"


def fleet_series() -> list[dict[str, str]]:
    s: list[tuple[str, str]] = []
    for inst, (host, unit, dept) in HOSTS.items():
        lab = f'job="dutywatch",instance="{inst}"'
        gone = inst in ("10.0.0.3:9847", "10.0.0.4:9847")
        info = f'{lab},host="{host}",unit="{unit}",department="{dept}",level="secret",network_zone="intranet"'
        s.append((f"dutywatch_host_info{{{info}}}", "1x60 stale" if gone else "1x90"))
        s.append((f'dutywatch_build_info{{{lab},version="0.1.0"}}', "1x60 stale" if gone else "1x90"))
        s.append((f"process_start_time_seconds{{{lab}}}", "-3600x60 stale" if gone else "-3600x90"))
        up = {"10.0.0.3:9847": "1x60 0x30", "10.0.0.4:9847": "1x60 stale"}.get(inst, "1x90")
        s.append((f"up{{{lab}}}", up))
    b, c = 'job="dutywatch",instance="10.0.0.2:9847"', 'job="dutywatch",instance="10.1.0.5:9847"'
    s += [
        (f'dutywatch_findings_total{{{A},rule="BM-NET-001",severity="critical",action="alert",unit="省发改委信息中心"}}',
         "_x70 1x20"),
        (f'dutywatch_findings_total{{{A},rule="DB-AUD-001",severity="info",action="audit",unit="省发改委信息中心"}}',
         "0+1x90"),
        # A recent one, so the host board's last-5-minutes panel has something to show at the end.
        (f'dutywatch_findings_total{{{A},rule="BM-FILE-002",severity="high",action="alert",unit="省发改委信息中心"}}',
         "_x87 1x3"),
        (f'dutywatch_findings_total{{{b},rule="ZR-001",severity="medium",action="alert",unit="省发改委办公室"}}',
         "0x50 1+1x40"),
        (f'dutywatch_findings_total{{{c},rule="DB-TAMP-001",severity="high",action="alert",unit="省政务云运维中心"}}',
         "_x80 1x10"),
        (f'dutywatch_findings_total{{{c},rule="ZR-005",severity="high",action="alert",unit="省政务云运维中心"}}',
         "_x80 1x10"),
        (f'dutywatch_events_total{{{A},kind="process.exec"}}', "0+10x90"),
        (f'dutywatch_events_total{{{A},kind="agent.tamper"}}', "0x90"),
        (f'dutywatch_events_total{{{b},kind="agent.tamper"}}', "0x80 1x10"),
        (f'dutywatch_collector_up{{{A},collector="process",mode="netlink"}}', "1x90"),
        (f'dutywatch_collector_up{{{A},collector="network",mode="poll"}}', "1x90"),
        (f'dutywatch_collector_up{{{A},collector="files",mode="fanotify"}}', "1x80 0x10"),
        (f'dutywatch_collector_up{{{A},collector="host",mode="poll"}}', "1x90"),
        (f'dutywatch_last_event_timestamp_seconds{{{A},collector="process"}}', "0+60x90"),
        (f'dutywatch_events_dropped_total{{{A},collector="network",reason="kernel_overflow"}}', "_x85 5x5"),
        (f'dutywatch_events_dropped_total{{{A},collector="process",reason="queue_full"}}', "0x90"),
        (f"dutywatch_queue_depth{{{A}}}", "3x90"),
        (f"dutywatch_queue_capacity{{{A}}}", "65536x90"),
        (f"dutywatch_pipeline_stalled{{{A}}}", "0x90"),
        (f"dutywatch_rules_loaded{{{A}}}", "35x90"),
        (f"dutywatch_rules_reloads_total{{{A}}}", "0x45 1x45"),
        (f"dutywatch_rules_reload_failures_total{{{A}}}", "0x60 1x30"),
        (f"dutywatch_journal_records_total{{{A}}}", "0+1x90"),
        (f"dutywatch_journal_size_bytes{{{A}}}", "1000+100x90"),
        (f"dutywatch_journal_verify_failures_total{{{A}}}", "0x90"),
        (f"dutywatch_journal_write_failures_total{{{A}}}", "0x90"),
        (f'dutywatch_forward_errors_total{{{A},target="tcp://127.0.0.1:6514"}}', "0+1x90"),
        (f'dutywatch_engine_evaluation_seconds_bucket{{{A},le="0.001"}}', "0+5x90"),
        (f'dutywatch_engine_evaluation_seconds_bucket{{{A},le="0.01"}}', "0+9x90"),
        (f'dutywatch_engine_evaluation_seconds_bucket{{{A},le="+Inf"}}', "0+10x90"),
    ]
    return [{"series": name, "values": values} for name, values in s]


def fill(expr: str, host_board: bool) -> str:
    """The expression as Grafana sends it, for a 1h range with every multi-value variable at All."""
    values = {"$__rate_interval": "2m", "$__range_s": "3600", "$__range": "1h", "$__interval": "1m"}
    if host_board:
        values |= {"$instance": "10.0.0.1:9847", "$host": "js-fgw-0042"}
    for var, value in values.items():
        expr = expr.replace(var, value)
    expr = re.sub(r"\$(department|unit|host)\b", ".*", expr)
    assert "$" not in expr.replace("$labels", ""), expr
    return expr


def all_queries() -> list[tuple[str, str]]:
    out = []
    for name in sorted(BOARDS):
        board = load(name)
        host_board = name == "dutywatch-host"
        for v in board["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["query"])
            assert m is not None
            out.append((f"{name} variable {v['name']}", f"count by ({m.group(2)}) ({fill(m.group(1), host_board)})"))
        for p in panels(board):
            for t in p.get("targets", []):
                # A panel that shows only what is non-zero ("(X) > 0", "none" when empty) is checked for X.
                m = re.fullmatch(r"\((.*)\) > 0", t["expr"], re.S)
                expr = m.group(1) if m else t["expr"]
                out.append((f"{name} / {p['title']} / {t['refId']}", fill(expr, host_board)))
    return out


def check(promtool: Tool, tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    doc = {"rule_files": [str(PROM / "dutywatch-recording.yml")], "evaluation_interval": "1m",
           "tests": [{"interval": "1m", "input_series": fleet_series(), "promql_expr_test": tests}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    res = promtool("test", "rules", path)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]


def test_every_query_returns_data_for_a_small_fleet(promtool: Tool, tmp_path: Path) -> None:
    queries = all_queries()
    assert len(queries) > 50
    check(promtool, tmp_path, [{"expr": f"count({expr}) > bool 0", "eval_time": EVAL,
                                "exp_samples": [{"labels": "{}", "value": 1}]} for _, expr in queries])


def expect(board: str, title: str, wrap: str, samples: list[tuple[str, float]]) -> dict[str, Any]:
    (target, *_) = panel(load(board), title)["targets"]
    expr = wrap.replace("X", fill(target["expr"], board == "dutywatch-host"))
    return {"expr": expr, "eval_time": EVAL, "exp_samples": [{"labels": lab, "value": v} for lab, v in samples]}


def test_panels_show_the_hosts_an_officer_expects(promtool: Tool, tmp_path: Path) -> None:
    fleet, acc = "dutywatch-fleet-compliance", "dutywatch-accountability"
    check(promtool, tmp_path, [
        expect(fleet, "有严重违规的主机", "X", [("{}", 1)]),
        expect(fleet, "离线或缺失 Agents", "X", [("{}", 2)]),
        expect(fleet, "违规外联", "X", [("{}", 1)]),
        expect(fleet, "合规主机占比", "X", [("{}", 2 / 3)]),
        expect(fleet, "离线或缺失的代理", "count by (host, state) (X)",
               [('{host="js-fgw-0043",state="离线 down"}', 1), ('{host="js-fgw-0044",state="缺失 absent"}', 1)]),
        expect(fleet, "采集器停止", "count by (host, collector, problem) (X)",
               [('{host="js-fgw-0042",collector="files",problem="停止 down"}', 1),
                ('{host="js-fgw-0042",collector="network",problem="降级 degraded"}', 1),
                ('{host="js-fgw-0042",collector="network",problem="丢事件 dropping (1h)"}', 1)]),
        # Range panels read the minute counts, which run 30 s behind: ZR-001's last step, scraped at 90m,
        # is counted by the minute recorded at 91m; 39 of its 40 findings are in.
        expect(fleet, "违规最多的规则", "round(X)",
               [('{rule="ZR-001",severity="medium"}', 39), ('{rule="BM-NET-001",severity="critical"}', 1),
                ('{rule="BM-FILE-002",severity="high"}', 1),
                ('{rule="DB-TAMP-001",severity="high"}', 1), ('{rule="ZR-005",severity="high"}', 1)]),
        # Audit records are not violations; a first finding counts; a rising counter counts its increase.
        expect(acc, "各计算机违规", "round(sum by (host, rule) (X))",
               [('{host="js-fgw-0042",rule="BM-NET-001"}', 1), ('{host="js-fgw-0042",rule="BM-FILE-002"}', 1),
                ('{host="js-fgw-0107",rule="ZR-001"}', 39),
                ('{host="zwy-ops-0003",rule="DB-TAMP-001"}', 1), ('{host="zwy-ops-0003",rule="ZR-005"}', 1)]),
        expect(acc, "各主管部门违规", "round(X)",
               [('{department="省发展和改革委员会"}', 41), ('{department="省大数据管理局"}', 2)]),
        expect(acc, "无人负责的操作（按计算机）", "round(sum by (host, unit) (X))",
               [('{host="js-fgw-0107",unit="省发改委办公室"}', 39)]),
        expect(acc, "监控中断", "round(sum by (host) (X))", [('{host="js-fgw-0107"}', 1)]),
        expect(acc, "破坏审计的操作", "sum by (host, rule) (X)",
               [('{host="zwy-ops-0003",rule="DB-TAMP-001"}', 1), ('{host="zwy-ops-0003",rule="ZR-005"}', 1)]),
        expect("dutywatch-host", "采集器及模式", "sum by (collector, mode) (X)",
               [('{collector="process",mode="netlink"}', 1), ('{collector="network",mode="poll"}', 1),
                ('{collector="files",mode="fanotify"}', 0), ('{collector="host",mode="poll"}', 1)]),
    ])


# -- what an officer sees -----------------------------------------------------

def test_one_quantity_per_axis_with_its_unit() -> None:
    """Every chart has its unit; several queries on one chart are the same quantity (never records with bytes,
    a queue's depth with its capacity, or forward errors with rule reloads)."""
    same_quantity = ("规则重载", "日志失败", "规则评估耗时")  # ok/failed reloads, verify/write failures, p50/p99
    for name in BOARDS:
        for p in panels(load(name)):
            if p["type"] != "timeseries":
                continue
            assert p["fieldConfig"]["defaults"].get("unit"), (name, p["title"])
            if len(p["targets"]) > 1:
                assert p["title"].startswith(same_quantity), (name, p["title"])


def test_host_dashboard_panels_say_what_they_show() -> None:
    host = load("dutywatch-host")
    queue = panel(host, "事件队列占用")
    assert queue["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert all("/ dutywatch_queue_capacity" in t["expr"] or "queue_capacity" not in t["expr"]
               for t in queue["targets"])  # the capacity is the denominator, never a line of its own
    assert panel(host, "日志记录数")["fieldConfig"]["defaults"]["unit"] == "short"
    assert panel(host, "日志大小变化")["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert panel(host, "流水线停滞")["fieldConfig"]["defaults"]["unit"] == "bool_yes_no"
    reloads = panel(host, "规则重载")
    assert not any("forward_errors" in t["expr"] for t in reloads["targets"])
    assert reloads["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "none"
    assert any("forward_errors" in t["expr"] for t in panel(host, "转发错误")["targets"])
    level = panel(host, "密级与网络")["targets"][0]
    assert '"level_zh", "机密", "level", "secret"' in level["expr"] and "{{level_zh}}" in level["legendFormat"]
    assert '"zone_zh", "内网", "network_zone", "intranet"' in level["expr"]
    # series of zeros are left out of the legend
    for title in ("事件速率", "丢弃事件", "违规（按规则"):
        assert panel(host, title)["targets"][0]["expr"].endswith(") > 0"), title


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_empty_panels_say_none(name: str) -> None:
    """A table or chart with nothing wrong to show says so ("无 none"), never a blank panel."""
    for p in panels(load(name)):
        if p["type"] in ("table", "bargauge", "timeseries"):
            assert p["fieldConfig"]["defaults"].get("noValue") == "无 none", (name, p["title"])


def test_level_and_zone_read_in_chinese(promtool: Tool, tmp_path: Path) -> None:
    (target,) = panel(load("dutywatch-host"), "密级与网络")["targets"]
    check(promtool, tmp_path, [{"expr": f"count by (level_zh, zone_zh) ({fill(target['expr'], True)})",
                                "eval_time": EVAL, "exp_samples": [{"labels": '{level_zh="机密",zone_zh="内网"}',
                                                                    "value": 1}]}])
