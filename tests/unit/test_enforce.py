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
    kw.setdefault("reactive_by", "agent")  # the kernel's own blocks: tests of their own below
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


# -- reactive blocks the kernel makes at the first packet ------------------------------------------------------
class FakeLog:
    """Stands in for the NFLOG reader: the test calls the enforcer's ``first_packet`` as the kernel's log would."""

    started = 0

    def __init__(self, group: int, emit: Any, clock: Any, first: Any = None) -> None:
        self.group, self.emit, self.first = group, emit, first

    def start(self) -> None:
        FakeLog.started += 1

    def stop(self) -> None:
        pass


def _kernel(tmp_path: Path, **kw: Any) -> tuple[Enforcer, FakeTable, list[dict[str, Any]], list[dict[str, Any]],
                                                 Metrics, Clock]:
    out = _enforcer(tmp_path, reactive_by="kernel", **kw)
    out[0].log_reader = FakeLog
    out[0].person = {1000: "张三"}.get
    out[0].start()
    return out


def test_the_table_blocks_a_forbidden_destination_at_its_first_packet_and_the_rule_confirms_it(
        tmp_path: Path) -> None:
    e, table, journal, passed, metrics, clock = _kernel(tmp_path)
    layout = table.installed
    assert layout is not None and layout.first_packet == 60 and layout.log_group is not None  # min(TTL, lease/2)
    # Dropped attempts are logged too: with the kernel's own block they never reach the network collector.
    assert layout.log_drops is False  # (no pipeline here to hand them to)
    # The rule in the kernel only acts on the forbidden zone, leased like every element.
    assert {str(n): s for n, s in table.sets["forbid"].items()} == {"0.0.0.0/0": 150.0, "::/0": 150.0}
    t0 = clock.t
    e.first_packet("203.0.113.9", 1000, t0)  # the kernel holds it already; the agent adopts it
    assert journal == [] and len(e.active) == 1  # its record waits for the rule's judgement
    assert {str(n) for n in table.sets["dest"]} == {"203.0.113.9/32"}
    clock.t += 0.4
    e.put(_finding("203.0.113.9", "internet", ttl=120))
    d = journal[-1]["detail"]
    assert journal[-1]["_seq_of"] is passed[0] and passed[0]["enforcement"]["id"] == d["id"]
    assert (d["target"], d["rule"], d["result"], d["by"], d["operator"], d["in_force_at"]) == \
        ("203.0.113.9", "T-BLOCK", "enforced", "kernel", "张三", t0)
    assert d["until"] == t0 + 120  # the rule's TTL, from the moment the kernel blocked
    assert metrics.enforcements.value(("network", "enforced")) == 1
    # A repeat is no second decision; the kernel's log of the same address again is no second block.
    e.put(_finding("203.0.113.9", "internet"))
    e.first_packet("203.0.113.9", 1000, clock.t)
    assert passed[1]["enforcement"]["result"] == "in_force" and len(journal) == 1 and len(e.active) == 1
    # The finding came first (the log was late): one block, one record, made by the agent.
    e.put(_finding("203.0.113.10", "internet"))
    e.first_packet("203.0.113.10", 1000, clock.t)
    assert len(journal) == 2 and len(e.active) == 2


def test_a_kernel_block_no_rule_confirms_is_journaled_and_lifted(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.enforce.enforcer as enforcer_mod
    monkeypatch.setattr(enforcer_mod, "CONFIRM_WITHIN", 0.0)
    e, table, journal, _passed, metrics, clock = _kernel(tmp_path)
    e.first_packet("203.0.113.20", 1001, clock.t)
    e.tick()
    assert [r["kind"] for r in journal] == ["enforce.action", "enforce.lift"]
    assert journal[0]["detail"]["result"] == "unconfirmed" and journal[0]["detail"]["operator"] is None
    assert journal[1]["detail"]["how"] == "unconfirmed"
    assert table.sets["dest"] == {} and e.active == {}
    assert metrics.enforcements.value(("network", "unconfirmed")) == 1


def test_a_stop_that_keeps_blocks_stops_the_kernel_making_new_ones(tmp_path: Path) -> None:
    e, table, _journal, _passed, _metrics, _clock = _kernel(tmp_path, on_stop="keep")
    e.put(_finding("203.0.113.9", "internet"))
    e.shutdown()
    assert {str(n) for n in table.sets["dest"]} == {"203.0.113.9/32"} and table.sets["forbid"] == {}


def test_the_first_packet_rule_is_written_into_the_table() -> None:
    from agent.enforce.nft import FIRST_PACKET, NftTable
    scripts: list[str] = []
    NftTable("dw19t", run=lambda s, **kw: scripts.append(s) or "").install(
        Layout(9847, (), (), log_group=19001, first_packet=300))
    text = scripts[0]
    assert "set dest4 { type ipv4_addr; flags dynamic, timeout;" in text
    assert (f'ct direction original meta skuid >= 0 ip daddr @forbid4 add @dest4 {{ ip daddr timeout 300s }} '
            f'log prefix "{FIRST_PACKET}" group 19001') in text
    assert "ip6 daddr @forbid6 add @dest6" in text and "log group 19001\n" not in text.split("chain refuse")[1][:80]
    scripts.clear()
    NftTable("dw19t", run=lambda s, **kw: scripts.append(s) or "").install(
        Layout(9847, (), (), log_group=19001, log_drops=True))
    assert "@forbid4 add" not in scripts[0] and "log group 19001" in scripts[0]


def test_the_log_reader_tells_a_first_packet_from_a_dropped_attempt() -> None:
    import socket
    import struct

    from agent.enforce.nflog import _NFGEN, _NLMSG, DropLog, _nla
    from agent.enforce.nft import FIRST_PACKET
    firsts: list[tuple[str, int | None]] = []
    events: list[Any] = []
    log = DropLog(19001, events.append, first=lambda ip, uid, when: firsts.append((ip, uid)))
    ip4 = bytes([0x45, 0, 0, 40]) + b"\0" * 5 + bytes([6]) + b"\0\0" + socket.inet_aton("10.1.1.1") + \
        socket.inet_aton("203.0.113.9") + struct.pack("!HH", 40000, 443) + b"\0" * 16

    def message(prefix: bytes | None) -> bytes:
        attrs = _nla(9, ip4) + _nla(11, struct.pack("!I", 1000)) + (_nla(10, prefix + b"\0") if prefix else b"")
        body = _NFGEN.pack(socket.AF_INET, 0, 0) + attrs
        return _NLMSG.pack(_NLMSG.size + len(body), (4 << 8) | 0, 0, 0, 0) + body
    log._messages(message(FIRST_PACKET.encode()) + message(None))
    assert firsts == [("203.0.113.9", 1000)]
    assert len(events) == 1 and events[0].net.remote_ip == "203.0.113.9" and events[0].process.uid == 1000
