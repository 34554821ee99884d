"""The typed probes a check's condition is made of. Each reads one kind of host state and decides.

A probe's ``evaluate`` returns an Outcome: pass or fail with the evidence
(``path:line: text``, the account, the socket and its process), or not
applicable with the reason (a command on a scanned root, live state a root
cannot show). A probe that cannot read what it needs fails, saying why: a
compliance check does not pass on what it could not see.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.assess.context import HostContext
from agent.assess.valuetest import TEST_KEYS, ValueTest, parse_value_test
from agent.errors import Location, Problems
from agent.schema import expect_bool, expect_int, expect_map, expect_str, str_list
from agent.yamlsrc import LDict

PASS, FAIL, NA = "pass", "fail", "not_applicable"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A probe's or a check's result and the evidence that decided it."""

    result: str
    evidence: tuple[str, ...]


def _ok(holds: bool, *evidence: str) -> Outcome:
    return Outcome(PASS if holds else FAIL, tuple(evidence))


def _vt(test: ValueTest, value: str | None, where: str, name: str) -> Outcome:
    holds, want = test.check(value)
    shown = "not set" if value is None else value
    return _ok(holds, f"{where}: {name} = {shown}" + ("" if holds else f" ({want})"))


Probe = Callable[[HostContext], Outcome]


