"""Assessment policies: YAML files of checks, loaded with every mistake named at ``path:line:col``.

```yaml
policy: dw-l3-host
title: {zh: ..., en: ...}
not_provable:                      # items a host cannot evidence, said so in reports
  - {item: L3-CES1-11, clause: "GB/T 22239-2019 8.1.4.2", reason: {zh: ..., en: ...}}
checks:
  - id: DW-L3-IA-001
    title: {zh: ..., en: ...}
    rationale: {zh: ..., en: ...}
    items: [L3-CES1-01]
    clause: GB/T 22239-2019 8.1.4.1
    applies: {family: [debian, rhel], package: [openssh-server], file: [/etc/ssh/sshd_config]}
    condition: {all: [{sshd: {key: permitemptypasswords, equals: "no"}}]}
```

Later files override earlier ones by check id (a whole check replaces the
earlier one; ``override: {enabled: false}`` turns one off). Shipped policies
live in ``rules/assess/``, local ones in ``/etc/dutywatch/assess.d/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.assess.accountprobes import _accounts, _group
from agent.assess.probes import (
    Probe,
    _command,
    _config,
    _file,
    _lines,
    _listening,
    _module,
    _package,
    _pam,
    _sshd,
    _sysctl,
    _unit,
)
from agent.errors import LoadError, LoadErrors, Location, Problems
from agent.schema import expect_bool, expect_list, expect_map, expect_str, str_list
from agent.yamlsrc import LDict, LList, load_file, where_of

PROBES: dict[str, Callable[[LDict, Problems, str], Probe]] = {
    "file": _file, "config": _config, "lines": _lines, "command": _command, "sshd": _sshd, "pam": _pam,
    "sysctl": _sysctl, "unit": _unit, "package": _package, "listening": _listening, "module": _module,
    "accounts": _accounts, "group": _group,
}
PROBE_KEYS: dict[str, tuple[str, ...]] = {
    "file": ("path", "exists", "mode_max", "owner", "group"),
    "config": ("path", "key", "separator", "take", "include", "default"),
    "lines": ("path", "regex", "expect", "include"),
    "command": ("argv", "timeout", "regex", "expect", "returncode"),
    "sshd": ("key",), "pam": ("service", "type", "module", "expect", "args"), "sysctl": ("key",),
    "unit": ("name",), "package": ("name", "installed", "version_min"),
    "listening": ("port", "except_process", "include_loopback"), "module": ("name", "loaded", "disabled"),
    "accounts": ("where", "except", "expect", "duplicate"), "group": ("name", "allowed"),
}
_REQUIRED = {"file": ("path",), "config": ("path", "key"), "lines": ("path", "regex"), "command": ("argv",),
             "sshd": ("key",), "pam": ("service", "module"), "sysctl": ("key",), "unit": ("name",),
             "package": ("name",), "module": ("name",), "group": ("name",)}
_VALUE_TESTED = {"config", "sshd", "sysctl", "unit"}
ITEM = re.compile(r"^L3-CES1-(0[1-9]|1[0-9]|2[0-4])$")
FAMILIES = ("debian", "rhel")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class Text:
    """A zh/en pair."""

    zh: str
    en: str


@dataclass(frozen=True)
class Condition:
    """``all``/``any``/``none`` of sub-conditions, or one probe."""

    op: str  # all | any | none | probe
    parts: tuple[Condition, ...] = ()
    probe: Probe | None = None
    name: str = ""


@dataclass(frozen=True)
class Check:
    """One check: what it proves, when it applies, and its condition."""

    id: str
    title: Text
    rationale: Text
    items: tuple[str, ...]
    clause: str
    condition: Condition
    families: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    policy: str = ""
    where: Location = field(default_factory=lambda: Location(""))
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Unprovable:
    """An item a host cannot evidence, and why."""

    item: str
    clause: str
    reason: Text


@dataclass
class PolicySet:
    """The checks in force after overrides, and what the policies say cannot be proven."""

    checks: list[Check] = field(default_factory=list)
    unprovable: list[Unprovable] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _text(v: object, where: Location, p: Problems, what: str) -> Text:
    m = expect_map(v, where, p, what, required=("zh", "en"))
    if m is None:
        return Text("", "")
    return Text(expect_str(m.get("zh"), m.at("zh"), p, f"{what}.zh") or "",
                expect_str(m.get("en"), m.at("en"), p, f"{what}.en") or "")


def parse_condition(v: object, where: Location, p: Problems, what: str, depth: int = 0) -> Condition:
    """A condition mapping with exactly one key: all, any, none, or a probe type."""
    if depth > 16:
        p.add(where, f"{what} nested too deeply")
        return Condition("all")
    if not isinstance(v, LDict) or len(v) != 1:
        p.add(where_of(v, where), f"{what} must be a mapping with one key: all, any, none or a probe "
                                  f"({', '.join(PROBES)})")
        return Condition("all")
    key = next(iter(v))
    if key in ("all", "any", "none"):
        seq = expect_list(v[key], v.at(key), p, f"{what}.{key}")
        if seq is not None and not seq:
            p.add(v.at(key), f"{what}.{key} must not be empty")
        parts = tuple(parse_condition(x, seq.at(i), p, f"{what}.{key}[{i}]", depth + 1)
                      for i, x in enumerate(seq)) if seq is not None else ()
        return Condition(key, parts)
    if key not in PROBES:
        p.add(v.key_at(key), f"unknown probe {key!r} in {what} (expected all, any, none or one of "
                             f"{', '.join(PROBES)})")
        return Condition("all")
    from agent.assess.valuetest import TEST_KEYS
    allowed = PROBE_KEYS[key] + (TEST_KEYS if key in _VALUE_TESTED else ())
    m = expect_map(v[key], v.at(key), p, f"{what}.{key}", required=_REQUIRED.get(key, ()), optional=allowed)
    if m is None:
        return Condition("all")
    n = len(p)
    probe = PROBES[key](m, p, f"{what}.{key}")
    if key in _VALUE_TESTED and len(p) == n and not any(t in m for t in TEST_KEYS):
        p.add(m.where, f"{what}.{key} needs a test: {', '.join(TEST_KEYS)}")
    return Condition("probe", probe=probe, name=key)


_CHECK_KEYS = ("id", "title", "rationale", "items", "clause", "applies", "condition", "override")


def _check(v: object, where: Location, p: Problems, policy: str) -> Check | tuple[str, bool, Location] | None:
    m = expect_map(v, where, p, "check", required=("id",), optional=_CHECK_KEYS)
    if m is None:
        return None
    cid = expect_str(m.get("id"), m.at("id"), p, "check id") or ""
    if cid and not _ID.match(cid):
        p.add(m.at("id"), f"check id {cid!r} must be letters, digits, '.', '_' or '-'")
    if "override" in m:
        o = expect_map(m["override"], m.at("override"), p, "override", required=("enabled",))
        extra = [k for k in m if k not in ("id", "override")]
        if extra:
            p.add(m.key_at(extra[0]), "an override names only id and override")
        enabled = expect_bool(o.get("enabled") if o else None, o.at("enabled") if o else m.where, p,
                              "override.enabled")
        return (cid, bool(enabled), m.where)
    for k in ("title", "rationale", "items", "clause", "condition"):
        if k not in m:
            p.add(m.where, f"missing required key {k!r} in check {cid}")
    title = _text(m.get("title"), m.at("title"), p, f"{cid}.title")
    rationale = _text(m.get("rationale"), m.at("rationale"), p, f"{cid}.rationale")
    items = str_list(m.get("items"), m.at("items"), p, f"{cid}.items") if "items" in m else ()
    seq = m.get("items")
    for i, it in enumerate(items):
        if not ITEM.match(it):
            p.add(seq.at(i) if isinstance(seq, LList) else m.at("items"),
                  f"{cid}: {it!r} is not a level-3 computing-environment item (L3-CES1-01 to L3-CES1-24)")
    clause = expect_str(m.get("clause"), m.at("clause"), p, f"{cid}.clause") or "" if "clause" in m else ""
    fams: tuple[str, ...] = ()
    pkgs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    if "applies" in m:
        a = expect_map(m["applies"], m.at("applies"), p, f"{cid}.applies", optional=("family", "package", "file"))
        if a is not None:
            fams = str_list(a["family"], a.at("family"), p, f"{cid}.applies.family") if "family" in a else ()
            for f in fams:
                if f not in FAMILIES:
                    p.add(a.at("family"), f"{cid}.applies.family: {f!r} is not one of {', '.join(FAMILIES)}")
            pkgs = str_list(a["package"], a.at("package"), p, f"{cid}.applies.package") if "package" in a else ()
            files = str_list(a["file"], a.at("file"), p, f"{cid}.applies.file") if "file" in a else ()
    cond = parse_condition(m.get("condition"), m.at("condition"), p, f"{cid}.condition") if "condition" in m \
        else Condition("all")
    return Check(cid, title, rationale, items, clause, cond, fams, pkgs, files, policy, m.where)


def load_policy_file(path: Path, p: Problems, out: PolicySet, index: dict[str, int]) -> None:
    """Add one policy file's checks to ``out``, later ids replacing earlier ones."""
    try:
        doc = load_file(path)
    except LoadError as exc:
        p.append(exc)
        return
    top = expect_map(doc, Location(str(path), 1, 1), p, "policy", required=("policy",),
                     optional=("title", "checks", "not_provable"))
    if top is None:
        return
    name = expect_str(top.get("policy"), top.at("policy"), p, "policy") or path.stem
    if "title" in top:
        _text(top["title"], top.at("title"), p, "policy title")
    out.files.append(str(path))
    if name not in out.names:
        out.names.append(name)
    for u in (expect_list(top["not_provable"], top.at("not_provable"), p, "not_provable") or ()
              if "not_provable" in top else ()):
        um = expect_map(u, top.where, p, "not_provable entry", required=("item", "clause", "reason"))
        if um is not None:
            item = expect_str(um.get("item"), um.at("item"), p, "not_provable.item") or ""
            if item and not ITEM.match(item):
                p.add(um.at("item"), f"{item!r} is not a level-3 computing-environment item")
            out.unprovable.append(Unprovable(item, expect_str(um.get("clause"), um.at("clause"), p,
                                                              "not_provable.clause") or "",
                                             _text(um.get("reason"), um.at("reason"), p, "not_provable.reason")))
    seen: dict[str, Location] = {}
    seq = expect_list(top["checks"], top.at("checks"), p, "checks") if "checks" in top else None
    for i, v in enumerate(seq or ()):
        c = _check(v, seq.at(i) if seq is not None else top.where, p, name)
        if c is None:
            continue
        cid = c[0] if isinstance(c, tuple) else c.id
        loc = c[2] if isinstance(c, tuple) else c.where
        if cid in seen:
            p.add(loc, f"duplicate check id {cid!r} (first at {seen[cid]})")
            continue
        seen[cid] = loc
        if isinstance(c, tuple):
            if cid not in index:
                p.add(loc, f"override of unknown check {cid!r}")
                continue
            from dataclasses import replace
            out.checks[index[cid]] = replace(out.checks[index[cid]], enabled=c[1])
        elif cid in index:
            out.checks[index[cid]] = c
        else:
            index[cid] = len(out.checks)
            out.checks.append(c)


