"""Text taken from records: cut to a bounded length, unsafe characters escaped, objects described.

Every string the report shows from a record passes through ``cut`` first,
so no renderer ever sees a control character, a bidi override, a lone
surrogate or a megabyte-long cell.
"""

from __future__ import annotations

import json
import re
from typing import Any

CELL_MAX = 300

# Control characters, bidirectional overrides (which can make a path read backwards) and lone
# surrogates (undecodable file-name bytes, which no UTF-8 writer accepts) are shown as escapes.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def clean(text: str) -> str:
    """``text`` with control, bidi-override and surrogate characters written as ``\\uXXXX``."""
    return _UNSAFE.sub(_escape, text)


def cut(value: Any, limit: int = CELL_MAX) -> str:
    """A record value as safe text of at most ``limit`` characters (an ellipsis marks a cut)."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return clean(text[: limit - 1]) + "…"
    return clean(text)


def text_of(value: Any, lang: str) -> str:
    if isinstance(value, dict):
        return cut(value.get(lang) or value.get("en") or value.get("zh") or "")
    return cut(value)


def group_of(rec: dict[str, Any], name: str) -> dict[str, Any]:
    g = rec.get(name)
    return g if isinstance(g, dict) else {}


def describe_process(ev: dict[str, Any]) -> str:
    """``name (pid) cmdline`` of the event's process, as far as known."""
    p = group_of(ev, "process")
    name = p.get("exe") or p.get("name") or ""
    pid = f" ({p['pid']})" if p.get("pid") is not None else ""
    cmd = p.get("cmdline")
    return cut(f"{name}{pid}" + (f" {cmd}" if cmd and cmd != name else ""))


def describe_object(ev: dict[str, Any]) -> str:
    """What the operation touched: a file path, a remote address, a device or an interface."""
    f, n, m, i = (group_of(ev, g) for g in ("file", "net", "media", "iface"))
    if f.get("path"):
        dest = f" → {f['dest_path']}" if f.get("dest_path") else ""
        return cut(f"{f['path']}{dest}")
    if n.get("remote_ip") or n.get("domain"):
        addr = n.get("remote_ip") or ""
        port = f":{n['remote_port']}" if n.get("remote_port") is not None else ""
        dom = f" ({n['domain']})" if n.get("domain") else ""
        return cut(f"{addr}{port}{dom}".strip())
    if n.get("local_port") is not None:
        return cut(f"{n.get('local_ip') or '*'}:{n['local_port']} ({n.get('direction') or 'listen'})")
    if m:
        parts = [str(m[k]) for k in ("device", "serial", "mount") if m.get(k)]
        return cut(" ".join(parts))
    if i.get("name"):
        return cut(f"{i['name']} ({i.get('kind') or '?'})")
    a = group_of(ev, "auth")
    if a.get("account"):
        src = f" from {a['source_ip']}" if a.get("source_ip") else ""
        what = a.get("change") or a.get("result") or ""
        return cut(f"{a['account']} {what}{src}".strip())
    return ""


def lifecycle_text(rec: dict[str, Any]) -> str:
    """A lifecycle record's detail in one line: its message, else its fields."""
    d = rec.get("detail")
    if isinstance(d, dict):
        if isinstance(d.get("message"), str):
            return cut(d["message"])
        return cut(json.dumps(d, ensure_ascii=False, sort_keys=True, separators=(", ", ": "), default=str))
    return cut(d)


PERSON_ROLES = ("operator", "host.custodian", "media.holder")


def answer_of(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every role the finding's rule holds to account, by name (``{role, name, unit}``).

    Records written before findings carried ``answer`` get it worked out from
    their ``roles`` and event, the same way the engine does now.
    """
    ans = rec.get("answer")
    if isinstance(ans, list):
        return [a for a in ans if isinstance(a, dict)]
    roles = rec.get("roles")
    if not isinstance(roles, list):
        roles = ["operator", "host.unit", "host.department"]
    ev = group_of(rec, "event")
    acc, op, f, m = group_of(rec, "accountable"), group_of(ev, "operator"), group_of(ev, "file"), group_of(ev, "media")
    values = {"operator": (acc.get("operator"), op.get("unit")),
              "host.custodian": (acc.get("custodian"), acc.get("unit")), "host.unit": (acc.get("unit"), None),
              "host.department": (acc.get("department"), None),
              "file.owner_unit": (f.get("owner_unit"), None), "media.holder": (m.get("holder"), None)}
    return [{"role": r, "name": values[r][0], "unit": values[r][1]} for r in roles if r in values]


KINDS_ZH = {"agent.start": "代理启动", "agent.stop": "代理停止", "agent.reload": "重载",
            "agent.tamper": "监控中断或干扰",
            "agent.degraded": "降级", "config.changed": "配置变更", "journal.pruned": "日志清理",
            "journal.resumed": "日志恢复写入", "journal.quarantined": "日志隔离", "assess.snapshot": "配置核查"}


def lifecycle_text_zh(rec: dict[str, Any]) -> str:
    """A lifecycle record's detail in Chinese for the kinds the agent writes ("" when there is no wording)."""
    d = rec.get("detail")
    d = d if isinstance(d, dict) else {}
    kind = rec.get("kind")

    def when(v: Any) -> str:
        import datetime as dt
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return "（未知）"
        return dt.datetime.fromtimestamp(v, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    if kind == "agent.start":
        return cut(f"代理启动（版本 {d.get('version', '（未知）')}，规则 {d.get('rules', '（未知）')} 条）")
    if kind == "agent.stop":
        return "代理正常停止"
    if kind == "agent.reload":
        if d.get("ok") is False:
            return cut(f"重载被拒绝，保留原有规则：{d.get('message') or d.get('error') or ''}".rstrip("："))
        return cut(f"重载完成（{d.get('why', '')}）：规则 {d.get('rules', '（未知）')} 条")
    if kind == "agent.tamper" and "since" in d and "until" in d:
        a, b = d.get("since"), d.get("until")
        secs = f"，{b - a:.0f} 秒" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        what = "代理被暂停" if "paused" in str(d.get("message", "")) else "监控中断"
        return cut(f"{what}：自 {when(a)} 至 {when(b)}{secs}")
    if kind == "config.changed":
        files = d.get("files")
        return cut("配置或规则文件变更：" + ("、".join(map(str, files)) if isinstance(files, list) else ""))
    return ""


def kind_name(lang: str, kind: str) -> str:
    """A lifecycle kind as the report's language names it (the kind itself beside it in zh)."""
    return f"{KINDS_ZH[kind]} {kind}" if lang == "zh" and kind in KINDS_ZH else kind
