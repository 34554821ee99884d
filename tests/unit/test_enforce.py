"""Enforcement: block rules and the enforce: config fail closed with their place; the enforcer journals
every decision and every lifting, counts them, and never blocks the management channel."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.cli import main
from agent.config import load_config
from agent.enforce.channel import derive
from agent.enforce.enforcer import Enforcer
from agent.enforce.nft import Elements, Layout
from agent.enforce.settings import EnforceConfig
from agent.enforce.state import load, request_lift
from agent.engine.rules import load_rules
from agent.errors import LoadErrors
from agent.metrics import Metrics
from agent.registry import load_registry

REGISTRY = """\
host: {id: h1, unit: U, department: D, custodian: zs, level: secret, zone: intranet}
units: [{name: U, department: D}]
people: [{account: zs, uid: 1000, name: 张三, unit: U, clearance: secret}]
zones: {default: internet, networks: [{name: intranet, cidrs: [10.0.0.0/8]}, {name: partner, cidrs: [192.0.2.0/24]}]}
"""

RULE = """\
pack: t
rules:
  - id: T-BLOCK
    title: {zh: 违规外联, en: out}
    when: event.kind == "net.connect" and net.remote_zone == "internet"
    severity: high
    action: block
@EXTRA@    message: {zh: "x", en: "x"}
"""


def _rules(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(RULE.replace("@EXTRA@", extra), encoding="utf-8")
    return p


def test_a_block_rule_enforces_what_its_events_imply(tmp_path: Path) -> None:
    rs = load_rules([_rules(tmp_path)])
    r = rs.rules[0]
    assert r.action == "block" and r.enforce is not None
    assert (r.enforce.kind, r.enforce.scope, r.enforce.ttl) == ("network", "destination", None)
    rs = load_rules([_rules(tmp_path, "    enforce: {scope: zone, ttl: 2m}\n")])
    assert rs.rules[0].enforce is not None and rs.rules[0].enforce.scope == "zone"
    assert rs.rules[0].enforce.ttl == 120.0


@pytest.mark.parametrize("extra,message", [
    ("    enforce: {kind: nuke}\n", "enforce.kind must be one of"),
    ("    enforce: {scope: planet}\n", "enforce.scope must be destination or zone"),
    ("    enforce: {ttl: soon}\n", "enforce.ttl"),
])
def test_a_bad_enforce_key_fails_the_load_at_its_place(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(LoadErrors) as exc:
        load_rules([_rules(tmp_path, extra)])
    text = str(exc.value.errors[0])
    assert message in text and text.startswith(f"{tmp_path / 'r.yaml'}:8:")


def test_enforce_on_an_alert_rule_is_an_error(tmp_path: Path) -> None:
    p = _rules(tmp_path, "    enforce: {kind: network}\n")
    p.write_text(p.read_text().replace("action: block", "action: alert"))
    with pytest.raises(LoadErrors) as exc:
        load_rules([p])
    assert "enforce applies to action: block rules only" in str(exc.value.errors[0])


def _config(tmp_path: Path, enforce: str, extra: str = "") -> Path:
    (tmp_path / "registry.yaml").write_text(REGISTRY, encoding="utf-8")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: registry.yaml\nrules: [r.yaml]\nstate_dir: state\nlisten: 127.0.0.1:9847\n"
                   f"{extra}enforce:\n{enforce}", encoding="utf-8")
    _rules(tmp_path)
    return cfg


def test_enforcement_is_off_unless_the_config_turns_it_on(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "  table: dw19t\n")).enforce.mode == "off"
    assert load_config(_config(tmp_path, "  mode: off\n")).enforce.mode == "off"
    c = load_config(_config(tmp_path, "  mode: dryrun\n  ttl: 90s\n"))
    assert (c.enforce.mode, c.enforce.ttl) == ("dryrun", 90.0)


@pytest.mark.parametrize("enforce,line,message", [
    ("  mode: always\n", 6, "enforce.mode must be off, dryrun or enforce"),
    ("  mode: enforce\n  lease: 1s\n", 7, "enforce.lease must be at least 10s"),
    ("  mode: enforce\n  network: {allow: [not-an-ip]}\n", 7, "is not an address or CIDR"),
    ("  mode: enforce\n  on_stop: maybe\n", 7, "enforce.on_stop must be lift or keep"),
    ("  mode: enforce\n  table: 'a b'\n", 7, "enforce.table must be a name"),
])
def test_a_bad_enforce_config_is_refused_at_its_place(tmp_path: Path, enforce: str, line: int,
                                                      message: str) -> None:
    cfg = _config(tmp_path, enforce)
    with pytest.raises(LoadErrors) as exc:
        load_config(cfg)
    text = "\n".join(str(e) for e in exc.value.errors)
    assert message in text and f"{cfg}:{line}:" in text


def test_check_refuses_an_enforcement_that_would_cut_the_management_channel(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The syslog target is on the Internet, which enforcement forbids: its records would stop.
    cfg = _config(tmp_path, "  mode: enforce\n", "forward: {syslog: {address: 'tcp://203.0.113.5:6514'}}\n")
    assert main(["check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "the syslog target tcp://203.0.113.5:6514 203.0.113.5 is in zone 'internet'" in err
    assert f"{cfg}:6:1:" in err
    # The near miss: the same target in the intranet is kept open, and check says so.
    cfg = _config(tmp_path, "  mode: enforce\n  network: {resolvers: [10.0.0.53]}\n",
                  "forward: {syslog: {address: 'tcp://10.1.2.3:6514'}}\n")
    assert main(["check", "--config", str(cfg)]) == 0, capsys.readouterr().err
    assert "the syslog target tcp://10.1.2.3:6514" in capsys.readouterr().out
    # Listed on purpose, an Internet address is kept open.
    cfg = _config(tmp_path, "  mode: enforce\n  network: {allow: [203.0.113.5], resolvers: []}\n",
                  "forward: {syslog: {address: 'tcp://203.0.113.5:6514'}}\n")
    assert main(["check", "--config", str(cfg)]) == 0, capsys.readouterr().err


def test_check_refuses_forbidding_the_hosts_own_zone_or_an_unknown_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "  mode: dryrun\n  network: {forbidden: [intranet, mars]}\n")
    assert main(["check", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "the zone of this host itself" in err and "zone 'mars', which the registry does not define" in err


class FakeTable:
    """Stands in for the kernel table in unit tests (the real one is tested in namespaces)."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[Any, float]] = {}
        self.installed: Layout | None = None
        self.removed = 0

    def install(self, layout: Layout) -> None:
        self.installed = layout

    def apply(self, elements: Elements) -> None:
        self.sets = {k: dict(v) for k, v in elements.sets.items()}

    def add(self, name: str, net: Any, seconds: float) -> None:
        self.sets.setdefault(name, {})[net] = seconds

    def delete(self, name: str, net: Any) -> None:
        del self.sets[name][net]

    def remove(self) -> bool:
        self.removed += 1
        self.sets = {}
        return True

    def held(self) -> set[str]:
        return {str(n) for s in self.sets.values() for n in s}


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _enforcer(tmp_path: Path, mode: str = "enforce", **kw: Any) -> tuple[Enforcer, FakeTable, list[dict[str, Any]],
                                                                          list[dict[str, Any]], Metrics, Clock]:
    (tmp_path / "registry.yaml").write_text(REGISTRY, encoding="utf-8")
    reg = load_registry(tmp_path / "registry.yaml")
    cfg = EnforceConfig(mode=mode, ttl=60.0, **kw)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.53\n")
    channel, problems = derive(SimpleNamespace(enforce=cfg, path="x", forward_syslog=None, listen="0.0.0.0:9847"),
                               reg, resolv)
    assert not problems
    journal: list[dict[str, Any]] = []
    passed: list[dict[str, Any]] = []
    table, metrics, clock = FakeTable(), Metrics("t", process_metrics=False), Clock()
    e = Enforcer(cfg, channel, state_dir=tmp_path / "state", host="h1", custodian="zs", unit="U",
                 record=journal.append, metrics=metrics, clock=clock, table=table)  # type: ignore[arg-type]
    e.next = passed.append
    return e, table, journal, passed, metrics, clock


