"""The report as one JSON document with every section (schema: tests/unit/report.schema.json)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, TextIO

from agent.report.assessment import document as assessment_document
from agent.report.build import Report
from agent.report.model import SEVERITIES, Capped, Evidence, Repeat, Tally

FORMAT = "dutywatch-report"
VERSION = 1


def _tally(t: Tally) -> dict[str, Any]:
    return {"by_severity": dict(zip(SEVERITIES, t.by_severity, strict=True)), "alerts": t.alerts,
            "audits": t.audits, "total": t.total}


def _evidence(r: Report, e: Evidence) -> dict[str, Any]:
    return {"seq": e.seq, "time": e.time, "time_iso": r.when(e.time), "host": e.host, "rule": e.rule,
            "severity": e.severity, "action": e.action, "process": e.process, "operator": e.operator or None,
            "object": e.object, "unit": e.unit or None, "department": e.department or None,
            "message": {"zh": e.message_zh, "en": e.message_en}, "count": e.count}


def _capped(r: Report, c: Capped) -> dict[str, Any]:
    return {"total": c.total, "listed": len(c.rows), "omitted": c.omitted,
            "omitted_by_severity": dict(zip(SEVERITIES, c.omitted_by_severity, strict=True)),
            "rows": [_evidence(r, e) for e in c.rows]}


def _repeats(r: Report, rows: tuple[Repeat, ...]) -> list[dict[str, Any]]:
    return [{"rule": x.rule, "title": {"zh": x.title_zh, "en": x.title_en}, "severity": x.severity,
             "operator": x.operator or None, "unit": x.unit or None, "custodian": x.custodian or None,
             "object": x.object, "process": x.process, "host": x.host, "count": x.count, "first": x.first,
             "last": x.last, "first_iso": r.when(x.first), "last_iso": r.when(x.last)} for x in rows]


def document(r: Report) -> dict[str, Any]:
    """The whole report as plain JSON data."""
    d = r.data
    c = d.continuity
    return {
        "report": FORMAT, "version": VERSION, "lang": r.lang, "generated": r.when(r.generated),
        "fleet": r.fleet,
        "period": {"since": r.period.since, "until": r.period.until, "since_iso": r.when(r.period.since) or None,
                   "until_iso": r.when(r.period.until) or None},
        "coverage": {
            "since": r.span[0], "until": r.span[1], "monitored_seconds": r.monitored, "complete": r.watched_all,
            "hosts": [{"host": cv.host, "since": cv.since, "until": cv.until, "monitored_seconds": cv.monitored,
                       "before_seconds": cv.before, "gap_seconds": cv.gaps, "after_seconds": cv.after,
                       "share": cv.share, "runs": cv.runs, "still_running": cv.still_running,
                       "unmonitored": [{"since": x.since, "until": x.until, "where": x.where} for x in cv.stretches]}
                      for cv in r.coverage],
        },
        "summary": {
            "records": d.records, "first_seq": d.first_seq, "last_seq": d.last_seq, "hosts": list(d.hosts),
            "findings": _tally(d.total),
            "by_day": [{"day": day, **_tally(t)} for day, t in d.by_day],
            "by_hour": [{"hour": hour, **_tally(t)} for hour, t in d.by_hour],
            "by_unit": [{"department": g.department or None, "unit": g.unit or None, "hosts": list(g.hosts),
                         "host_count": g.host_count, **_tally(g.tally)} for g in d.groups],
        },
        "controls": [{"control": x.name, "area": {"zh": x.area_zh, "en": x.area_en}, "items": list(x.items),
                      "requirement": {"zh": x.summary_zh, "en": x.summary_en}, "status": x.status,
                      "findings": x.findings, "built_in": x.built_in or None,
                      "rules": [{"id": rr.id, "pack": rr.pack, "title": {"zh": rr.title_zh, "en": rr.title_en},
                                 "severity": rr.severity, "action": rr.action, "findings": rr.count,
                                 "first": rr.first, "last": rr.last} for rr in x.rules]}
                     for x in r.controls],
        "accountability": {
            "operators": [{"operator": p.operator or None, "account": p.account or None, "unit": p.unit or None,
                           "host_unit": p.host_unit or None,
                           "roles": list(p.roles), "violations": p.tally.alerts,
                           "audits": p.tally.audits, "rules": [{"rule": k, "count": n} for k, n in p.rules]}
                          for p in d.operators],
            "units": [{"department": g.department or None, "unit": g.unit or None, "violations": g.tally.alerts,
                       "audits": g.tally.audits} for g in d.groups],
            "owners": [{"unit": o.unit, "violations": o.tally.alerts, "audits": o.tally.audits} for o in d.owners],
            "unattributed": _capped(r, d.unattributed),
        },
        "violations": _capped(r, d.violations),
        "violation_groups": {"groups": _repeats(r, d.repeats), "folded": d.repeats_folded},
        "unattributed_groups": _repeats(r, d.unattributed_repeats),
        "continuity": {
            "runs": [asdict(x) for x in c.runs],
            "gaps": [{**asdict(g), "seconds": g.seconds} for g in c.gaps],
            "gap_seconds": c.gap_seconds, "reload_failures": c.reload_failures,
            "counts": dict(c.counts), "events_total": c.events_total,
            "events": [asdict(e) for e in c.events],
        },
        "assessment": assessment_document(d.assessment),
        "integrity": [asdict(i) for i in r.integrity],
        "refused": [asdict(i) for i in r.refused],
        "prometheus": None if r.prometheus is None else {
            **{k: v for k, v in asdict(r.prometheus).items() if k not in ("units", "downtime")},
            "down_seconds": r.prometheus.down_seconds, "no_data_seconds": r.prometheus.no_data_seconds,
            "units": [asdict(u) for u in r.prometheus.units],
            "downtime": [asdict(x) for x in r.prometheus.downtime],
        },
    }


def write_json(r: Report, out: TextIO) -> None:
    """Write the document, indented, UTF-8 text kept as is."""
    json.dump(document(r), out, ensure_ascii=False, indent=1)
    out.write("\n")
