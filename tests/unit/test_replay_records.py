"""Replay's record path finds exactly what evaluating every line as an Event finds.

``replay`` decodes lines into records (``agent.records``), attributes and
matches them as records, and builds an Event only for a line that may fire
something. The reference here is the plain loop it replaced: each line read
on its own, decoded and attributed into an Event, matched. Random streams
(every kind, groups given, missing or null, levels by name, units, media,
logins counted over a window, bad and blank lines, CR LF) must give the same
findings in the same order, the same bad-line reports and the same counts.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.attribution import Attributor
from agent.commands import replay as replay_mod
from agent.commands.replay import MAX_LINE, replay
from agent.engine.engine import Engine, Finding, NeedsEvent
from agent.engine.rules import RuleSet, load_rules
from agent.events import GROUP_TYPES, KINDS, EventDecoder
from agent.paths import DEMO_REGISTRY, shipped_rules_dir
from agent.records import RecordDecoder
from agent.registry import Registry, load_registry

SIGMA = """\
title: Netcat listener
id: 7d1bfa2b-0000-4000-8000-00000000000a
logsource: {product: linux, category: process_creation}
detection:
    selection:
        Image|endswith: /nc
        CommandLine|contains: ' -l'
    condition: selection
level: high
"""
# Counted over a window: matching a line twice would count it twice, so its kind never takes the record path.
COUNTED = """\
pack: counted
title: {zh: 计数, en: Counted}
rules:
  - id: CNT-001
    title: {zh: 三次删除, en: Three deletions}
    when: event.kind == "file.delete" and startswith(file.path, "/srv/")
    threshold: {count: 3, within: 5m, by: [process.uid]}
    severity: low
    action: alert
    message: {zh: "nc", en: "nc"}