def _finding(ip: str, zone: str, **kw: Any) -> dict[str, Any]:
    return {"type": "finding", "time": 1_800_000_000.0, "host": "h1", "rule": "T-BLOCK", "severity": "high",
            "action": "block", "accountable": {"operator": "张三"},
            "event": {"event": {"kind": "net.connect"}, "net": {"remote_ip": ip, "remote_zone": zone}},
            "enforce": {"kind": "network", "scope": "destination", "ttl": None, **kw}}


def test_a_block_finding_blocks_its_destination_journals_it_and_lifts_at_its_ttl(tmp_path: Path) -> None:
    e, table, journal, passed, metrics, clock = _enforcer(tmp_path)
    e.start()
    assert table.installed is not None and table.installed.listen_port == 9847
    assert "10.0.0.53/32" in {str(n) for n in table.installed.management}  # DNS to the intranet resolver
    e.put(_finding("203.0.113.9", "internet"))
    assert table.held() == {"203.0.113.9/32"}
    assert passed[0]["enforcement"]["result"] == "enforced" and "enforce" not in passed[0]
    rec = journal[-1]
    assert rec["kind"] == "enforce.action" and rec["_seq_of"] is passed[0]
    d = rec["detail"]
    assert (d["kind"], d["target"], d["rule"], d["result"], d["operator"]) == \
        ("network", "203.0.113.9", "T-BLOCK", "enforced", "张三")
    assert d["until"] == clock.t + 60 and d["lift_by"]["command"] == f"dutywatch enforce lift {d['id']}"
    assert d["lift_by"]["custodian"] == "zs"
    assert metrics.enforcements.value(("network", "enforced")) == 1
    # A repeat while in force is no second decision: the finding names the block already there.
    e.put(_finding("203.0.113.9", "internet"))
    assert passed[1]["enforcement"]["result"] == "in_force" and len(journal) == 1
    clock.t += 61
    e.tick()
    assert table.held() == set() and journal[-1]["kind"] == "enforce.lift"
    assert journal[-1]["detail"]["how"] == "ttl" and metrics.enforcements.value(("network", "expired")) == 1
    saved = load(tmp_path / "state")
    assert saved is not None and saved.enforcements == []


