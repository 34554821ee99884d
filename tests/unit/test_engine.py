"""The rule engine: layering, all-match semantics, indexes equal to brute force, messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.controls import BEYOND_CATALOGUE, CONTROL_NAMES
from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.errors import LoadErrors
from agent.events import KINDS, Event, Host, Net, Operator, Process
from agent.levels import Level
from agent.paths import shipped_rules_dir
from tests.shared import shared_path

RULE = """\
  - id: {id}
    title: {{zh: 标题, en: title}}
    when: {when}
    severity: {severity}
    action: alert
    message: {{zh: "{zh}", en: "{en}"}}
"""


def pack(name: str, rules: list[dict[str, str]], extra: str = "") -> str:
    body = "".join(RULE.format(**{"severity": "high", "zh": "z", "en": "e", **r}) for r in rules)
    return f"pack: {name}\n{extra}rules:\n{body}"


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


def test_every_matching_rule_fires(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pack("a", [
        {"id": "A", "when": "event.kind == 'process.exec' and process.name == 'curl'"},
        {"id": "B", "when": "startswith(process.exe, '/usr/')"},
        {"id": "C", "when": "process.name == 'wget'"},
    ]))
    e = Engine(load_rules([tmp_path]))
    hits = {r.id for r in e.match(Event("process.exec", process=Process(name="curl", exe="/usr/bin/curl")))}
    assert hits == {"A", "B"}


def test_later_files_override_by_id(tmp_path: Path) -> None:
    write(tmp_path, "10-ship.yaml", pack("ship", [
        {"id": "R1", "when": "process.name in tools"},
        {"id": "R2", "when": "process.name == 'x'"},
        {"id": "R3", "when": "process.name == 'y'"},
    ], extra="lists:\n  tools: [nc]\n"))
    write(tmp_path, "20-local.yaml", """\
pack: local
lists:
  tools: {append: [ncat]}
rules:
  - id: R1
    override: {severity: low}
  - id: R2
    override: {enabled: false}
  - id: R3
    title: {zh: 新, en: new}
    when: process.name == 'z'
    severity: info
    action: audit
    message: {zh: m, en: m}
