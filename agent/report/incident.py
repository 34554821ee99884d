"""A one-page incident sheet for one finding (``dutywatch report --incident SEQ``).

What a unit needs to report a network-security incident under the national
incident-reporting measures (国家网络安全事件报告管理办法, in force from
2025-11-01): when it was first detected, on which host, which unit answers
for it, who did it, what happened, the evidence, and how anyone checks that
the evidence was not changed (the record's chain hash, the checkpoint that
signs it and the ``verify --through`` command).
"""

from __future__ import annotations

import datetime as dt
import shlex
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.journal import db
from agent.journal.verify import verify_journal
from agent.report.cells import PERSON_ROLES, answer_of, cut, describe_object, describe_process, group_of, text_of
from agent.report.errors import ReportError
from agent.report.sections import Block, Para, Section, Table, level_name, zone_name

# Reporting deadlines of article 4 for incidents graded 较大 (serious) and above, from detection.
DEADLINES = (("cii", 1), ("central", 2), ("other", 4))

_S: dict[str, tuple[str, str]] = {
    "title": ("网络安全事件报告单", "Network security incident sheet"),
    "seq": ("记录序号", "Record (seq)"),
    "detected": ("首次发现时间", "First detected"),
    "repeats": ("同类重复", "Repeats"),
    "repeats_v": ("至 {last} 共 {n} 次", "{n} times up to {last}"),
    "host": ("主机", "Host"),
    "unit": ("运行单位", "Unit"),
    "department": ("主管部门", "Department"),
    "custodian": ("主机责任人", "Custodian"),
    "level": ("密级 / 网络", "Level / network"),
    "person": ("责任人", "Person responsible"),
    "answer": ("规则追责的全部角色", "Everyone the rule holds to account"),
    "rule": ("规则", "Rule"),
    "severity": ("级别", "Severity"),
    "controls": ("依据", "Controls"),
    "s_what": ("一、发生了什么", "1. What happened"),
    "s_evidence": ("二、证据", "2. Evidence"),
    "s_verify": ("三、证据核验", "3. Verifying the evidence"),
    "s_deadline": ("四、报告时限", "4. Reporting deadline"),
    "process": ("进程", "Process"),
    "object": ("对象", "Object"),
    "user": ("系统账户", "System account"),
    "chain": ("该记录的链哈希", "Chain hash of the record"),
    "signed": ("签名检查点", "Signed by"),
    "signed_v": ("第 {seq} 条记录处的检查点（{time}）", "the checkpoint at seq {seq} ({time})"),
    "unsigned": ("尚未被签名检查点覆盖", "not yet covered by a signed checkpoint"),
    "verify_ok": ("本机核验通过（密钥：{source}）", "verified here (key: {source})"),
    "verify_bad": ("核验失败：{problem}", "verification FAILED: {problem}"),
    "verify_cmd": ("审计人员用下列命令独立核验（HOST-PUBKEY.pem 为经可信渠道取得的该主机公钥）：",
                   "An auditor checks it independently with (HOST-PUBKEY.pem: the host's key from a trusted channel):"),
    "deadline_intro": ("按《国家网络安全事件报告管理办法》第四条，经研判属于较大以上网络安全事件的，自发现起：",
                       "Under article 4 of the national incident-reporting measures, an incident graded serious "
                       "(较大) or above is reported, from detection:"),
    "d_cii": ("涉及关键信息基础设施：向保护工作部门、公安机关报告，最迟 {h} 小时（{at} 前）",
              "critical information infrastructure: to its protection department and the police within {h} h "
              "(by {at})"),
    "d_central": ("中央和国家机关各部门及其直属单位：向本部门网信工作机构报告，最迟 {h} 小时（{at} 前）",
                  "central and state organs and their units: to their cyberspace office within {h} h (by {at})"),
    "d_other": ("其他网络运营者：向属地省级网信部门报告，最迟 {h} 小时（{at} 前）",
                "other network operators: to the provincial cyberspace administration within {h} h (by {at})"),
    "unknown": ("（未知）", "(unknown)"),
    "role_operator": ("操作人员", "operator"),
    "role_host.custodian": ("主机责任人", "custodian"),
    "role_host.unit": ("运行单位", "host's unit"),
    "role_host.department": ("主管部门", "department"),
    "role_file.owner_unit": ("数据所属单位", "owning unit of the data"),
    "role_media.holder": ("介质持有人", "media holder"),
    "critical": ("严重", "critical"), "high": ("高", "high"), "medium": ("中", "medium"), "low": ("低", "low"),
    "info": ("提示", "info"),
}


def _t(lang: str, key: str, **fmt: object) -> str:
    zh, en = _S[key]
    text = zh if lang == "zh" else en
    return text.format(**fmt) if fmt else text


@dataclass(frozen=True, slots=True)
class Incident:
    """The sheet's content: a title, key facts and its sections, for the HTML or PDF writer."""

    lang: str
    title: str
    facts: tuple[tuple[str, str], ...]
    sections: list[Section]
    ok: bool


def _record(path: Path, seq: int) -> dict[str, Any]:
    import json
    conn, _ = db.open_reader(path)
    try:
        row = conn.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
    except sqlite3.Error as exc:
        raise db.translate(path, exc) from exc
    finally:
        conn.close()
    if row is None:
        raise ReportError(f"{path}: no record {seq} in the journal")
    rec = json.loads(row[0])
    if not isinstance(rec, dict) or rec.get("type") != "finding":
        raise ReportError(f"{path}: record {seq} is not a finding; an incident sheet is made for a finding")
    return rec


