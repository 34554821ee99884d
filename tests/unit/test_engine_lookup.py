"""Indexed lookups give the same rules however often, and in whatever order, values recur."""

from __future__ import annotations

from pathlib import Path

from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.events import Event, Process

PACK = """\
pack: p
rules:
  - id: SH
    title: {zh: 标题, en: title}
    when: "endswith(lower(process.exe), '/sh')"
    severity: high
    action: alert
    message: {zh: z, en: e}
  - id: CURL
    title: {zh: 标题, en: title}
    when: "contains(lower(process.cmdline), 'curl ')"
    severity: high
    action: alert
    message: {zh: z, en: e}
"""


def _ids(engine: Engine, exe: str, cmdline: str) -> set[str]:
    return {r.id for r in engine.match(Event("process.exec", process=Process(exe=exe, cmdline=cmdline)))}


def test_recurring_values_match_the_same_after_many_distinct_ones(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK, encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    assert _ids(engine, "/bin/SH", "CURL x") == {"SH", "CURL"}
    # Enough distinct values to fill and empty the remembered lookups more than once.
    for i in range(10_000):
        expected = {"SH"} if i % 3 == 0 else set()
        assert _ids(engine, f"/opt/{i}/sh" if i % 3 == 0 else f"/opt/{i}/ls", f"run {i}") == expected
    assert _ids(engine, "/bin/SH", "CURL x") == {"SH", "CURL"}
    assert _ids(engine, "/bin/ls", "ls") == set()


def test_long_values_are_looked_up_every_time(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK, encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    long = "x" * 5_000 + " curl http://a"
    for _ in range(3):
        assert _ids(engine, "/usr/bin/bash", long) == {"CURL"}
        assert _ids(engine, "/usr/bin/bash", "x" * 5_000) == set()