""")
    rs = load_rules([tmp_path])
    by = rs.by_id()
    assert by["R1"].severity == "low" and "R2" not in by and rs.disabled == ("R2",)
    assert by["R3"].action == "audit"
    e = Engine(rs)
    assert [r.id for r in e.match(Event("process.exec", process=Process(name="ncat")))] == ["R1"]
    assert [r.id for r in e.match(Event("process.exec", process=Process(name="z")))] == ["R3"]
    assert e.match(Event("process.exec", process=Process(name="y"))) == []


def test_one_bad_file_fails_the_whole_load(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pack("a", [{"id": "A", "when": "process.name == 'x'"}]))
    write(tmp_path, "b.yaml", pack("b", [{"id": "B", "when": "process.nam == 'x'"}]))
    with pytest.raises(LoadErrors) as info:
        load_rules([tmp_path])
    assert "b.yaml:5:11: unknown field process.nam" in str(info.value)


def test_subdirectories_are_loaded_but_not_samples_or_hidden_ones(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pack("a", [{"id": "A", "when": "process.name == 'x'"}]))
    (tmp_path / "linux").mkdir()
    write(tmp_path / "linux", "b.yaml", pack("b", [{"id": "B", "when": "process.name == 'y'"}]))
    for skipped in ("tests", ".old"):
        (tmp_path / skipped).mkdir()
        write(tmp_path / skipped, "c.yaml", "not: [valid")
    assert sorted(r.id for r in load_rules([tmp_path]).rules) == ["A", "B"]
    # A broken file in a subfolder that is read fails the load, like one at the top.
    write(tmp_path / "linux", "d.yaml", "not: [valid")
    with pytest.raises(LoadErrors):
        load_rules([tmp_path])


def test_missing_named_rule_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LoadErrors, match="rule path does not exist"):
        load_rules([tmp_path / "nope"])


def test_messages_render_fields_and_unknown_for_missing(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pack("a", [{
        "id": "M", "when": "event.kind == 'net.connect'",
        "zh": "{operator.name} 在{host.level}级主机连接 {net.remote_ip}:{net.remote_port} {{x}}",
        "en": "{operator.name} on {host.level} host -> {net.remote_ip}:{net.remote_port} {{x}}"}]))
    (f,) = Engine(load_rules([tmp_path])).evaluate(Event(
        "net.connect", operator=Operator(name="张三"), host=Host(level=Level.SECRET),
        net=Net(remote_ip="203.0.113.9")))
    assert f.message("zh") == "张三 在机密级主机连接 203.0.113.9:（未知） {x}"
    assert f.message("en") == "张三 on secret host -> 203.0.113.9:(unknown) {x}"
    # an unknown operator never starts a message with "-" (a formula to a spreadsheet); zones in Chinese
    write(tmp_path, "a.yaml", pack("a", [{
        "id": "M", "when": "event.kind == 'net.connect'",
        "zh": "{operator.name} 连接{net.remote_zone} {net.remote_ip}", "en": "{operator.name} to {net.remote_zone}"}]))
    (f,) = Engine(load_rules([tmp_path])).evaluate(Event("net.connect", net=Net(remote_ip="203.0.113.9",
                                                                                 remote_zone="internet")))
    assert f.message("zh") == "（未知） 连接互联网 203.0.113.9" and f.message("en") == "(unknown) to internet"


def test_none_never_crashes_ordering(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pack("a", [{"id": "L", "when": "file.level > host.level"}]))
    e = Engine(load_rules([tmp_path]))
    assert e.match(Event("file.open")) == []


def test_kind_index_skips_rules_of_other_kinds(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pack("a", [
        {"id": "N", "when": "event.kind in ('net.connect', 'net.dns') and net.remote_port == 53"},
        {"id": "X", "when": "not event.kind == 'process.exec'"},
    ]))
    rs = load_rules([tmp_path])
    by = rs.by_id()
    assert by["N"].kinds == {"net.connect", "net.dns"}
    assert "process.exec" not in by["X"].kinds and "file.open" in by["X"].kinds


FIELDS_FOR_GEN = [("process.name", ["a", "b", "c", "d"]), ("net.remote_port", [22, 53, 80, 443]),
                  ("net.remote_zone", ["internet", "intranet"])]


@st.composite
def rule_sets(draw: st.DrawFn) -> list[str]:
    conds = []
    for _ in range(draw(st.integers(3, 25))):
        fld, vals = draw(st.sampled_from(FIELDS_FOR_GEN))
        kind = draw(st.sampled_from(["process.exec", "net.connect", "net.dns"]))
        v = draw(st.sampled_from(vals))
        lit = repr(v)
        extra = draw(st.sampled_from(["", " and process.uid == 0", " or process.uid == 1",
                                      " and not startswith(process.exe, '/tmp/')"]))
        # Conditions that need a field set: reached through the field's presence.
        test = draw(st.sampled_from([f"{fld} == {lit}", f"{fld} != None", "None != net.remote_zone",
                                     "process.uid >= 1", "1 < process.uid", "net.remote_port > process.uid"]))
        conds.append(f"event.kind == '{kind}' and {test}{extra}")
    return conds


@st.composite
def some_events(draw: st.DrawFn) -> Event:
    return Event(draw(st.sampled_from(["process.exec", "net.connect", "net.dns", "file.open"])),
                 process=Process(name=draw(st.sampled_from(["a", "b", "c", "d", None])),
                                 uid=draw(st.sampled_from([0, 1, 2, None])),
                                 exe=draw(st.sampled_from(["/tmp/x", "/usr/bin/x", None]))),
                 net=Net(remote_port=draw(st.sampled_from([22, 53, 80, 443, None])),
                         remote_zone=draw(st.sampled_from(["internet", "intranet", None]))))


@settings(max_examples=60, deadline=None)
@given(rule_sets(), st.lists(some_events(), min_size=1, max_size=30))
def test_indexed_matching_equals_brute_force(tmp_path_factory: pytest.TempPathFactory, conds: list[str],
                                             evs: list[Event]) -> None:
    d = tmp_path_factory.mktemp("rules")
    write(d, "g.yaml", pack("g", [{"id": f"G{i}", "when": f'"{c}"'} for i, c in enumerate(conds)]))
    rs = load_rules([d])
    engine = Engine(rs)
    for ev in evs:
        assert sorted(r.id for r in engine.match(ev)) == sorted(r.id for r in rs.rules if r.test(ev))


def test_conditions_cannot_reach_builtins(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", pack("a", [{"id": "A", "when": "process.name == 'x'"}]))
    (rule,) = load_rules([tmp_path]).rules
    assert rule.test.__globals__["__builtins__"] == {}


def test_shipped_packs_are_complete() -> None:
    rs = load_rules([shipped_rules_dir()])
    assert len(rs.rules) >= 30
    packs = {r.pack for r in rs.rules}
    assert {"baomi", "dengbao", "accountability"} <= packs
    for r in rs.rules:
        assert r.title.zh and r.title.en and r.message_zh.parts and r.message_en.parts, r.id
        assert r.controls, f"{r.id} cites no control"
        assert set(r.controls) <= CONTROL_NAMES, f"{r.id}: {set(r.controls) - CONTROL_NAMES}"
        assert r.accountable, r.id
        assert r.kinds, f"{r.id} can never match"
    assert {k for r in rs.rules for k in r.kinds} >= {"process.exec", "net.connect", "net.dns", "file.open",
                                                      "media.mount", "iface.up", "agent.start", "agent.tamper"}
    assert set(KINDS) >= {k for r in rs.rules for k in r.kinds}


def test_controls_match_the_shared_catalogue() -> None:
    shared = shared_path("CONTROLS.md")
    if shared is None:
        pytest.skip("shared/CONTROLS.md is not beside the repository nor at /work/shared")
    names = {line.split("|")[1].strip() for line in shared.read_text(encoding="utf-8").splitlines()
             if line.startswith("| ") and not line.startswith("| control") and "---" not in line}
    # Every control of the catalogue is known; any control beyond it is declared, with its reason, and cited.
    assert names <= set(CONTROL_NAMES), names - set(CONTROL_NAMES)
    assert set(CONTROL_NAMES) - names == set(BEYOND_CATALOGUE)
    cited = {c for r in load_rules([shipped_rules_dir()]).rules for c in r.controls}
    assert set(BEYOND_CATALOGUE) <= cited
