"""A province in small: 100 simulated agents, a real Prometheus remote-writing to a real VictoriaMetrics.

The fleet boards' queries and the alerting rules must answer from the
long-term store, every host must arrive there with its labels, and an
agent's exposition must stay small enough for 50,000 of them.
"""

from __future__ import annotations

from pathlib import Path

from tests.fleet.simkit import FleetSim, Stack, alert_exprs, board_queries, query, run_panel, series, template, wait

HOSTS = 100


def test_an_agents_exposition_stays_small() -> None:
    text = template()
    assert series(text) < 150, series(text)
    assert len(text.encode()) < 30 * 1024, len(text.encode())


def test_a_fleet_of_100_reaches_the_long_term_store_and_its_dashboards_and_alerts_answer(tmp_path: Path) -> None:
    sim = FleetSim(HOSTS)
    sim.start()
    stack = Stack(tmp_path, sim, interval="2s", rules_every=2)
    try:
        stack.start()
        wait(lambda: _count(stack.prom, 'up{job="dutywatch"} == 1') == HOSTS, "Prometheus scrapes every host", 180)
        wait(lambda: _count(stack.vm, "dutywatch_host_info") == HOSTS, "every host in VictoriaMetrics", 120)
        # Units and departments came through as the agents label them.
        units, _ = query(stack.vm, "count by (unit) (dutywatch_host_info)")
        assert len(units) == 50
        per_host, _ = query(stack.vm, 'count({__name__=~"dutywatch_.*", job="dutywatch"}) / count(dutywatch_host_info)')
        assert 50 < float(per_host[0]["value"][1]) < 150
        # The recording rules ran in Prometheus and their results reached the store as well.
        wait(lambda: _count(stack.vm, "instance_rule:dutywatch_violations:increase5m") > 0,
             "recording rules in VictoriaMetrics", 120)
        for panel in board_queries(3600):
            run_panel(stack.vm, panel, 3600)  # as Grafana runs it, over an hour; raises on an error answer
        # Every tenth host keeps reaching the Internet: the store shows exactly those, and so do the alerts.
        wait(lambda: _count(stack.vm, "instance:dutywatch_critical_violations:increase1d > 0") == HOSTS // 10,
             "the critical-violation hosts in VictoriaMetrics", 120)

        def fired() -> dict[str, int]:
            return {name: len(query(stack.vm, expr)[0]) for name, expr in alert_exprs()}
        wait(lambda: fired()["DutyWatchIllegalOutboundConnection"] == HOSTS // 10, "the 违规外联 alerts", 120)
        # The minute counts the range panels read find the same hosts, and only those.
        wait(lambda: _count(stack.vm, 'sum by (host) (sum_over_time('
                                      'instance_rule:dutywatch_violations:increase1m{rule="BM-NET-001"}[1h]))')
             == HOSTS // 10, "the minute counts of 违规外联 in VictoriaMetrics", 120)
        assert _count(stack.vm, "instance_rule:dutywatch_violations:increase1m") <= HOSTS // 10
        alerts = fired()
        assert alerts["DutyWatchAgentDown"] == 0 and alerts["DutyWatchNoAgents"] == 0, alerts
    finally:
        stack.stop()
        sim.stop()


def _count(base: str, expr: str) -> int:
    try:
        result, _ = query(base, f"count({expr})")
    except OSError:
        return -1
    return int(float(result[0]["value"][1])) if result else 0
