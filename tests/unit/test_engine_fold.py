"""Rules compiled for one host (``for_host``) fire exactly as the general ones on that host's events."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.attribution import Attributor
from agent.commands.replay import replay
from agent.engine.engine import Engine
from agent.engine.fold import for_host
from agent.engine.rules import RuleSet, load_rules
from agent.events import Event, Host, Net, Process
from agent.levels import Level
from agent.paths import shipped_rules_dir
from agent.registry import load_registry

LEVELS = [None, *Level]
ZONES = [None, "intranet", "internet", "extranet", "loopback", "dmz"]


def _pack(conds: list[str]) -> str:
    rules = "".join(f"  - id: R{i}\n    title: {{zh: t, en: t}}\n    when: {json.dumps(c)}\n"
                    f"    severity: high\n    action: alert\n    message: {{zh: z, en: e}}\n"
                    for i, c in enumerate(conds))
    head = "pack: p\nlists: {public_zones: [internet, extranet]}\nmacros: {classified: host.level >= 'confidential'}\n"
    return f"{head}rules:\n{rules}"


def _load(tmp: Path, conds: list[str]) -> RuleSet:
    (tmp / "p.yaml").write_text(_pack(conds), encoding="utf-8")
    return load_rules([tmp])


def _outcome(test: Any, e: Event) -> object:
    try:
        return bool(test(e))
    except Exception as exc:  # a test that raises must raise the same way once folded
        return type(exc)


ATOMS = [
    "host.level >= 'confidential'", "host.level == None", "host.level != None", "classified",
    "host.zone == 'intranet'", "host.zone != None", "host.zone in public_zones", "host.zone not in public_zones",
    "host.custodian == None", "host.unit != None",
    "net.local_zone != host.zone", "net.local_zone != None", "net.local_zone != 'loopback'",
    "net.remote_zone == 'internet'", "net.remote_zone == host.zone", "process.name == 'a'",
    "contains(process.cmdline, 'ab')", "process.pid > 3", "startswith(lower(host.id), 'zw-')",
    "file.marking > host.level", "host.level < file.level",
]


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> str:
    if depth >= 3 or draw(st.booleans()):
        return draw(st.sampled_from(ATOMS))
    op = draw(st.sampled_from([" and ", " or ", "not"]))
    if op == "not":
        return f"not ({draw(conditions(depth + 1))})"
    parts = draw(st.lists(conditions(depth + 1), min_size=2, max_size=4))
    return op.join(f"({p})" for p in parts)


hosts = st.builds(Host, id=st.sampled_from([None, "zw-app-1", "ZW-X"]), unit=st.sampled_from([None, "u"]),
                  department=st.sampled_from([None, "d"]), custodian=st.sampled_from([None, "zhangsan"]),
                  level=st.sampled_from(LEVELS), zone=st.sampled_from(ZONES))


@st.composite
def events(draw: st.DrawFn, host: Host) -> Event:
    from agent.events import File
    pid = draw(st.sampled_from([None, 1, 7, "x"]))  # a str pid makes an ordering raise: it must still raise
    return Event(draw(st.sampled_from(["net.connect", "net.accept", "process.exec", "file.write"])),
                 process=Process(pid=pid, name=draw(st.sampled_from([None, "a", "b"])),  # type: ignore[arg-type]
                                 cmdline=draw(st.sampled_from([None, "xaby", "ba"]))),
                 host=host,
                 net=Net(local_zone=draw(st.sampled_from(ZONES)), remote_zone=draw(st.sampled_from(ZONES))),
                 file=File(level=draw(st.sampled_from(LEVELS)), marking=draw(st.sampled_from(LEVELS))))


@settings(max_examples=150, deadline=None)
@given(st.lists(conditions(), min_size=1, max_size=6), hosts, st.data())
def test_folded_rules_answer_as_the_general_ones_on_their_host(
        tmp_path_factory: pytest.TempPathFactory, conds: list[str], host: Host, data: st.DataObject) -> None:
    rs = _load(tmp_path_factory.mktemp("rules"), conds)
    fixed = for_host(rs, host)
    by_id = fixed.by_id()
    general, special = Engine(rs), Engine(fixed)
    for e in data.draw(st.lists(events(host), min_size=1, max_size=25)):
        for r in rs.rules:
            if r.id in by_id:
                assert _outcome(by_id[r.id].test, e) == _outcome(r.test, e), (r.when, host, e)
            else:  # left out: it can never hold on this host
                assert _outcome(r.test, e) is False, (r.when, host, e)
        # The same rules, in the same order (the order findings are written in), and those are the rules
        # whose test holds: the indexes (the host's values in them too) pass every one that does.
        assert [r.id for r in special.match(e)] == [r.id for r in general.match(e)], (conds, host, e)
        assert {r.id for r in special.match(e)} == {r.id for r in rs.rules if _outcome(r.test, e) is True}


def test_a_rule_that_cannot_hold_on_the_host_is_left_out_and_one_that_can_is_kept(tmp_path: Path) -> None:
    rs = _load(tmp_path, ["event.kind == 'net.connect' and classified and net.remote_zone == 'internet'"])
    internal = Host(id="h", level=Level.INTERNAL, zone="intranet")
    secret = internal._replace(level=Level.SECRET)
    assert for_host(rs, internal).rules == ()
    (rule,) = for_host(rs, secret).rules
    e = Event("net.connect", host=secret, net=Net(remote_zone="internet"))
    assert [r.id for r in Engine(for_host(rs, secret)).match(e)] == ["R0"]
    assert rule.test(e) and not rule.test(e._replace(net=Net(remote_zone="intranet")))


def test_a_part_that_may_raise_before_a_false_host_test_is_still_run(tmp_path: Path) -> None:
    # "pid > 3 and <false>" is never true, but a bad pid raised before: it must raise the same way
    # (the engine counts the error), so the rule is kept, not left out.
    rs = _load(tmp_path, ["process.pid > 3 and host.level >= 'secret'"])
    host = Host(level=Level.INTERNAL)
    (rule,) = for_host(rs, host).rules
    assert rule.test(Event("process.exec", host=host, process=Process(pid=9))) is False
    with pytest.raises(TypeError):
        rule.test(Event("process.exec", host=host, process=Process(pid="x")))  # type: ignore[arg-type]


def test_a_connection_from_the_hosts_own_zone_is_not_a_candidate(tmp_path: Path) -> None:
    rs = _load(tmp_path, ["event.kind == 'net.connect' and host.zone != None and net.local_zone != None"
                          " and net.local_zone != host.zone and net.local_zone != 'loopback'"])
    host = Host(zone="intranet")
    (general,), (special,) = rs.rules, for_host(rs, host).rules
    assert {t.value for t in general.triggers or ()} == {frozenset({"loopback"})}
    assert {t.value for t in special.triggers or ()} == {frozenset({"intranet", "loopback"})}
    calls: list[str] = []
    test = special.test

    def counting(e: Any) -> bool:
        calls.append(e.net.local_zone)
        return bool(test(e))
    engine = Engine(RuleSet((_with_test(special, counting),), ()))
    hits = [bool(engine.match(Event("net.connect", host=host, net=Net(local_zone=z))))
            for z in ("intranet", "loopback", "extranet", None)]
    assert hits == [False, False, True, False]
    assert calls == ["extranet"]  # the rule's own test ran only where its trigger held


def _with_test(rule: Any, test: Any) -> Any:
    from dataclasses import replace
    return replace(rule, test=test)


# Events of the shipped rules' concern, for a host of each kind: the same findings, in the same order.
def _shipped_events(host: Host) -> list[Event]:
    from agent.events import File, Iface, Media, Operator
    out = []
    for kind in ("net.connect", "net.accept", "net.dns", "file.write", "file.create", "media.mount", "iface.up",
                 "process.exec", "agent.start"):
        for zone in ("intranet", "internet", "extranet", "loopback", None):
            for level in (None, Level.INTERNAL, Level.SECRET, Level.TOP_SECRET):
                out.append(Event(kind, process=Process(pid=5, name="teamviewer", exe="/usr/bin/teamviewer", uid=1000),
                                 operator=Operator(account="x", known=True), host=host,
                                 net=Net(remote_zone=zone, local_zone=zone, remote_ip="203.0.113.5"),
                                 file=File(path="/srv/a.docx", level=level, marking=level, on_removable=False,
                                           marking_status="unscanned"),
                                 media=Media(serial="S", registered=False),
                                 iface=Iface(name="wlan0", kind="wireless", zone=zone)))
    return out


@pytest.mark.parametrize("level", [None, Level.PUBLIC, Level.INTERNAL, Level.CONFIDENTIAL, Level.SECRET])
@pytest.mark.parametrize("zone", [None, "intranet", "internet", "extranet"])
def test_shipped_packs_fire_the_same_for_any_host(level: Level | None, zone: str | None) -> None:
    rs = _shipped()
    host = Host(id="h-1", unit="u", department="d", custodian="c", level=level, zone=zone)
    general, special = Engine(rs), Engine(for_host(rs, host))
    fired = 0
    for e in _shipped_events(host):
        want = [r.id for r in general.match(e)]
        assert [r.id for r in special.match(e)] == want, e
        fired += len(want)
    assert fired  # the events reach the host-dependent rules


_SHIPPED: list[RuleSet] = []


def _shipped() -> RuleSet:
    if not _SHIPPED:
        _SHIPPED.append(load_rules([shipped_rules_dir()]))
    return _SHIPPED[0]


REGISTRY = """\
host: {{id: h-1, unit: 单位, department: 部门, custodian: zhangsan, level: {level}, zone: intranet}}
people: [{{account: zhangsan, uid: 1000, name: 张三, unit: 单位, clearance: secret}}]
zones: {{default: internet, networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}]}}
"""


@pytest.mark.parametrize(("level", "fires"), [("secret", True), ("internal", False)])
def test_a_replay_follows_its_own_registrys_host(tmp_path: Path, level: str, fires: bool) -> None:
    # The same connection to the Internet: a violation on a classified host, nothing on an internal one.
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY.format(level=level), encoding="utf-8")
    registry = load_registry(path)
    rs = _shipped()
    line = {"event": {"kind": "net.connect"}, "process": {"pid": 7, "name": "curl", "exe": "/usr/bin/curl",
                                                           "uid": 1000, "loginuid": 1000},
            "net": {"proto": "tcp", "local_ip": "10.1.2.3", "remote_ip": "203.0.113.9", "remote_port": 443}}
    data = (json.dumps(line) + "\n").encode() * 3
    found: dict[str, list[str]] = {}
    for name, engine in (("general", Engine(rs)), ("special", Engine(for_host(rs, registry.host)))):
        out: list[dict[str, Any]] = []
        replay(io.BytesIO(data), "x", engine, Attributor(registry, lambda uid: None, lambda exe, pid: None),
               out.append, lambda line: None)
        found[name] = [json.dumps(r, sort_keys=True) for r in out]
    assert found["special"] == found["general"]
    assert any('"rule": "BM-NET-001"' in r for r in found["special"]) is fires


def test_a_field_unlike_a_text_is_indexed_only_where_it_must_also_be_set(tmp_path: Path) -> None:
    # "zone != 'loopback'" holds for an unset zone too: only beside "zone != None" may the index pass
    # over unset values, so the first rule must still fire on a connection with no local zone.
    rs = _load(tmp_path, ["event.kind == 'net.connect' and host.zone != None and net.local_zone != 'loopback'",
                          "event.kind == 'net.connect' and net.local_zone != None and net.local_zone != 'loopback'"])
    host = Host(zone="intranet")
    for rules in (rs, for_host(rs, host)):
        engine = Engine(rules)
        assert [r.id for r in engine.match(Event("net.connect", host=host, net=Net()))] == ["R0"]
        assert [r.id for r in engine.match(Event("net.connect", host=host, net=Net(local_zone="dmz")))] == ["R0", "R1"]
        assert engine.match(Event("net.connect", host=host, net=Net(local_zone="loopback"))) == []
