"""A noisy host's half hour, as the agent journals it: daemons nobody registered, repeats, long command lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.journal.store import Journal
from tests.unit.test_report_support import HOST, T0, lifecycle, stepping_clock

UNIT, DEPT = "省发改委信息中心", "省发展和改革委员会"
DAEMONS = 20
MINUTES = 30


def _finding(t: float, rule: str, severity: str, action: str, title: tuple[str, str], operator: str | None,
             op_unit: str | None, roles: list[str], event: dict[str, Any]) -> dict[str, Any]:
    answer: list[dict[str, Any]] = []
    for role in roles:
        if role == "operator":
            answer.append({"role": role, "name": operator, "unit": op_unit})
        elif role == "host.custodian":
            answer.append({"role": role, "name": "张三", "account": "zhangsan", "unit": UNIT})
        elif role == "host.unit":
            answer.append({"role": role, "name": UNIT, "unit": None})
    return {"type": "finding", "time": t, "host": HOST, "rule": rule, "pack": "baomi", "severity": severity,
            "action": action, "title": {"zh": title[0], "en": title[1]},
            "message": {"zh": f"{operator or '（未知）'} {title[0]}", "en": f"{operator or '(unknown)'} {title[1]}"},
            "event": {"event": {"kind": event.pop("kind")}, "operator": {"name": operator, "unit": op_unit,
                                                                        "known": operator is not None},
                      "host": {"id": HOST, "unit": UNIT, "department": DEPT, "custodian": "zhangsan",
                               "level": "secret", "zone": "intranet"}, **event},
            "accountable": {"operator": operator, "custodian": "张三", "custodian_account": "zhangsan", "unit": UNIT,
                            "department": DEPT},
            "roles": roles, "answer": answer, "controls": ["GB/T 22239-2019 8.1.4.3"], "tags": []}


def noisy_records(t0: float = T0) -> list[dict[str, Any]]:
    """Findings of a noisy host over MINUTES minutes, between a start and a clean stop."""
    recs: list[dict[str, Any]] = [lifecycle("agent.start", t0, HOST, version="0.1")]
    long_cmd = "python3 -c 'import os\nfor i in range(10):\n    os.system(\"true\")' " + "--opt=value " * 40
    for k in range(MINUTES * 60 // 2):  # every 2 s
        t = t0 + 1 + 2 * k
        d = k % DAEMONS
        recs.append(_finding(t, "ZR-001", "medium", "alert", ("无人负责的操作", "Operation no one answers for"),
                             None, None, ["operator", "host.unit"],
                             {"kind": "process.exec", "process": {"pid": 5000 + k, "exe": f"/usr/sbin/daemon{d}",
                                                                  "cmdline": f"/usr/sbin/daemon{d} {long_cmd}"}}))
        if k % 6 == 0:
            ip = f"203.0.113.{k // 6 % 3 + 1}"
            recs.append(_finding(t + 0.5, "BM-NET-001", "critical", "alert",
                                 ("涉密计算机违规外联", "Classified host connected to the Internet"), "张三", UNIT,
                                 ["operator", "host.unit", "host.department"],
                                 {"kind": "net.connect", "process": {"pid": 4242, "exe": "/usr/bin/curl"},
                                  "net": {"remote_ip": ip, "remote_port": 443}}))
        if k % 50 == 0:
            recs.append(_finding(t + 0.7, "DB-AUD-003", "info", "audit", ("访问涉密资产", "Classified asset read"),
                                 "李四", UNIT, ["operator", "host.unit"],
                                 {"kind": "file.open", "process": {"pid": 77, "exe": "/usr/bin/less"},
                                  "file": {"path": "/srv/classified/名单.txt"}}))
    recs.append(lifecycle("agent.stop", t0 + MINUTES * 60, HOST, message="clean stop"))
    return recs


def noisy_journal(state: Path, t0: float = T0) -> int:
    """Write the noisy half hour to ``state``; returns the records written."""
    recs = noisy_records(t0)
    with Journal(state, host=HOST, clock=stepping_clock(t0 + MINUTES * 60 + 5), checkpoint_every=1000) as j:
        for i in range(0, len(recs), 500):
            j.append_many(recs[i: i + 500])
    return len(recs)