"""


@functools.cache
def _setup(tmp: str) -> tuple[RuleSet, Registry]:
    root = Path(tmp)
    shutil.copytree(shipped_rules_dir(), root / "rules")
    (root / "rules" / "nc.yml").write_text(SIGMA, encoding="utf-8")
    (root / "rules" / "counted.yaml").write_text(COUNTED, encoding="utf-8")
    registry = root / "registry.yaml"
    # The demo registry, and a service account named by its systemd unit (so units take build's path).
    text = DEMO_REGISTRY.read_text(encoding="utf-8").replace(
        "  - {account: postgres, custodian: lisi}\n",
        "  - {account: postgres, custodian: lisi}\n  - {account: nginx, custodian: wangwu, unit: \"nginx*.service\"}\n")
    registry.write_text(text, encoding="utf-8")
    return load_rules([root / "rules"]), load_registry(registry)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[RuleSet, Registry]:
    return _setup(str(tmp_path_factory.mktemp("records")))


def _accounts(uid: int) -> str | None:
    return {0: "root", 33: "www-data", 1000: "zhangsan", 1002: "wangwu", 107: "nginx"}.get(uid)


def _owners(exe: str, pid: int | None) -> str | None:
    return "dpkg" if exe == "/usr/bin/dpkg" else None


def reference(data: bytes, ruleset: RuleSet, registry: Registry) -> tuple[list[dict[str, Any]], list[str], int, int]:
    """The plain loop: every line read on its own and evaluated as an Event."""
    engine = Engine(ruleset)
    engine.reset_windows()
    attribute = Attributor(registry, _accounts, _owners)
    decode = EventDecoder(attribute.build).decode
    out: list[dict[str, Any]] = []
    reports: list[str] = []
    events = 0
    stream = io.BytesIO(data)
    for lineno, raw in enumerate(iter(functools.partial(stream.readline, MAX_LINE + 1), b""), 1):
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            raise AssertionError("the streams here hold no long line")
        try:
            event = decode(raw)
        except (ValueError, TypeError, RecursionError) as exc:
            if raw.strip():
                reports.append(f"s:{lineno}: bad event: {exc}")
            continue
        events += 1
        for rule in engine.match(event):
            out.append({"seq": len(out) + 1, "line": lineno, **Finding(rule, event, attribute.names).to_record()})
    return out, reports, events, engine.errors


def actual(data: bytes, ruleset: RuleSet, registry: Registry) -> tuple[list[dict[str, Any]], list[str], int, int]:
    engine = Engine(ruleset)
    engine.reset_windows()
    out: list[dict[str, Any]] = []
    reports: list[str] = []
    stats = replay(io.BytesIO(data), "s", engine, Attributor(registry, _accounts, _owners), out.append,
                   reports.append)
    assert stats.findings == len(out) and stats.bad == len(reports)
    return out, reports, stats.events, engine.errors


# -- random events ---------------------------------------------------------------------------------------
def maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s)


PROCESS = st.fixed_dictionaries({
    "exe": st.sampled_from(["/usr/bin/nc", "/usr/bin/ls", "/usr/bin/dpkg", "/usr/bin/bash", "/usr/bin/scp",
                            "/usr/sbin/nginx", "/usr/bin/dutywatch", "/tmp/x"]),
    "uid": st.sampled_from([0, 33, 107, 1000, 1001, 1002, 4242, None]),
}, optional={
    "pid": st.integers(1, 99999), "ppid": st.integers(1, 99999),
    "name": st.sampled_from(["nc", "ls", "dpkg", "bash", "scp", "nginx"]),
    "cmdline": st.sampled_from(["nc -lvp 4444", "ls -la", "dpkg -i x.deb", "bash", "scp a b:", "nc host 80",
                                "cat /etc/shadow", "NC -L"]),
    "cwd": st.sampled_from(["/", "/tmp", "/srv/classified"]),
    "user": maybe(st.sampled_from(["root", "zhangsan", "www-data", "postgres", "ghost", "nginx"])),
    "loginuid": maybe(st.sampled_from([1000, 1002, 4242, 4294967295])),
    "start_time": st.floats(0, 2e9), "unit": maybe(st.sampled_from(["nginx.service", "cron.service"])),
    "package": maybe(st.sampled_from(["dpkg", "coreutils"])),
})
NET = st.fixed_dictionaries({
    "remote_ip": st.sampled_from(["8.8.8.8", "10.9.9.9", "172.20.0.1", "127.0.0.1", "::1", "fd00:10::7",
                                  "2001:db8::1", "::ffff:8.8.4.4", "not-an-ip", "10.0.0.256"]),
}, optional={
    "proto": st.sampled_from(["tcp", "udp"]), "direction": st.sampled_from(["out", "in"]),
    "local_ip": st.sampled_from(["10.0.0.5", "172.16.1.1", "192.168.1.9", "::ffff:10.1.2.3", "fe80::1%eth0"]),
    "local_port": st.integers(0, 65535),
    "remote_port": st.sampled_from([22, 53, 80, 443, 3306, 4444]),
    "remote_zone": maybe(st.sampled_from(["internet", "intranet"])),
    "local_zone": maybe(st.sampled_from(["extranet", "intranet"])),
    "domain": maybe(st.sampled_from(["example.com", "pastebin.com"])),
})
FILE = st.fixed_dictionaries({
    "path": st.sampled_from(["/srv/classified/a.docx", "/srv/classified/topsecret/b", "/srv/internal/c",
                             "/tmp/d", "/media/usb/e.docx", "/etc/dutywatch/agent.yaml"]),
}, optional={
    "dest_path": maybe(st.sampled_from(["/media/usb/x", "/srv/classified/topsecret/y", "/tmp/z"])),
    "source_path": maybe(st.sampled_from(["/srv/classified/a.docx", "/tmp/q"])),
    "level": maybe(st.sampled_from(["secret", "internal"])),  # by name: the Event's path converts it
    "marking": maybe(st.sampled_from(["secret", "confidential"])),
    "on_removable": maybe(st.booleans()), "owner_unit": maybe(st.sampled_from(["省发改委办公室", "省外单位"])),
})
OTHER = {
    "operator": st.fixed_dictionaries({}, optional={"account": st.just("lisi"), "known": st.booleans()}),
    "host": st.fixed_dictionaries({}, optional={"id": st.just("elsewhere"), "zone": st.just("internet")}),
    "media": st.fixed_dictionaries({}, optional={"serial": st.sampled_from(["AA00112233", "ZZ"]),
                                                 "mount": st.just("/media/usb")}),
    "iface": st.fixed_dictionaries({}, optional={"name": st.just("wlan0"), "kind": st.just("wireless"),
                                                 "ip": st.just("192.168.9.9")}),
    "auth": st.fixed_dictionaries({}, optional={"result": st.sampled_from(["success", "failure"]),
                                                "account": st.sampled_from(["root", "zhangsan", "nobody"]),
                                                "source_ip": st.sampled_from(["10.1.1.1", "8.8.8.8"])}),
    "parent": st.fixed_dictionaries({}, optional={"name": st.just("bash"), "exe": st.just("/usr/bin/bash"),
                                                  "cmdline": st.just("-bash")}),
}
COMMON = ["process.exec", "net.connect", "net.accept", "file.write", "file.create", "file.rename",
          "file.delete", "auth.login"]


@st.composite
def event_line(draw: st.DrawFn) -> bytes:
    kind = draw(st.one_of(st.sampled_from(COMMON), st.sampled_from(KINDS)))
    head: dict[str, Any] = {"kind": kind, "time": draw(st.floats(1.7e9, 1.7e9 + 600)),
                            "collector": draw(st.sampled_from(["proc", "files", "network", "replay"]))}
    ev: dict[str, Any] = {"event": head}
    groups = {"process": PROCESS, "net": NET, "file": FILE, **OTHER}
    wanted = {"process": 0.9, "parent": 0.5, "net": 0.4 if kind.startswith("net.") else 0.05,
              "file": 0.6 if kind.startswith("file.") else 0.05, "auth": 0.6 if kind.startswith("auth.") else 0.02}
    for name, strategy in groups.items():
        if draw(st.floats(0, 1)) < wanted.get(name, 0.04):
            ev[name] = None if draw(st.integers(0, 30)) == 0 else draw(strategy)
    return json.dumps(ev, ensure_ascii=False).encode()


ODD = st.sampled_from([b"", b"   ", b"{not json", b"[1, 2]", b'{"event":{"kind":"nope"}}',
                       b'{"event":{"kind":"process.exec"},"process":{"pid":"seven"}}'])


@st.composite
def stream(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(event_line(), event_line(), event_line(), ODD), min_size=1, max_size=60))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = ending.join(lines)
    return data if draw(st.booleans()) else data + ending


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=stream())
def test_records_find_what_events_find(setup: tuple[RuleSet, Registry], data: bytes) -> None:
    ruleset, registry = setup
    assert actual(data, ruleset, registry) == reference(data, ruleset, registry)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(event_line(), min_size=1, max_size=20))
def test_a_record_reads_as_its_event(setup: tuple[RuleSet, Registry], lines: list[bytes]) -> None:
    # Every field a rule could read, after attribution, and what the engine finds: a record that its
    # Event would fire on must fire too (the Event is built only then), so both are compared whole.
    ruleset, registry = setup
    _same_reading(ruleset, registry, lines)


def _same_reading(ruleset: RuleSet, registry: Registry, lines: list[bytes]) -> int:
    """Check each line's record against its Event; the number of records compared."""
    engine = Engine(ruleset)
    stateless = engine.stateless_kinds()
    decode = EventDecoder(Attributor(registry, _accounts, _owners).build)
    records = RecordDecoder()
    attribute_record = Attributor(registry, _accounts, _owners).for_records(records.empty)
    compared = 0
    for line in lines:
        try:
            record: Any = records.decode(line)
        except ValueError:
            continue
        event = decode(line)  # what a record takes, an Event takes too
        if not attribute_record(record):
            continue
        compared += 1
        for name in ("kind", "time", "collector", "detail"):
            assert _typed(getattr(record, name)) == _typed(getattr(event, name))
        for group, cls in GROUP_TYPES.items():
            assert [_typed(getattr(getattr(record, group), f)) for f in cls._fields] == [
                _typed(v) for v in getattr(event, group)], group
        if record.kind in stateless:  # a count over a window would count the line twice
            try:
                found = engine.match(record)
            except NeedsEvent:
                continue
            assert found == engine.match(event)
    return compared


