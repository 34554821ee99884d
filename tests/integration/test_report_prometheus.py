"""Fleet figures from a real Prometheus (Debian's ``prometheus``) scraping two agents and a dead target."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.report.errors import ReportError
from agent.report.prometheus import PrometheusClient, fleet_metrics
from tests.integration import promkit
from tests.integration.agent_harness import free_port
from tests.unit.test_report_support import build_journal, run_cli, shipped_ruleset

SCHEMA = json.loads((Path(__file__).parents[1] / "unit" / "report.schema.json").read_text(encoding="utf-8"))
AGENTS = (("js-fgw-0042", "省发改委信息中心", "省发展和改革委员会", "alert"),
          ("js-dsj-0007", "省政务云运维中心", "省大数据管理局", "audit"))


class _Agent(http.server.ThreadingHTTPServer):
    """Serves a static dutywatch_* exposition whose findings counter grows by 5 a scrape."""

    def __init__(self, host: str, unit: str, dept: str, action: str) -> None:
        self.scrapes = 0
        self.labels = (host, unit, dept, action)
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Agent

    def do_GET(self) -> None:
        s = self.server
        s.scrapes += 1
        host, unit, dept, action = s.labels
        body = (
            "# HELP dutywatch_host_info The host and who answers for it.\n# TYPE dutywatch_host_info gauge\n"
            f'dutywatch_host_info{{host="{host}",unit="{unit}",department="{dept}",level="secret",'
            'network_zone="intranet"} 1\n'
            "# HELP dutywatch_findings_total Findings.\n# TYPE dutywatch_findings_total counter\n"
            f'dutywatch_findings_total{{rule="BM-NET-001",severity="critical",action="{action}",unit="{unit}"}} '
            f"{5 * s.scrapes}\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Prometheus on a loopback port, scraping two agents and one dead target every second."""
    agents = [_Agent(*a) for a in AGENTS]
    threads = [threading.Thread(target=a.serve_forever, daemon=True) for a in agents]
    for t in threads:
        t.start()
    dead = f"127.0.0.1:{free_port()}"
    try:
        with promkit.prometheus(tmp_path_factory.mktemp("prom"),
                                [f"127.0.0.1:{a.server_address[1]}" for a in agents] + [dead]) as url:
            start = time.time()
            # Bounded wait for enough scrapes of every target for increase() and up samples.
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if min(a.scrapes for a in agents) >= 8:
                    break
                time.sleep(0.5)
            time.sleep(1.5)
            end = time.time()
            yield {"url": url, "start": start, "end": end, "dead": dead, "agents": agents}
    finally:
        for a in agents:
            a.shutdown()
            a.server_close()


def test_fleet_figures(prometheus: dict[str, Any]) -> None:
    # The period starts an hour before this Prometheus existed: that hour is no data, not down time.
    m = fleet_metrics(PrometheusClient(prometheus["url"]), prometheus["start"] - 3600, prometheus["end"],
                      "dutywatch")
    assert m.hosts_monitored == 2
    units = {u.unit: u for u in m.units}
    fgw, dsj = units["省发改委信息中心"], units["省政务云运维中心"]
    assert (fgw.department, fgw.hosts) == ("省发展和改革委员会", 1)
    assert isinstance(fgw.violations, int) and fgw.violations > 0 and fgw.audits == 0
    assert dsj.audits > 0 and dsj.violations == 0 and isinstance(dsj.audits, int)
    # seconds of data: no rate per host and day is projected from them
    assert fgw.per_host_day is None and dsj.per_host_day is None
    down = {d.instance: d.down_seconds for d in m.downtime}
    observed = prometheus["end"] - prometheus["start"]
    # to within the query's resolution (a point every m.step seconds over the whole period)
    assert abs(down[prometheus["dead"]] - observed) <= 2 * m.step
    live = [v for k, v in down.items() if k != prometheus["dead"]]
    assert len(live) == 2 and max(live) <= m.step
    assert m.no_data_seconds >= 3600 and m.data_since is not None
    assert all(d.no_data_seconds >= 3600 for d in m.downtime)


def test_report_carries_fleet_figures(prometheus: dict[str, Any], tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_journal(state, shipped_ruleset())
    iso = [dt.datetime.fromtimestamp(prometheus[k], dt.UTC).isoformat(timespec="seconds") for k in ("start", "end")]
    out = tmp_path / "r.json"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--format", "json", "--out", str(out),
                              "--since", iso[0], "--until", iso[1], "--prometheus", prometheus["url"]])
    assert status == 0, err
    doc = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.validate(doc, SCHEMA)
    assert doc["prometheus"]["hosts_monitored"] == 2
    html = tmp_path / "r.html"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--out", str(html),
                              "--since", iso[0], "--until", iso[1], "--prometheus", prometheus["url"]])
    assert status == 0, err
    text = html.read_text(encoding="utf-8")
    assert "七、全网指标（Prometheus）" in text and prometheus["dead"] in text


def test_unreachable_prometheus_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ReportError, match="unreachable"):
        fleet_metrics(PrometheusClient(url, timeout=3), time.time() - 60, time.time())
    with pytest.raises(ReportError, match="not an http"):
        PrometheusClient("file:///etc/passwd")
