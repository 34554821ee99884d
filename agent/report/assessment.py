"""The configuration assessment in reports: each host's last ``assess.snapshot`` of the period,
per clause and L3-CES1 item, with a per-clause score and a fleet comparison.

Only the latest snapshot of each host is kept (bounded in hosts and checks),
so a period of many runs costs no more than one. A host's score on a clause
is the share of its decided checks (pass or fail) that pass; checks that are
not applicable do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.report.cells import cut

MAX_HOSTS = 5000
MAX_CHECKS = 500
CLAUSES: tuple[tuple[str, str, str], ...] = (
    ("GB/T 22239-2019 8.1.4.1", "身份鉴别", "Identification and authentication"),
    ("GB/T 22239-2019 8.1.4.2", "访问控制", "Access control"),
    ("GB/T 22239-2019 8.1.4.3", "安全审计", "Security audit"),
    ("GB/T 22239-2019 8.1.4.4", "入侵防范", "Intrusion prevention"),
    ("GB/T 22239-2019 8.1.4.5", "恶意代码防范", "Malicious code prevention"),
    ("GB/T 22239-2019 8.1.4.6", "可信验证", "Trusted verification"),
)


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One check's result on one host."""

    check: str
    clause: str
    items: tuple[str, ...]
    result: str
    title_zh: str
    title_en: str
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HostAssessment:
    """A host's last assessment in the period."""

    host: str
    unit: str
    department: str
    time: float
    checks: tuple[CheckRow, ...]
    unprovable: tuple[tuple[str, str, str, str], ...]  # item, clause, reason zh, reason en

    def score(self, clause: str) -> tuple[int, int, int, float | None]:
        """(pass, fail, not applicable, percent passing of the decided) on one clause."""
        rs = [c.result for c in self.checks if c.clause == clause]
        p, f = rs.count("pass"), rs.count("fail")
        return p, f, len(rs) - p - f, (100.0 * p / (p + f)) if p + f else None


class AssessmentTally:
    """Feeds on ``assess.snapshot`` lifecycle records; keeps each host's latest."""

    def __init__(self) -> None:
        self._hosts: dict[str, HostAssessment] = {}

    def add(self, host: str, t: float, detail: dict[str, Any]) -> None:
        """Keep this snapshot when it is the host's latest."""
        old = self._hosts.get(host)
        if old is not None and old.time > t:
            return
        if old is None and len(self._hosts) >= MAX_HOSTS:
            return
        rows = []
        results = detail.get("results")
        for r in results[:MAX_CHECKS] if isinstance(results, list) else ():
            if not isinstance(r, dict):
                continue
            title: dict[str, Any] = r["title"] if isinstance(r.get("title"), dict) else {}
            items: list[Any] = r["items"] if isinstance(r.get("items"), list) else []
            ev: list[Any] = r["evidence"] if isinstance(r.get("evidence"), list) else []
            rows.append(CheckRow(cut(r.get("check"), 60), cut(r.get("clause"), 60),
                                 tuple(cut(i, 20) for i in items[:10]), cut(r.get("result"), 20),
                                 cut(title.get("zh")), cut(title.get("en")), tuple(cut(e, 300) for e in ev[:3])))
        unprovable = []
        np = detail.get("not_provable")
        for u in np[:50] if isinstance(np, list) else ():
            if isinstance(u, dict):
                reason: dict[str, Any] = u["reason"] if isinstance(u.get("reason"), dict) else {}
                unprovable.append((cut(u.get("item"), 20), cut(u.get("clause"), 60), cut(reason.get("zh")),
                                   cut(reason.get("en"))))
        self._hosts[host] = HostAssessment(host, cut(detail.get("unit"), 120), cut(detail.get("department"), 120),
                                           t, tuple(rows), tuple(unprovable))

    def result(self) -> tuple[HostAssessment, ...]:
        """The hosts' latest assessments, by host."""
        return tuple(self._hosts[h] for h in sorted(self._hosts))


def document(hosts: tuple[HostAssessment, ...]) -> dict[str, Any]:
    """The assessment part of the JSON report."""
    out_hosts = []
    for h in hosts:
        clauses = []
        for name, zh, en in CLAUSES:
            p, f, na, score = h.score(name)
            items: dict[str, list[dict[str, Any]]] = {}
            for c in h.checks:
                if c.clause == name:
                    for it in c.items or ("",):
                        items.setdefault(it, []).append(
                            {"check": c.check, "result": c.result, "title": {"zh": c.title_zh, "en": c.title_en},
                             "evidence": list(c.evidence)})
            clauses.append({"clause": name, "area": {"zh": zh, "en": en}, "pass": p, "fail": f,
                            "not_applicable": na, "score": None if score is None else round(score, 1),
                            "items": [{"item": k, "checks": v} for k, v in sorted(items.items())]})
        out_hosts.append({"host": h.host, "unit": h.unit or None, "department": h.department or None,
                          "time": h.time, "clauses": clauses,
                          "not_provable": [{"item": i, "clause": c, "reason": {"zh": z, "en": e}}
                                           for i, c, z, e in h.unprovable]})
    return {"hosts": out_hosts}
