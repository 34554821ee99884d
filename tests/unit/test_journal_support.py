"""Helpers shared by the journal tests: records, a stepping clock, a CLI runner."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HOST = "js-fgw-0042"
T0 = 1_714_521_600.0  # 2024-05-01T00:00:00Z


def finding(i: int, *, t: float | None = None, rule: str = "BM-NET-001", severity: str = "critical",
            action: str = "alert", unit: str = "省发改委信息中心", operator: str = "张三") -> dict[str, Any]:
    """A finding record as the engine hands it to the journal."""
    return {
        "type": "finding", "time": T0 + i * 60 if t is None else t, "host": HOST, "rule": rule,
        "severity": severity, "action": action,
        "title": {"zh": "涉密计算机违规外联", "en": "Classified host connected to the Internet"},
        "message": {"zh": f"{operator} 在涉密计算机上连接互联网 203.0.113.{i % 250}:443",
                    "en": f"{operator} connected a classified host to 203.0.113.{i % 250}:443"},
        "event": {"event": {"kind": "net.connect", "time": T0 + i * 60},
                  "net": {"proto": "tcp", "remote_ip": f"203.0.113.{i % 250}", "remote_port": 443}},
        "accountable": {"operator": operator, "custodian": "zhangsan", "unit": unit,
                        "department": "省发展和改革委员会"},
        "controls": ["保密法 (2010) 第二十四条"], "tags": ["违规外联"],
    }


def lifecycle(kind: str, t: float = T0) -> dict[str, Any]:
    """A lifecycle record."""
    return {"type": "lifecycle", "time": t, "host": HOST, "kind": kind, "detail": {"version": "0.1"}}


def stepping_clock(start: float = T0, step: float = 1.0) -> Callable[[], float]:
    """A clock that moves ``step`` seconds on each reading."""
    counter = itertools.count()
    return lambda: start + step * next(counter)


@contextlib.contextmanager
def raw_db(path: Path) -> Iterator[sqlite3.Connection]:
    """The journal opened behind DutyWatch's back, as a tamperer would; committed on exit."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def run_cli(argv: list[str], monkeypatch: Any) -> tuple[int, str, str]:
    """Run ``dutywatch ARGV`` in-process; returns (status, stdout, stderr).

    Commands whose modules are not in this build are left out of the parser.
    """
    from agent import cli

    present = tuple(m for m in cli.COMMAND_MODULES if importlib.util.find_spec(m) is not None)
    monkeypatch.setattr(cli, "COMMAND_MODULES", present)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, out.getvalue(), err.getvalue()