def test_the_management_channel_and_open_zones_are_never_blocked(tmp_path: Path) -> None:
    e, table, journal, passed, metrics, _ = _enforcer(tmp_path)
    e.start()
    e.put(_finding("10.0.0.53", "internet"))  # a rule that misjudges the resolver's zone
    e.put(_finding("10.9.9.9", "intranet"))
    e.put(_finding("192.0.2.7", "partner"))
    assert table.held() == set()
    assert [p["enforcement"]["result"] for p in passed] == ["refused"] * 3
    assert "management channel" in journal[0]["detail"]["why"]
    assert metrics.enforcements.value(("network", "refused")) == 3


def test_dryrun_records_what_it_would_do_and_blocks_nothing(tmp_path: Path) -> None:
    e, table, journal, _passed, metrics, clock = _enforcer(tmp_path, mode="dryrun")
    e.start()
    e.put(_finding("203.0.113.9", "internet"))
    assert table.installed is None and table.held() == set()
    d = journal[-1]["detail"]
    assert (d["mode"], d["result"]) == ("dryrun", "dryrun") and d["message"].startswith("would block")
    assert metrics.enforcements.value(("network", "dryrun")) == 1
    clock.t += 61
    e.tick()
    assert journal[-1]["kind"] == "enforce.lift" and journal[-1]["detail"]["mode"] == "dryrun"


def test_enforcement_off_annotates_the_finding_and_decides_nothing(tmp_path: Path) -> None:
    e, _table, journal, passed, _metrics, _ = _enforcer(tmp_path, mode="off")
    e.put(_finding("203.0.113.9", "internet"))
    assert passed[0]["enforcement"]["result"] == "not_enforced" and journal == []


def test_zone_scope_and_isolation_put_whole_ranges_in_force(tmp_path: Path) -> None:
    e, table, journal, _passed, _, _ = _enforcer(tmp_path, isolate_critical=True)
    e.start()
    e.put(_finding("203.0.113.9", "internet", scope="zone"))
    assert {str(n) for n in table.sets["wide"]} == {"0.0.0.0/0", "::/0"}
    assert table.installed is not None and "10.0.0.0/8" in {str(n) for n in table.installed.permitted}
    crit = _finding("198.51.100.3", "internet")
    crit["severity"] = "critical"
    e.put(crit)
    assert {str(n) for n in table.sets["iso"]} == {"0.0.0.0/0", "::/0"}
    assert journal[-1]["detail"]["kind"] == "isolate"