def incident(path: Path, seq: int, lang: str, tz: dt.tzinfo, pubkey: Path | None,
             names: tuple[tuple[str, str], ...] = ()) -> Incident:
    """The incident sheet of finding ``seq`` in the journal at ``path``; ``names`` the registry's people."""
    rec = _record(path, seq)
    from agent.report.model import Aggregator
    who = Aggregator(tz, names=dict(names)).who  # people by name, the account beside it

    def named(a: dict[str, Any]) -> str:
        return who(a.get("name"), a.get("account")) if a.get("role") in PERSON_ROLES else cut(a.get("name"))
    v = verify_journal(path, pubkey, through=seq, stop=True)

    def when(t: Any) -> str:
        if not isinstance(t, (int, float)):
            return "—"
        return dt.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d\u00a0%H:%M:%S %z")

    unknown = _t(lang, "unknown")
    ev = group_of(rec, "event")
    acc, hg = group_of(rec, "accountable"), group_of(ev, "host")
    first = rec.get("first") if isinstance(rec.get("first"), (int, float)) else rec.get("time")
    answer = answer_of(rec)
    op = next((a for a in answer if a.get("role") == "operator"), None)
    opname = who(op.get("name"), op.get("account")) if op else ""
    person = (f"{opname or unknown}（{cut(op.get('unit')) or unknown}）" if lang == "zh" else
              f"{opname or unknown} ({cut(op.get('unit')) or unknown})") if op else unknown
    title = text_of(rec.get("title"), lang)
    level = " / ".join(x for x in (level_name(lang, str(hg.get("level") or "")),
                                   zone_name(lang, str(hg.get("zone") or ""))) if x) or unknown
    facts: tuple[tuple[str, str], ...] = (
        (_t(lang, "detected"), when(first)),
        (_t(lang, "host"), cut(rec.get("host")) or unknown),
        (_t(lang, "unit"), cut(acc.get("unit")) or unknown),
        (_t(lang, "department"), cut(acc.get("department")) or unknown),
        (_t(lang, "custodian"), who(acc.get("custodian"), acc.get("custodian_account")) or unknown),
        (_t(lang, "level"), level),
        (_t(lang, "person"), person),
        (_t(lang, "rule"), f"{cut(rec.get('rule'))} {title}"),
        (_t(lang, "severity"), _t(lang, str(rec.get("severity"))) if rec.get("severity") in
         ("critical", "high", "medium", "low", "info") else cut(rec.get("severity"))),
        (_t(lang, "seq"), str(seq)),
    )
    count = rec.get("count")
    if isinstance(count, int) and count > 1:
        facts += ((_t(lang, "repeats"), _t(lang, "repeats_v", n=count, last=when(rec.get("time")))),)
    roles = "；".join if lang == "zh" else "; ".join
    what: list[Block] = [Para(text_of(rec.get("message"), lang)),
            Table("", ("", ""), (
                (_t(lang, "answer"), roles(f"{_t(lang, 'role_' + str(a.get('role')))}: {named(a) or unknown}"
                                           for a in answer if f"role_{a.get('role')}" in _S)),
                (_t(lang, "controls"), "; ".join(cut(c) for c in rec.get("controls") or [] if isinstance(c, str))),
            ), (1, 3))]
    proc = group_of(ev, "process")
    evidence = Table("", ("", ""), (
        (_t(lang, "process"), describe_process(ev) or unknown),
        (_t(lang, "user"), cut(proc.get("user")) or unknown),
        (_t(lang, "object"), describe_object(ev) or unknown),
    ), (1, 3))
    signed = (_t(lang, "signed_v", seq=v.through_signed_seq, time=when(v.through_signed_time))
              if v.through_signed_seq else _t(lang, "unsigned"))
    cmd = ["dutywatch", "verify", "--journal", str(path), "--through", str(seq), "--pubkey",
           str(pubkey) if pubkey is not None else "HOST-PUBKEY.pem"]
    result = _t(lang, "verify_ok", source=v.key_source) if v.ok and v.through_seq == seq else \
        _t(lang, "verify_bad", problem=str(v.problem or f"record {seq} not reached"))
    rows = ((_t(lang, "chain"), v.through_hash or "—"), (_t(lang, "signed"), signed))
    check: list[Block] = [Table("", ("", ""), rows, (1, 3)),
                          Para(result, "ok" if v.ok and v.through_seq == seq else "bad"),
                          Para(_t(lang, "verify_cmd")), Para(shlex.join(cmd), "code")]
    deadline = [Para(_t(lang, "deadline_intro"))]
    if isinstance(first, (int, float)):
        for key, hours in DEADLINES:
            deadline.append(Para(_t(lang, f"d_{key}", h=hours, at=when(first + hours * 3600)), "warn"))
    sections = [Section("what", _t(lang, "s_what"), tuple(what)),
                Section("evidence", _t(lang, "s_evidence"), (evidence,)),
                Section("verify", _t(lang, "s_verify"), tuple(check)),
                Section("deadline", _t(lang, "s_deadline"), tuple(deadline))]
    return Incident(lang, _t(lang, "title"), facts, sections, v.ok and v.through_seq == seq)
