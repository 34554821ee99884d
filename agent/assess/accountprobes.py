"""Probes of accounts and groups: ``/etc/passwd`` joined with ``/etc/shadow``, and ``/etc/group``."""

from __future__ import annotations

from agent.assess.context import HostContext
from agent.assess.hostdata import Account
from agent.assess.probes import FAIL, PASS, Outcome, Probe, _str_or_list
from agent.errors import Problems
from agent.schema import expect_int, expect_map
from agent.yamlsrc import LDict

_WHERE = ("uid", "uid_min", "uid_max", "password", "shell", "max_days_over", "name",
          "not_name")
_PW_STATES = ("empty", "locked", "set", "unknown")


def _accounts(m: LDict, p: Problems, what: str) -> Probe:
    """Accounts selected by ``where`` less ``except``; ``expect: none`` fails on any, ``some`` on none."""
    w = expect_map(m["where"], m.at("where"), p, f"{what}.where", optional=_WHERE) if "where" in m else None
    if w is None:
        w = LDict()
        w.where, w.key_where, w.value_where = m.where, {}, {}
    uid = expect_int(w["uid"], w.at("uid"), p, f"{what}.where.uid", 0) if "uid" in w else None
    uid_min = expect_int(w["uid_min"], w.at("uid_min"), p, f"{what}.where.uid_min", 0) if "uid_min" in w else None
    uid_max = expect_int(w["uid_max"], w.at("uid_max"), p, f"{what}.where.uid_max", 0) if "uid_max" in w else None
    pw = _str_or_list(w["password"], w.at("password"), p, f"{what}.where.password") if "password" in w else ()
    for s in pw:
        if s not in _PW_STATES:
            p.add(w.at("password"), f"{what}.where.password must be among {', '.join(_PW_STATES)}, not {s!r}")
    shell = w.get("shell")
    if shell is not None and shell not in ("login", "nologin"):
        p.add(w.at("shell"), f"{what}.where.shell must be login or nologin")
    over = expect_int(w["max_days_over"], w.at("max_days_over"), p, f"{what}.where.max_days_over", 0) \
        if "max_days_over" in w else None
    names = set(_str_or_list(w["name"], w.at("name"), p, f"{what}.where.name")) if "name" in w else None
    not_names = set(_str_or_list(w["not_name"], w.at("not_name"), p, f"{what}.where.not_name")) \
        if "not_name" in w else set()
    excepted = set(_str_or_list(m["except"], m.at("except"), p, f"{what}.except")) if "except" in m else set()
    dup = m.get("duplicate")
    if dup is not None and dup not in ("uid", "name"):
        p.add(m.at("duplicate"), f"{what}.duplicate must be uid or name")
    expect = m.get("expect", "none")
    if expect not in ("none", "some"):
        p.add(m.at("expect"), f"{what}.expect must be none or some")

    def selected(a: Account) -> bool:
        if a.name in excepted or a.name in not_names or (names is not None and a.name not in names):
            return False
        if uid is not None and a.uid != uid:
            return False
        if uid_min is not None and a.uid < uid_min:
            return False
        if uid_max is not None and a.uid > uid_max:
            return False
        if pw and a.password_state not in pw:
            return False
        if shell is not None and a.login_shell != (shell == "login"):
            return False
        # an unset maximum (empty field, 99999) never forces a change: it is over any limit
        return over is None or a.max_days is None or a.max_days > over

    def probe(ctx: HostContext) -> Outcome:
        hits = [a for a in ctx.accounts() if selected(a)]
        if dup is not None:
            seen: dict[object, int] = {}
            for a in hits:
                key = a.uid if dup == "uid" else a.name
                seen[key] = seen.get(key, 0) + 1
            hits = [a for a in hits if seen[a.uid if dup == "uid" else a.name] > 1]
        shown = [f"/etc/passwd:{a.line}: {a.name} (uid {a.uid}, shell {a.shell}, password {a.password_state}"
                 f"{'' if a.max_days is None else f', max days {a.max_days}'})" for a in hits[:10]]
        if expect == "none":
            return Outcome(PASS, ("no such account",)) if not hits else Outcome(FAIL, tuple(shown))
        return Outcome(PASS, tuple(shown)) if hits else Outcome(FAIL, ("no such account",))
    return probe


def _group(m: LDict, p: Problems, what: str) -> Probe:
    """A group's members other than ``allowed``: ``expect: none`` fails on any; an absent group has none."""
    names = _str_or_list(m.get("name"), m.at("name"), p, f"{what}.name")
    allowed = set(_str_or_list(m["allowed"], m.at("allowed"), p, f"{what}.allowed")) if "allowed" in m else set()

    def probe(ctx: HostContext) -> Outcome:
        by_gid: dict[int, list[str]] = {}
        for a in ctx.accounts():
            by_gid.setdefault(a.gid, []).append(a.name)
        bad, seen = [], []
        for g in ctx.groups():
            if g.name in names:
                members = sorted(set(g.members) | set(by_gid.get(g.gid, [])) - {g.name})
                extra = [x for x in members if x not in allowed]
                seen.append(f"/etc/group:{g.line}: {g.name}: {', '.join(members) or 'no members'}")
                if extra:
                    bad.append(f"/etc/group:{g.line}: {g.name} has {', '.join(extra)}")
        if bad:
            return Outcome(FAIL, tuple(bad))
        return Outcome(PASS, tuple(seen or [f"no group {', '.join(names)}"]))
    return probe