def test_a_lift_request_is_taken_journaled_with_who_asked_and_stop_lifts_the_rest(tmp_path: Path) -> None:
    e, table, journal, _passed, metrics, _ = _enforcer(tmp_path)
    e.start()
    e.put(_finding("203.0.113.9", "internet"))
    e.put(_finding("203.0.113.10", "internet"))
    first = journal[0]["detail"]["id"]
    request_lift(tmp_path / "state", first, "ticket 42")
    e.tick()
    assert table.held() == {"203.0.113.10/32"}
    lift = journal[-1]["detail"]
    assert (lift["id"], lift["how"], lift["reason"]) == (first, "command", "ticket 42")
    assert lift["by"]["uid"] == __import__("os").getuid()
    e.shutdown()
    assert table.removed >= 1 and journal[-1]["detail"]["how"] == "stop"
    assert metrics.enforcements.value(("network", "lifted")) == 2


def test_a_restart_without_persist_lifts_what_the_last_run_left(tmp_path: Path) -> None:
    e, table, journal, *_ = _enforcer(tmp_path, on_stop="keep")
    e.start()
    e.put(_finding("203.0.113.9", "internet"))
    e.shutdown()  # keep: in force past the stop until its TTL
    assert table.held() == {"203.0.113.9/32"} and journal[-1]["detail"]["result"] == "kept"
    e2, table2, journal2, *_ = _enforcer(tmp_path)
    e2.start()
    assert journal2[0]["kind"] == "enforce.lift" and journal2[0]["detail"]["how"] == "restart"
    assert table2.held() == set()


def test_a_restart_with_persist_restores_the_unexpired(tmp_path: Path) -> None:
    e, _table, _journal, *_ = _enforcer(tmp_path, on_stop="keep", persist=True)
    e.start()
    e.put(_finding("203.0.113.9", "internet"))
    e.shutdown()
    e2, table2, journal2, *_ = _enforcer(tmp_path, on_stop="keep", persist=True)
    e2.start()
    assert table2.held() == {"203.0.113.9/32"} and journal2[0]["detail"]["result"] == "restored"


def test_enforce_list_and_lift_without_an_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "  mode: dryrun\n")
    e, *_ = _enforcer(tmp_path, mode="dryrun")
    e.start()
    e.put(_finding("203.0.113.9", "internet"))
    e.tick()  # the state file is written by the main loop's tick, not on the decision's path
    saved = load(tmp_path / "state")
    assert saved is not None
    saved_path = tmp_path / "state" / "enforce.json"
    data = json.loads(saved_path.read_text())
    data["pid"] = 2**22 + 12345  # no such process: the agent is gone
    saved_path.write_text(json.dumps(data))
    ident = saved.enforcements[0].id
    assert main(["enforce", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert ident in out and "203.0.113.9" in out and "no agent holds these" in out
    assert main(["enforce", "lift", "--config", str(cfg), "nope"]) == 1
    assert main(["enforce", "lift", "--config", str(cfg), ident, "--reason", "false alarm"]) == 0
    assert main(["events", "--config", str(cfg), "--type", "all", "--format", "json"]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    lifts = [r for r in recs if r.get("kind") == "enforce.lift"]
    assert lifts and lifts[0]["detail"]["reason"] == "false alarm" and lifts[0]["detail"]["id"] == ident


def test_a_block_longer_than_the_lease_is_renewed_while_the_agent_runs(tmp_path: Path) -> None:
    e, table, _, _, _, clock = _enforcer(tmp_path, lease=30.0)
    e.start()
    e.put(_finding("203.0.113.9", "internet", ttl=3600))
    net = next(iter(table.sets["dest"]))
    assert table.sets["dest"][net] == 30.0  # in the kernel for the lease only, not the hour
    clock.t += 11
    e.tick()
    assert table.sets["dest"][net] == 30.0  # renewed: a full lease from now
    clock.t += 3600
    e.tick()
    assert table.held() == set()