def _str_or_list(v: Any, where: Location, problems: Problems, what: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    return str_list(v, where, problems, what)


# -- file ------------------------------------------------------------------------

def _file(m: LDict, p: Problems, what: str) -> Probe:
    path = expect_str(m.get("path"), m.at("path"), p, f"{what}.path") or ""
    exists = expect_bool(m["exists"], m.at("exists"), p, f"{what}.exists") if "exists" in m else None
    mode_max = None
    if "mode_max" in m:
        try:
            mode_max = int(str(m["mode_max"]), 8)
        except ValueError:
            p.add(m.at("mode_max"), f"{what}.mode_max must be an octal mode such as \"0640\"")
    owners = _str_or_list(m["owner"], m.at("owner"), p, f"{what}.owner") if "owner" in m else ()
    grps = _str_or_list(m["group"], m.at("group"), p, f"{what}.group") if "group" in m else ()

    def probe(ctx: HostContext) -> Outcome:
        info = ctx.fs.stat(path)
        if info is None:
            if exists is None or exists:
                return _ok(False, f"{path}: absent")
            return _ok(True, f"{path}: absent")
        if exists is False:
            return _ok(False, f"{path}: present (mode {info.mode:04o})")
        bad = []
        if mode_max is not None and info.mode & ~mode_max:
            bad.append(f"mode {info.mode:04o} allows more than {mode_max:04o}")
        names: dict[int, str] = {}
        gnames: dict[int, str] = {}
        for a in ctx.accounts() if owners else ():
            names.setdefault(a.uid, a.name)  # the first name of a uid is the one ls shows
        for g in ctx.groups() if grps else ():
            gnames.setdefault(g.gid, g.name)
        if owners and names.get(info.uid, str(info.uid)) not in owners and str(info.uid) not in owners:
            bad.append(f"owner {names.get(info.uid, info.uid)} (expected {', '.join(owners)})")
        if grps and gnames.get(info.gid, str(info.gid)) not in grps and str(info.gid) not in grps:
            bad.append(f"group {gnames.get(info.gid, info.gid)} (expected {', '.join(grps)})")
        return _ok(not bad, f"{path}: " + ("; ".join(bad) if bad else f"mode {info.mode:04o}, uid {info.uid}, "
                                           f"gid {info.gid}"))
    return probe


# -- file content --------------------------------------------------------------

def _paths(ctx: HostContext, patterns: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        out += ctx.fs.glob(pat) if any(c in pat for c in "*?[") else [pat]
    return out


def _config(m: LDict, p: Problems, what: str) -> Probe:
    from agent.assess.configfile import read_lines, split_kv
    paths = _str_or_list(m.get("path"), m.at("path"), p, f"{what}.path")
    key = expect_str(m.get("key"), m.at("key"), p, f"{what}.key") or ""
    sep = m.get("separator", "auto")
    if sep not in ("=", "space", "auto"):
        p.add(m.at("separator"), f"{what}.separator must be =, space or auto")
    take = m.get("take", "last")
    if take not in ("first", "last"):
        p.add(m.at("take"), f"{what}.take must be first or last")
    include = _str_or_list(m["include"], m.at("include"), p, f"{what}.include") if "include" in m else None
    default = str(m["default"]) if "default" in m else None
    test = parse_value_test(m, p, what)

    def probe(ctx: HostContext) -> Outcome:
        found: tuple[str, str] | None = None
        for ln in read_lines(ctx.fs, _paths(ctx, paths), include=include):
            k, v = split_kv(ln.text, str(sep))
            if k.lower() == key.lower() and (found is None or take == "last"):
                found = (v, f"{ln.where}: {ln.text}")
        if found is None:
            where = f"{key} not set in {', '.join(paths)}" + (f" (default {default})" if default is not None else "")
            holds, want = test.check(default)
            return _ok(holds, where + ("" if holds else f" ({want})"))
        holds, want = test.check(found[0])
        return _ok(holds, found[1] + ("" if holds else f" ({want})"))
    return probe


def _lines(m: LDict, p: Problems, what: str) -> Probe:
    from agent.assess.configfile import read_lines
    paths = _str_or_list(m.get("path"), m.at("path"), p, f"{what}.path")
    rx = None
    try:
        rx = re.compile(str(m.get("regex", "")))
    except re.error as exc:
        p.add(m.at("regex"), f"{what}.regex: bad regular expression: {exc}")
    if "regex" not in m:
        p.add(m.where, f"missing required key 'regex' in {what}")
    expect = m.get("expect", "present")
    if expect not in ("present", "absent"):
        p.add(m.at("expect"), f"{what}.expect must be present or absent")
    include = _str_or_list(m["include"], m.at("include"), p, f"{what}.include") if "include" in m else None

    def probe(ctx: HostContext) -> Outcome:
        assert rx is not None
        hits = [f"{ln.where}: {ln.text}" for ln in read_lines(ctx.fs, _paths(ctx, paths), include=include)
                if rx.search(ln.text)]
        if expect == "present":
            return _ok(bool(hits), *(hits[:5] or [f"no line matching /{rx.pattern}/ in {', '.join(paths)}"]))
        return _ok(not hits, *(hits[:5] or [f"no line matching /{rx.pattern}/ in {', '.join(paths)}"]))
    return probe


def _command(m: LDict, p: Problems, what: str) -> Probe:
    from agent.assess.command import run_bounded
    argv = list(str_list(m.get("argv"), m.at("argv"), p, f"{what}.argv"))
    if "argv" in m and not argv:
        p.add(m.at("argv"), f"{what}.argv must name a program")
    timeout = expect_int(m.get("timeout", 10), m.at("timeout"), p, f"{what}.timeout", 1, 300) or 10
    rx = None
    try:
        rx = re.compile(str(m.get("regex", "")))
    except re.error as exc:
        p.add(m.at("regex"), f"{what}.regex: bad regular expression: {exc}")
    expect = m.get("expect", "present")
    if expect not in ("present", "absent"):
        p.add(m.at("expect"), f"{what}.expect must be present or absent")
    rc = expect_int(m["returncode"], m.at("returncode"), p, f"{what}.returncode", 0, 255) if "returncode" in m \
        else None

    def probe(ctx: HostContext) -> Outcome:
        assert rx is not None
        if not ctx.commands:
            return Outcome(NA, (f"{' '.join(argv)}: commands are not run from a scanned root",))
        res = run_bounded(argv, timeout=min(float(timeout), ctx.command_timeout * 3))
        if res.error is not None:
            return _ok(False, res.error)
        if rc is not None and res.returncode != rc:
            return _ok(False, f"{' '.join(argv)}: exit status {res.returncode} (expected {rc})")
        hits = [ln for ln in res.stdout.splitlines() if rx.search(ln)]
        shown = hits[:3] or [res.stdout.strip()[:200] or "(no output)"]
        return _ok(bool(hits) == (expect == "present"), *(f"{' '.join(argv)}: {h}" for h in shown))
    return probe


def _sshd(m: LDict, p: Problems, what: str) -> Probe:
    key = (expect_str(m.get("key"), m.at("key"), p, f"{what}.key") or "").lower()
    test = parse_value_test(m, p, what)

    def probe(ctx: HostContext) -> Outcome:
        settings, _how = ctx.sshd()
        value, where = settings.get(key, (None, f"{key} not set"))
        holds, want = test.check(value)
        return _ok(holds, where + ("" if holds else f" ({want})"))
    return probe


def _pam(m: LDict, p: Problems, what: str) -> Probe:
    from agent.assess.configfile import pam_stack
    services = _str_or_list(m.get("service"), m.at("service"), p, f"{what}.service")
    ptype = m.get("type")
    module = expect_str(m.get("module"), m.at("module"), p, f"{what}.module") or ""
    expect = m.get("expect", "present")
    if expect not in ("present", "absent"):
        p.add(m.at("expect"), f"{what}.expect must be present or absent")
    args: dict[str, ValueTest] = {}
    if "args" in m:
        am = expect_map(m["args"], m.at("args"), p, f"{what}.args", optional=m["args"] if isinstance(m["args"],
                                                                                                     dict) else ())
        for k in am or {}:
            sub = am[k] if am is not None else None
            if isinstance(sub, LDict):
                expect_map(sub, am.at(k) if am is not None else m.where, p, f"{what}.args.{k}", optional=TEST_KEYS)
                args[k] = parse_value_test(sub, p, f"{what}.args.{k}")
            else:
                p.add(am.at(k) if am is not None else m.where, f"{what}.args.{k} must be a mapping of tests")

    def probe(ctx: HostContext) -> Outcome:
        service = next((s for s in services if ctx.fs.exists(f"/etc/pam.d/{s}")), services[0])
        entries = [e for e in pam_stack(ctx.fs, service)
                   if e.module == module and (ptype is None or e.type == ptype)]
        if expect == "absent":
            return _ok(not entries, *([f"{e.where}: {e.text}" for e in entries]
                                      or [f"{module} not in the /etc/pam.d/{service} stack"]))
        if not entries:
            return _ok(False, f"{module} not in the {ptype or ''} stack of /etc/pam.d/{service}")
        e = entries[0]
        for k, t in args.items():
            holds, want = t.check(e.args.get(k))
            if not holds:
                return _ok(False, f"{e.where}: {e.text} ({k}: {want})")
        return _ok(True, f"{e.where}: {e.text}")
    return probe


def _sysctl(m: LDict, p: Problems, what: str) -> Probe:
    key = expect_str(m.get("key"), m.at("key"), p, f"{what}.key") or ""
    test = parse_value_test(m, p, what)

    def probe(ctx: HostContext) -> Outcome:
        from agent.assess.hostdata import sysctl_live
        live = sysctl_live(ctx.fs, key)
        if live is not None:
            return _vt(test, live, "/proc/sys/" + key.replace(".", "/"), key)
        conf = ctx.sysctl_configured().get(key)
        if conf is None:
            return _vt(test, None, f"{key} not set in /etc/sysctl.conf or sysctl.d (no /proc to read the value in "
                                   "force)", key)
        return _vt(test, conf[0], conf[1], key)
    return probe


def _unit(m: LDict, p: Problems, what: str) -> Probe:
    from agent.assess.hostdata import unit_state
    names = _str_or_list(m.get("name"), m.at("name"), p, f"{what}.name")
    test = parse_value_test(m, p, what)

    def probe(ctx: HostContext) -> Outcome:
        outs = []
        for n in names:
            state, where = unit_state(ctx.fs, n)
            outs.append(_vt(test, state, where, f"{n} state"))
        bad = [o for o in outs if o.result == FAIL]
        return Outcome(FAIL, sum((o.evidence for o in bad), ())) if bad else \
            Outcome(PASS, sum((o.evidence for o in outs), ()))
    return probe


def _package(m: LDict, p: Problems, what: str) -> Probe:
    names = _str_or_list(m.get("name"), m.at("name"), p, f"{what}.name")
    installed = expect_bool(m.get("installed", True), m.at("installed"), p, f"{what}.installed")
    vmin = expect_str(m["version_min"], m.at("version_min"), p, f"{what}.version_min") if "version_min" in m \
        else None
    if vmin is not None and not installed:
        p.add(m.at("version_min"), f"{what}.version_min needs installed: true")

    def probe(ctx: HostContext) -> Outcome:
        pk = ctx.packages()
        if vmin is not None:
            from agent.assess.versions import compare
            have = [n for n in names if n in pk]
            if not have:
                return _ok(False, f"none of {', '.join(names)} installed")
            old = [f"{n} {pk[n]} installed, older than {vmin}" for n in have if compare(pk[n], vmin) < 0]
            return _ok(not old, *(old or [f"{n} {pk[n]} installed (at least {vmin})" for n in have]))
        have = [f"{n} {pk[n]} installed" for n in names if n in pk]
        if installed:
            return _ok(bool(have), *(have or [f"none of {', '.join(names)} installed"]))
        return _ok(not have, *(have or [f"none of {', '.join(names)} installed"]))
    return probe


def _listening(m: LDict, p: Problems, what: str) -> Probe:
    ports = m.get("port")
    port_set = {ports} if isinstance(ports, int) else set(ports) if isinstance(ports, list) else None
    if "port" in m and (port_set is None or not all(isinstance(x, int) for x in port_set)):
        p.add(m.at("port"), f"{what}.port must be a port number or a list of them")
    allowed = set(_str_or_list(m["except_process"], m.at("except_process"), p, f"{what}.except_process")) \
        if "except_process" in m else set()
    loopback = expect_bool(m.get("include_loopback", False), m.at("include_loopback"), p,
                           f"{what}.include_loopback")

    def probe(ctx: HostContext) -> Outcome:
        if not ctx.fs.live and not ctx.fs.exists("/proc/net/tcp"):
            return Outcome(NA, ("listening sockets: a scanned root has no running system (see the unit checks)",))
        hits = []
        for s in ctx.listeners():
            if port_set and s.port not in port_set:
                continue
            if not loopback and (s.address.startswith("127.") or s.address == "::1"):
                continue
            if s.process in allowed:
                continue
            hits.append(f"{s.proto} {s.address}:{s.port} held by {s.process or '?'}"
                        f"{f' (pid {s.pid})' if s.pid else ''}")
        return _ok(not hits, *(hits[:10] or ["no listener" + (f" on port {', '.join(map(str, sorted(port_set)))}"
                                                             if port_set else "")]))
    return probe


def _module(m: LDict, p: Problems, what: str) -> Probe:
    names = [n.replace("-", "_") for n in _str_or_list(m.get("name"), m.at("name"), p, f"{what}.name")]
    loaded = expect_bool(m["loaded"], m.at("loaded"), p, f"{what}.loaded") if "loaded" in m else None
    disabled = expect_bool(m["disabled"], m.at("disabled"), p, f"{what}.disabled") if "disabled" in m else None
    if loaded is None and disabled is None:
        p.add(m.where, f"{what} needs loaded: or disabled:")

    def probe(ctx: HostContext) -> Outcome:
        ev: list[str] = []
        ok = True
        if disabled is not None:
            rules = ctx.modprobe()
            for n in names:
                blocks = [w for d, a, w in rules.get(n, []) if d == "blacklist" or
                          (d == "install" and re.search(r"/(true|false)\b", a))]
                if bool(blocks) != disabled:
                    ok = False
                    ev.append(f"{n}: not disabled in modprobe.d (no install {n} /bin/false or blacklist)"
                              if disabled else f"{n}: disabled at {', '.join(blocks)}")
                else:
                    ev.append(f"{n}: disabled at {', '.join(blocks)}" if blocks else f"{n}: not disabled")
        if loaded is not None:
            if not ctx.fs.exists("/proc/modules"):
                why = ("loaded modules: this kernel has no loadable-module support (no /proc/modules)"
                       if ctx.fs.live else "loaded modules: a scanned root has no running kernel")
                if disabled is None:
                    return Outcome(NA, (why,))
                ev.append(why)
            else:
                mods = ctx.modules()
                for n in names:
                    if (n in mods) != loaded:
                        ok = False
                    ev.append(f"{n}: {'loaded (/proc/modules)' if n in mods else 'not loaded'}")
        return _ok(ok, *ev)
    return probe