def grid() -> list[bytes]:
    """Every combination of the cases that take different branches of attribution, one event a line."""
    kinds = [*COMMON, "media.mount", "iface.up", "account.change", "net.dns"]
    processes: list[dict[str, Any] | None] = [
        {"uid": 1000, "user": "zhangsan", "exe": "/usr/bin/nc", "cmdline": "nc -lvp 4444"},
        {"uid": 33, "exe": "/usr/bin/scp"}, {"uid": 4242, "user": None, "cmdline": "cat /etc/shadow"},
        {"loginuid": 1002, "uid": 0, "exe": "/usr/bin/ls"}, {"uid": 107, "unit": "nginx.service"},
        {"uid": 4242, "unit": "nginx-a.service"}, {"uid": 1000, "package": "dpkg", "exe": "/usr/bin/dpkg"},
        {"uid": 0, "exe": "/usr/bin/dpkg"},
        {"loginuid": 4294967295, "uid": 1001}, {"pid": 5}, None]
    nets: list[dict[str, Any] | None] = [
        None, {"remote_ip": "8.8.8.8", "remote_port": 443}, {"remote_ip": "10.9.9.9", "local_ip": "172.16.1.1"},
        {"remote_ip": "::ffff:8.8.4.4", "remote_zone": "intranet"}, {"local_ip": "10.0.0.5", "local_zone": "extranet"},
        {"remote_ip": "fe80::1%eth0"}, {"remote_ip": "not-an-ip", "domain": "pastebin.com"}]
    files: list[dict[str, Any] | None] = [
        None, {"path": "/srv/classified/a.docx", "owner_unit": "省外单位"},
        {"path": "/tmp/d", "dest_path": "/srv/classified/topsecret/y"},
        {"path": "/tmp/q", "source_path": "/srv/internal/c"},
        {"path": "/srv/internal/c", "level": "secret"}, {"path": "/media/usb/e.docx", "on_removable": True},
        {"dest_path": "/srv/classified/x"}]
    extras: list[dict[str, Any]] = [{}, {"media": {"serial": "AA00112233"}}, {"iface": {"ip": "192.168.9.9"}},
                                    {"auth": {"account": "root", "result": "failure"}},
                                    {"operator": {"account": "lisi", "known": True}}, {"host": {"id": "h"}},
                                    {"parent": {"exe": "/usr/bin/bash"}}, {"media": {"mount": "/m"}}]
    out = []
    for kind, p, n, f, x, c in itertools.product(kinds, processes, nets, files, extras, ("proc", "files")):
        ev: dict[str, Any] = {"event": {"kind": kind, "time": 1.7e9, "collector": c}, **x}
        for name, group in (("process", p), ("net", n), ("file", f)):
            if group is not None:
                ev[name] = group
        out.append(json.dumps(ev, ensure_ascii=False).encode() + b"\n")
    return out


