"""The report's findings as CSV: one row per finding, written as it is read.

UTF-8 with a byte-order mark so that Excel opens Chinese text correctly.
A cell that starts like a formula (``= + - @``) gets a leading apostrophe,
so a hostile file name cannot run as a spreadsheet formula.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable
from typing import Any, TextIO

from agent.report.cells import answer_of, cut, describe_object, describe_process
from agent.report.i18n import tr

# Documented in README.md ("Reports"); keep names and order stable for auditors' scripts (new ones go last).
COLUMNS = ("seq", "time", "host", "rule", "pack", "severity", "action", "title", "message", "operator",
           "custodian", "unit", "department", "process", "user", "object", "controls", "tags", "operator_unit",
           "owner_unit", "media_holder", "custodian_account", "media_holder_account")
COLUMNS_ZH = ("序号", "时间", "主机", "规则", "规则包", "级别", "处置", "标题", "说明", "操作人员", "主机责任人",
              "运行单位", "主管部门", "进程", "系统账户", "对象", "控制点", "标签", "操作人员所在单位", "数据所属单位",
              "介质持有人", "主机责任人账户", "介质持有人账户")
CELL_LIMIT = 32000  # below Excel's 32,767 characters per cell
BOM = "\ufeff"


def _safe(value: Any) -> str:
    text = cut(value, CELL_LIMIT)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _lang(value: Any, lang: str) -> Any:
    if isinstance(value, dict):
        return value.get(lang) or value.get("en") or value.get("zh")
    return value


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _join(value: Any) -> str:
    return "; ".join(str(v) for v in value) if isinstance(value, list) else ""


def _person(name: Any, account: Any, names: dict[str, str]) -> tuple[Any, Any]:
    """A person's registry name and account: a record that holds the account is named through ``names``."""
    if isinstance(name, str) and name in names:
        return names[name], name
    return name, account


def row(seq: int, rec: dict[str, Any], lang: str, tz: dt.tzinfo, names: dict[str, str] | None = None) -> list[str]:
    """The CSV cells of one finding record; ``names`` the registry's people (account -> name)."""
    names = names or {}
    acc, ev = _map(rec.get("accountable")), _map(rec.get("event"))
    proc = _map(ev.get("process"))
    t = rec.get("time")
    when = dt.datetime.fromtimestamp(t, tz).isoformat(timespec="seconds") if isinstance(t, (int, float)) else ""
    roles = {a.get("role"): a for a in answer_of(rec)}
    op = _map(ev.get("operator"))
    sev, action = rec.get("severity"), rec.get("action")
    if lang == "zh":
        sev = tr(lang, sev) if sev in ("critical", "high", "medium", "low", "info") else sev
        action = tr(lang, action) if action in ("alert", "audit") else action
    holder_role = _map(roles.get("media.holder"))
    custodian, custodian_account = _person(acc.get("custodian"), acc.get("custodian_account"), names)
    holder, holder_account = _person(holder_role.get("name") or _map(ev.get("media")).get("holder"),
                                     holder_role.get("account"), names)
    cells = [rec.get("host"), rec.get("rule"), rec.get("pack"), sev, action,
             _lang(rec.get("title"), lang), _lang(rec.get("message"), lang), acc.get("operator"),
             custodian, acc.get("unit"), acc.get("department"), describe_process(ev), proc.get("user"),
             describe_object(ev), _join(rec.get("controls")), _join(rec.get("tags")),
             _map(roles.get("operator")).get("unit") or op.get("unit"),
             _map(roles.get("file.owner_unit")).get("name") or _map(ev.get("file")).get("owner_unit"),
             holder, custodian_account, holder_account]
    return [str(seq), when, *(_safe(c) for c in cells)]


def write_csv(records: Iterable[tuple[int, dict[str, Any]]], out: TextIO, lang: str, tz: dt.tzinfo,
              names: dict[str, str] | None = None) -> int:
    """Write the header and one row per finding; returns the rows written."""
    out.write(BOM)
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(COLUMNS_ZH if lang == "zh" else COLUMNS)
    n = 0
    for seq, rec in records:
        w.writerow(row(seq, rec, lang, tz, names))
        n += 1
    return n
