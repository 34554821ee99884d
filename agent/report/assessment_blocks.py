"""The configuration assessment's tables in the control-coverage section (HTML and PDF).

Per clause and L3-CES1 item: each host's check results with their evidence
beside the event rules' table, the host's score per clause, the items a host
cannot prove, and, for a fleet, hosts and units compared clause by clause.
"""

from __future__ import annotations

from agent.report.assessment import CLAUSES, HostAssessment
from agent.report.build import Report
from agent.report.sections import Block, Para, Table

_T = {
    "heading": ("配置核查：主机状态证据（dutywatch assess）", "Configuration assessment: evidence of the host's state "
                                                        "(dutywatch assess)"),
    "none": ("本期间没有配置核查记录（代理在 assess 开启时于启动、定时和配置变化时执行）。",
             "No configuration assessment in this period (the agent runs it at start, on its schedule and when a "
             "checked file changes, unless assess is off)."),
    "scores": ("各条款得分（通过 / 已判定项，不适用项不计）", "Score per clause (passing of the decided checks; not "
                                                     "applicable ones do not count)"),
    "checks": ("核查项结果与证据", "Check results and their evidence"),
    "unprovable": ("主机配置无法证明的测评项", "Items a host's configuration cannot prove"),
    "fleet": ("主机间对比（各条款得分 %）", "Hosts compared (score per clause, %)"),
    "units": ("单位间对比（各条款平均得分 %）", "Units compared (mean score per clause, %)"),
    "clause": ("条款", "Clause"), "area": ("领域", "Area"), "pass": ("通过", "Pass"), "fail": ("不符合", "Fail"),
    "na": ("不适用", "N/A"), "score": ("得分", "Score"), "item": ("测评项", "Item"), "check": ("核查项", "Check"),
    "result": ("结果", "Result"), "evidence": ("证据", "Evidence"), "host": ("主机", "Host"),
    "unit": ("单位", "Unit"), "hosts": ("主机数", "Hosts"), "reason": ("原因", "Reason"),
    "time": ("核查时间", "Assessed"),
}
_RESULT = {"pass": ("通过", "pass"), "fail": ("不符合", "FAIL"), "not_applicable": ("不适用", "n/a")}


def _t(lang: str, key: str) -> str:
    zh, en = _T[key]
    return zh if lang == "zh" else en


def _score(s: float | None) -> str:
    return "—" if s is None else f"{s:.0f}%"


def _host_blocks(r: Report, h: HostAssessment, lang: str) -> list[Block]:
    out: list[Block] = []
    rows = []
    for name, zh, en in CLAUSES:
        p, f, na, s = h.score(name)
        rows.append((name, zh if lang == "zh" else en, str(p), str(f), str(na), _score(s)))
    out.append(Table(f"{_t(lang, 'scores')} — {h.host} ({_t(lang, 'time')} {r.short(h.time)})",
                     (_t(lang, "clause"), _t(lang, "area"), _t(lang, "pass"), _t(lang, "fail"), _t(lang, "na"),
                      _t(lang, "score")), tuple(rows), (2.2, 1.6, 0.7, 0.7, 0.7, 0.8)))
    order = {name: i for i, (name, _, _) in enumerate(CLAUSES)}
    checks = sorted(h.checks, key=lambda c: (order.get(c.clause, 99), c.items[:1], c.result != "fail", c.check))
    rows = [(c.clause.rsplit(" ", 1)[-1], ", ".join(i.rsplit("-", 1)[-1] for i in c.items), c.check,
             c.title_zh if lang == "zh" else c.title_en, _RESULT.get(c.result, (c.result, c.result))[lang != "zh"],
             " | ".join(c.evidence)) for c in checks]
    out.append(Table(_t(lang, "checks"), (_t(lang, "clause"), _t(lang, "item"), _t(lang, "check"), "",
                                          _t(lang, "result"), _t(lang, "evidence")), tuple(rows),
                     (0.8, 0.8, 1.4, 2.6, 0.8, 4.6)))
    if h.unprovable:
        out.append(Table(_t(lang, "unprovable"), (_t(lang, "item"), _t(lang, "clause"), _t(lang, "reason")),
                         tuple((i, c, z if lang == "zh" else e) for i, c, z, e in h.unprovable), (1, 1.6, 6)))
    return out


def assessment_blocks(r: Report) -> tuple[Block, ...]:
    """The blocks appended to the control-coverage section."""
    lang = r.lang
    hosts = r.data.assessment
    out: list[Block] = [Para(_t(lang, "heading"))]
    if not hosts:
        out.append(Para(_t(lang, "none"), "note"))
        return tuple(out)
    if len(hosts) == 1 and not r.fleet:
        return (*out, *_host_blocks(r, hosts[0], lang))
    heads = tuple(name.rsplit(" ", 1)[-1] for name, _, _ in CLAUSES)
    rows = []
    units: dict[str, list[HostAssessment]] = {}
    for h in hosts:
        rows.append((h.host, h.unit, *(_score(h.score(n)[3]) for n, _, _ in CLAUSES),
                     str(sum(c.result == "fail" for c in h.checks))))
        units.setdefault(h.unit, []).append(h)
    out.append(Table(_t(lang, "fleet"), (_t(lang, "host"), _t(lang, "unit"), *heads, _t(lang, "fail")),
                     tuple(rows), (2, 2, *(0.8,) * len(CLAUSES), 0.7)))
    urows = []
    for unit, hs in sorted(units.items()):
        means = []
        for n, _, _ in CLAUSES:
            vals = [s for s in (h.score(n)[3] for h in hs) if s is not None]
            means.append(_score(sum(vals) / len(vals) if vals else None))
        urows.append((unit, str(len(hs)), *means))
    out.append(Table(_t(lang, "units"), (_t(lang, "unit"), _t(lang, "hosts"), *heads), tuple(urows),
                     (2.5, 0.7, *(0.8,) * len(CLAUSES))))
    worst = sorted(hosts, key=lambda h: -sum(c.result == "fail" for c in h.checks))[:3]
    for h in worst:  # the detail of the hosts that fail most, so the fleet report still shows evidence
        out += _host_blocks(r, h, lang)
    return tuple(out)