def test_every_branch_of_attribution_reads_the_same_on_a_record(setup: tuple[RuleSet, Registry]) -> None:
    ruleset, registry = setup
    lines = grid()
    assert len(lines) > 40_000
    assert _same_reading(ruleset, registry, lines) > 20_000
    data = b"".join(lines)
    found = actual(data, ruleset, registry)
    assert found == reference(data, ruleset, registry)
    assert len(found[0]) > 1000  # the grid fires rules
    assert {f["rule"] for f in found[0]} >= {"CNT-001", "7d1bfa2b-0000-4000-8000-00000000000a", "BM-NET-001"}


def _typed(v: Any) -> tuple[type, Any]:
    return type(v), v


def test_a_long_stream_of_records_finds_what_events_find(setup: tuple[RuleSet, Registry]) -> None:
    # Several blocks, a hit near each block edge, and one bad line in the middle of a block.
    ruleset, registry = setup
    hit = {"event": {"kind": "process.exec", "time": 1.7e9},
           "process": {"pid": 7, "exe": "/usr/bin/nc", "cmdline": "nc -lvp 4444", "uid": 1000, "user": "zhangsan"}}
    quiet = {"event": {"kind": "net.connect", "time": 1.7e9}, "process": {"pid": 8, "exe": "/usr/bin/curl",
                                                                         "uid": 33, "user": "www-data"},
             "net": {"remote_ip": "10.1.2.3", "remote_port": 443, "local_ip": "10.0.0.5"}}
    lines = [json.dumps(hit if i % 997 == 0 else quiet).encode() for i in range(6000)]
    lines[3001] = b"{oops"
    data = b"\n".join(lines) + b"\n"
    found, reports, events, errors = actual(data, ruleset, registry)
    assert (found, reports, events, errors) == reference(data, ruleset, registry)
    assert [f["line"] for f in found if f["rule"] == "7d1bfa2b-0000-4000-8000-00000000000a"] == [
        i + 1 for i in range(0, 6000, 997)]
    assert reports == ["s:3002: bad event: Expecting property name enclosed in double quotes: line 1 column 2 "
                       "(char 1)"] and events == 5999


