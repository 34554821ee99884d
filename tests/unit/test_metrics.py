"""Metrics: bounded, clean labels; values read at scrape time; nothing global."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from agent.events import KINDS
from agent.metrics import OTHER, Metrics, label_value, rule_label
from collectors.base import Health

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(m: Metrics) -> Samples:
    body = m.exposition()[0].decode("utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body) for s in fam.samples}


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == "dutywatch_" + name}


def test_label_values_are_clean_and_bounded() -> None:
    assert label_value("a\nb\x00c\x1b[31m\x9bd\u2028") == "a\\x0ab\\x00c\\x1b[31m\\x9bd\\u2028"
    assert label_value("dw\u202egpj.exe") == "dw\\u202egpj.exe"
    assert label_value("bad\udcffname") == "bad?name"
    long = label_value("单" * 500)
    assert len(long) == 64 and long.endswith("…")
    assert label_value(None) == ""
    assert rule_label('BM-NET-001"} evil{x="') == "BM-NET-001___evil_x__"
    assert rule_label("") == OTHER


def test_every_event_kind_exists_before_the_first_event() -> None:
    m = Metrics("1.2.3", process_metrics=False)
    events = series(scrape(m), "events_total")
    assert events == {(("kind", k),): 0.0 for k in KINDS}
    m.event("net.connect")
    m.event("made.up")
    events = series(scrape(m), "events_total")
    assert events[(("kind", "net.connect"),)] == 1
    assert events[(("kind", OTHER),)] == 1


def test_findings_labels_are_guarded_and_capped() -> None:
    m = Metrics("1.2.3", max_series=3, process_metrics=False)
    m.finding("BM-NET-001", "critical", "alert", "省发改委信息中心")
    m.finding("BM-NET-001", "critical", "alert", "省发改委信息中心")
    m.finding("X-1", "apocalyptic", "explode", "unit\nwith newline")
    for i in range(10):  # a runaway source of distinct rule ids
        m.finding(f"GEN-{i}", "low", "audit", "u")
    found = series(scrape(m), "findings_total")
    assert found[(("action", "alert"), ("rule", "BM-NET-001"), ("severity", "critical"),
                  ("unit", "省发改委信息中心"))] == 2
    assert found[(("action", OTHER), ("rule", "X-1"), ("severity", OTHER), ("unit", "unit\\x0awith newline"))] == 1
    assert found[(("action", OTHER), ("rule", OTHER), ("severity", OTHER), ("unit", OTHER))] == 9
    assert len(found) == 4  # three real series plus the overflow series
    assert sum(found.values()) == 13  # nothing is lost, only folded


def test_collector_health_is_read_at_scrape_time() -> None:
    healths = {"process": Health(mode="netlink", up=True)}
    m = Metrics("1.2.3", lambda: healths, process_metrics=False)
    m.dropped("process", "queue_full", 4)
    s = scrape(m)
    assert series(s, "collector_up") == {(("collector", "process"), ("mode", "netlink")): 1.0}
    assert series(s, "events_dropped_total") == {(("collector", "process"), ("reason", "queue_full")): 4.0}

    healths["process"].drop("kernel_overflow", 7)
    healths["process"].saw(1_700_000_000.0)
    healths["process"].up = False
    healths["media"] = Health(mode="poll", up=True)
    s = scrape(m)
    assert series(s, "collector_up") == {(("collector", "process"), ("mode", "netlink")): 0.0,
                                         (("collector", "media"), ("mode", "poll")): 1.0}
    assert series(s, "events_dropped_total") == {
        (("collector", "process"), ("reason", "queue_full")): 4.0,
        (("collector", "process"), ("reason", "kernel_overflow")): 7.0,
        (("collector", "media"), ("reason", "queue_full")): 0.0,
    }
    assert series(s, "last_event_timestamp_seconds")[(("collector", "process"),)] == 1_700_000_000.0


def test_a_failing_health_source_does_not_break_the_scrape() -> None:
    def broken() -> dict[str, Health]:
        raise RuntimeError("collector table being rebuilt")

    m = Metrics("1.2.3", broken, process_metrics=False)
    s = scrape(m)
    assert series(s, "collector_up") == {}
    assert series(s, "build_info") == {(("version", "1.2.3"),): 1.0}


def test_evaluation_histogram_is_cumulative() -> None:
    m = Metrics("1.2.3", process_metrics=False)
    for v in (2e-6, 2e-6, 3e-4, 5.0):
        m.observe_evaluation(v)
    s = scrape(m)
    buckets = {dict(lbl)["le"]: v for lbl, v in series(s, "engine_evaluation_seconds_bucket").items()}
    assert buckets["1e-06"] == 0 and buckets["5e-06"] == 2 and buckets["0.0005"] == 3
    assert buckets["0.1"] == 3 and buckets["+Inf"] == 4
    assert series(s, "engine_evaluation_seconds_count") == {(): 4.0}
    assert abs(series(s, "engine_evaluation_seconds_sum")[()] - 5.000304) < 1e-9


def test_host_info_is_replaced_not_added() -> None:
    m = Metrics("1.2.3", process_metrics=False)
    m.set_host("h1", "单位甲", "部门", "secret", "intranet")
    m.set_host("h1", "单位乙", "部门", "secret", "intranet")
    info = series(scrape(m), "host_info")
    assert list(info) == [(("department", "部门"), ("host", "h1"), ("level", "secret"),
                           ("network_zone", "intranet"), ("unit", "单位乙"))]


def test_rules_journal_queue_and_stall() -> None:
    depth = [0]
    m = Metrics("1.2.3", process_metrics=False)
    m.set_rules_loaded(42)
    m.rules_reloaded(True)
    m.rules_reloaded(False)
    m.rules_reloaded(False)
    m.set_journal(1000, 65536)
    m.journal_appended(2)
    m.journal_write_failed()
    m.watch_queue(lambda: depth[0], 65536)
    depth[0] = 17
    m.set_stalled(True)
    s = scrape(m)
    assert series(s, "rules_loaded") == {(): 42.0}
    assert series(s, "rules_reloads_total") == {(): 1.0}
    assert series(s, "rules_reload_failures_total") == {(): 2.0}
    assert series(s, "journal_records_total") == {(): 1002.0}
    assert series(s, "journal_size_bytes") == {(): 65536.0}
    assert series(s, "journal_write_failures_total") == {(): 1.0}
    assert series(s, "journal_verify_failures_total") == {(): 0.0}
    assert series(s, "queue_depth") == {(): 17.0}
    assert series(s, "queue_capacity") == {(): 65536.0}
    assert series(s, "pipeline_stalled") == {(): 1.0}


def test_no_global_registry_and_no_created_series() -> None:
    a = Metrics("1.0.0", process_metrics=False)
    b = Metrics("2.0.0", process_metrics=False)
    a.finding("R-1", "low", "audit", "u")
    assert series(scrape(b), "findings_total") == {}
    body = a.exposition()[0].decode()
    assert "_created" not in body
    assert "dutywatch_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()


def test_process_metrics_when_asked() -> None:
    body = Metrics("1.0.0").exposition()[0].decode()
    assert "process_resident_memory_bytes" in body