def policy_files(entries: Iterable[Path], optional: Iterable[Path] = ()) -> list[Path]:
    """The YAML files of files and directories (a directory's ``*.yaml``, in name order)."""
    opt = set(optional)
    files: list[Path] = []
    for e in entries:
        if e.is_dir():
            files += sorted(e.glob("*.yaml"))
        elif e.exists() or e not in opt:
            files.append(e)
    return files


def load_policies(entries: Iterable[Path], optional: Iterable[Path] = ()) -> PolicySet:
    """Load every policy; raise LoadErrors naming each mistake (one bad file fails the load)."""
    p = Problems()
    out = PolicySet()
    index: dict[str, int] = {}
    for f in policy_files(entries, optional):
        load_policy_file(f, p, out, index)
    if not out.files and not p:
        p.add(Location(", ".join(str(e) for e in entries) or "(none)"), "no assessment policy found")
    p.raise_if_any()
    return out


def shipped_policy_dir() -> Path:
    """``rules/assess`` beside the shipped rule packs."""
    from agent.paths import shipped_rules_dir
    return shipped_rules_dir() / "assess"


LOCAL_POLICIES = Path("/etc/dutywatch/assess.d")


def policy_entries(configured: tuple[Path, ...] | None) -> tuple[list[Path], tuple[Path, ...]]:
    """The policy files or directories to load and which may be absent: the shipped ones and assess.d by default."""
    if configured is not None:
        return list(configured), ()
    return [shipped_policy_dir(), LOCAL_POLICIES], (LOCAL_POLICIES,)

__all__ = ["Check", "Condition", "LoadErrors", "PolicySet", "Text", "Unprovable", "load_policies"]