def test_a_rule_that_fails_on_a_record_is_counted_once(setup: tuple[RuleSet, Registry]) -> None:
    # A test that raises (bad data for it) takes the line off the record path; its Event counts the error
    # once, and the rules that do hold on it still fire.
    ruleset, registry = setup

    def fails(e: Any) -> bool:
        if "-la" in e.process.cmdline:
            raise ValueError("cannot take this")
        return bool(e.process.exe == "/usr/bin/ls")

    rule = next(r for r in ruleset.rules if r.id == "7d1bfa2b-0000-4000-8000-00000000000a")
    odd = dataclasses.replace(ruleset, rules=(*ruleset.rules, dataclasses.replace(rule, id="LS-1", test=fails,
                                                                                  triggers=None)))
    lines = [{"event": {"kind": "process.exec", "time": 1.7e9},
              "process": {"pid": 7, "exe": "/usr/bin/nc", "cmdline": "nc -lav", "uid": 1000, "user": "zhangsan"}
              if i % 3 == 0 else {"pid": 7, "exe": "/usr/bin/ls", "cmdline": "ls", "uid": 1000, "user": "zhangsan"}}
             for i in range(30)]
    data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    found, reports, events, errors = actual(data, odd, registry)
    assert (found, reports, events, errors) == reference(data, odd, registry)
    assert errors == 10 and [f["rule"] for f in found].count("LS-1") == 20 and len(found) == 30


# -- lines and blocks -----------------------------------------------------------------------------------
def _old_lines(data: bytes, limit: int) -> list[tuple[int, bytes | None]]:
    """What the readline loop saw: each line (or None for one over ``limit``), numbered."""
    stream = io.BytesIO(data)
    lines = iter(functools.partial(stream.readline, limit + 1), b"")
    out: list[tuple[int, bytes | None]] = []
    for lineno, raw in enumerate(lines, 1):
        if len(raw) > limit and not raw.endswith(b"\n"):
            for rest in lines:
                if rest.endswith(b"\n"):
                    break
            out.append((lineno, None))
        else:
            out.append((lineno, raw))
    return out


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(st.tuples(st.integers(0, 40), st.sampled_from([b"\n", b"\r\n", b""])), max_size=30),
       block=st.integers(1, 16), limit=st.integers(1, 12))
def test_blocks_split_lines_as_readline_did(lines: list[tuple[int, bytes]], block: int, limit: int) -> None:
    # Short blocks and limits: lines over the limit, across block edges, at the end without a newline.
    data = b"".join(b"x" * n + end for n, end in lines)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(replay_mod, "_BLOCK", block)
        m.setattr(replay_mod, "MAX_LINE", limit)
        got = [(lineno + i, line) for lineno, chunk in replay_mod._blocks(io.BytesIO(data))
               for i, line in enumerate(chunk if chunk is not None else [None])]
    assert got == _old_lines(data, limit)
