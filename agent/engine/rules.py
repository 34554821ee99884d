"""Rule packs: YAML files turned into typed, compiled rules (DESIGN §5).

Loading is three passes so that later files can override earlier ones:
read every file (each problem recorded with its place), merge lists, macros
and rules by name and id in file order, then compile every enabled rule.
Any problem fails the whole load.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.enforce.spec import RuleEnforce, parse_rule_enforce
from agent.engine.expr import FUNCTIONS, Predicate, Scope, compile_when
from agent.engine.message import Template, compile_template
from agent.engine.sigma import PACK as SIGMA_PACK
from agent.engine.sigma import is_sigma, translate, unsupported_only
from agent.engine.window import Threshold, Window, counted
from agent.errors import LoadError, LoadErrors, Location, Problems
from agent.events import FIELDS, GROUPS
from agent.schema import expect_bool, expect_int, expect_list, expect_map, expect_str, str_list
from agent.yamlsrc import LDict, LList, load_file, where_of

SEVERITIES = ("critical", "high", "medium", "low", "info")
SEVERITY_RANK = {s: len(SEVERITIES) - i for i, s in enumerate(SEVERITIES)}
ACTIONS = ("alert", "audit", "block")
ROLES = ("operator", "host.custodian", "host.unit", "host.department", "file.owner_unit", "media.holder")
DEFAULT_ACCOUNTABLE = ("operator", "host.unit", "host.department")
_RULE_KEYS = ("id", "title", "when", "severity", "action", "accountable", "controls", "tags",
              "message", "enabled", "override", "description", "references", "threshold", "enforce")
RESERVED_NAMES = frozenset((*GROUPS, *FUNCTIONS, "None", "True", "False", "and", "or", "not", "in"))
_OVERRIDABLE = ("enabled", "severity", "action", "accountable", "controls", "tags", "message", "title",
                "when", "threshold", "enforce")


@dataclass(frozen=True, slots=True)
class Text:
    """A user-facing text in Chinese and English."""

    zh: str
    en: str

    def get(self, lang: str) -> str:
        """The text in ``lang`` (zh or en)."""
        return self.zh if lang == "zh" else self.en


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """A compiled rule, ready to test events. Compared and hashed by identity (cheap in indexes)."""

    id: str
    pack: str
    title: Text
    when: str
    severity: str
    action: str
    accountable: tuple[str, ...]
    controls: tuple[str, ...]
    tags: tuple[str, ...]
    message_zh: Template
    message_en: Template
    source: str
    where: Location
    test: Predicate
    kinds: frozenset[str]
    triggers: tuple[Any, ...] | None = None
    window: Window | None = None  # a count-over-window rule's state (``threshold:``)
    enforce: RuleEnforce | None = None  # what an ``action: block`` rule enforces
    tree: Any = None  # the parsed ``when`` of a rule on the host group, to compile again for one host (ast.expr)


@dataclass
class _Raw:
    """A rule as read, before merging and compiling."""

    id: str
    pack: str
    source: str
    where: Location
    values: dict[str, Any]
    value_where: dict[str, Location]
    enabled: bool = True


@dataclass(frozen=True)
class RuleSet:
    """Every enabled rule of a load, with the files it came from."""

    rules: tuple[Rule, ...]
    files: tuple[str, ...]
    disabled: tuple[str, ...] = ()
    lists: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # Sigma rules left out under ``sigma: {skip_unsupported: true}``, each with its place and reason.
    skipped: tuple[LoadError, ...] = ()
    macros: dict[str, tuple[str, Location]] = field(default_factory=dict)

    def by_id(self) -> dict[str, Rule]:
        """Rules keyed by id."""
        return {r.id: r for r in self.rules}


# Subfolders of a rule directory that hold other things than rules: samples and their
# fixtures (rules/tests/), assessment policies (rules/assess/).
NOT_RULE_DIRS = frozenset({"tests", "fixtures", "assess"})


def rule_files_under(top: Path) -> list[Path]:
    """The ``*.yaml``/``*.yml`` files below a directory, recursively, in path order.

    SigmaHQ keeps each category in a subfolder (``rules/linux/process_creation/...``), so a
    folder is read with its subfolders; hidden folders and those named in ``NOT_RULE_DIRS`` are
    not rules and are passed over.
    """
    out: list[Path] = []
    for sub in sorted(top.iterdir()):
        if sub.is_dir():
            if not sub.name.startswith(".") and sub.name not in NOT_RULE_DIRS:
                out.extend(rule_files_under(sub))
        elif sub.suffix in (".yaml", ".yml") and sub.is_file():
            out.append(sub)
    return out


def expand_paths(paths: Iterable[str | Path], problems: Problems,
                 optional: Iterable[str | Path] = ()) -> list[Path]:
    """Files named, and the rule files below directories named (recursively, in path order).

    A directory that holds files or folders but no rule file at any depth is an error: such a
    rule path is a mistake (a wrong folder), not an empty rule set. An empty directory is a
    drop-in folder waiting for files (``/etc/dutywatch/rules.d``) and is fine.
    """
    opt = {str(p) for p in optional}
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = rule_files_under(p)
            if not found and str(raw) not in opt and any(p.iterdir()):
                problems.add(Location(str(p)), "no rule files (*.yaml, *.yml) in this folder or below it")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        elif str(raw) not in opt:
            problems.add(Location(str(p)), "rule path does not exist")
    return out


class _Loader:
    def __init__(self, sigma_skip_unsupported: bool = False) -> None:
        self.sigma_skip_unsupported = sigma_skip_unsupported
        self.skipped: list[LoadError] = []
        self.problems = Problems()
        self.lists: dict[str, tuple[Any, ...]] = {}
        self.macros: dict[str, tuple[str, Location]] = {}
        self.rules: dict[str, _Raw] = {}
        self.files: list[str] = []

    def read(self, path: Path) -> None:
        try:
            doc = load_file(path)
        except LoadError as exc:
            self.problems.append(exc)
            return
        self.files.append(str(path))
        if is_sigma(doc):  # told apart by content, not by name or place
            self.sigma(doc, str(path))
            return
        self.pack(doc, str(path))

    def sigma(self, doc: LDict, path: str) -> None:
        """A Sigma rule file (agent/engine/sigma.py): translated here, merged and compiled like pack rules."""
        try:
            s = translate(doc, path)
        except LoadErrors as exc:
            if self.sigma_skip_unsupported and unsupported_only(exc):
                self.skipped.extend(exc.errors)
            else:
                self.problems.extend(exc.errors)
            return
        self.rules[s.id] = _Raw(s.id, SIGMA_PACK, path, s.where, s.values, s.value_where)

    def pack(self, doc: Any, path: str) -> None:
        p = self.problems
        top = expect_map(doc, Location(path, 1, 1), p, "rule pack", required=("pack",),
                         optional=("title", "description", "lists", "macros", "rules"))
        if top is None:
            return
        pack = expect_str(top.get("pack"), top.at("pack"), p, "pack") or "?"
        lists = self.names(top, "lists")
        for name, value in lists.items():
            self.list_entry(name, value, lists.at(name))
        macros = self.names(top, "macros")
        for name, value in macros.items():
            if expect_str(value, macros.at(name), p, f"macro {name}") is not None:
                self.macros[name] = (value, macros.at(name))
        seen: set[str] = set()
        rules = expect_list(top.get("rules", LList()), top.at("rules"), p, "rules") if "rules" in top else None
        for i, item in enumerate(rules or ()):
            self.rule(item, rules.at(i) if rules else top.where, pack, path, seen)

    def names(self, top: LDict, key: str) -> LDict:
        """A ``lists:`` or ``macros:`` mapping whose keys must be plain names."""
        value = top.get(key)
        if key not in top or value is None:
            return _empty_map(top)
        if not isinstance(value, LDict):
            self.problems.add(top.at(key), f"{key} must be a mapping of names")
            return _empty_map(top)
        for name in value:
            if not name.isidentifier() or name in RESERVED_NAMES:
                self.problems.add(value.key_at(name), f"{name!r} cannot name a {key[:-1]}: use a plain "
                                  "identifier that is not a field group, function or keyword")
        return value

    def list_entry(self, name: str, value: Any, where: Location) -> None:
        if isinstance(value, LDict):
            m = expect_map(value, where, self.problems, f"list {name}", required=("append",))
            items = expect_list(m.get("append") if m else None, where, self.problems, f"list {name}.append")
            if name not in self.lists:
                self.problems.add(where, f"cannot append to unknown list {name!r}")
                return
            self.lists[name] = self.lists[name] + tuple(_scalars(items, where, self.problems, name))
            return
        seq = expect_list(value, where, self.problems, f"list {name}")
        self.lists[name] = tuple(_scalars(seq, where, self.problems, name))

    def rule(self, item: Any, where: Location, pack: str, path: str, seen: set[str]) -> None:
        p = self.problems
        m = expect_map(item, where, p, "rule", required=("id",), optional=_RULE_KEYS)
        if m is None:
            return
        rid = expect_str(m.get("id"), m.at("id"), p, "rule id")
        if rid is None:
            return
        if rid in seen:
            p.add(m.at("id"), f"duplicate rule id {rid!r} in this file")
            return
        seen.add(rid)
        if "override" in m:
            self.override(rid, m)
            return
        for key in ("title", "when", "severity", "action", "message"):
            if key not in m:
                p.add(m.where, f"rule {rid}: missing required key {key!r}")
        enabled = m.get("enabled", True)
        if expect_bool(enabled, m.at("enabled"), p, "enabled") is None:
            enabled = True
        self.rules[rid] = _Raw(rid, pack, path, m.where, dict(m), dict(m.value_where), bool(enabled))

    def override(self, rid: str, m: LDict) -> None:
        p = self.problems
        base = self.rules.get(rid)
        if base is None:
            p.add(m.at("id"), f"override of unknown rule {rid!r} (it must be defined in an earlier file)")
            return
        o = expect_map(m["override"], m.at("override"), p, f"override of {rid}", optional=_OVERRIDABLE)
        for key, value in (o or {}).items():
            if key == "enabled":
                if expect_bool(value, o.at(key), p, "enabled") is not None:  # type: ignore[union-attr]
                    base.enabled = bool(value)
                continue
            base.values[key] = value
            base.value_where[key] = o.at(key)  # type: ignore[union-attr]

    def compile(self) -> RuleSet:
        scope = Scope(self.lists, self.macros)
        compiled: list[Rule] = []
        disabled: list[str] = []
        for raw in self.rules.values():
            if not raw.enabled:
                disabled.append(raw.id)
                continue
            try:
                compiled.append(self.compile_rule(raw, scope))
            except LoadError as exc:
                self.problems.append(exc)
            except LoadErrors as exc:
                self.problems.extend(exc.errors)
        for name, (text, where) in self.macros.items():
            try:  # an unused macro must still be valid
                compile_when(text, where, scope, f"macro {name}")
            except LoadError as exc:
                if exc not in self.problems and str(exc) not in {str(x) for x in self.problems}:
                    self.problems.append(exc)
        self.problems.raise_if_any()
        return RuleSet(tuple(compiled), tuple(self.files), tuple(disabled), dict(self.lists), tuple(self.skipped),
                       dict(self.macros))

    def compile_rule(self, raw: _Raw, scope: Scope) -> Rule:
        v, w = raw.values, raw.value_where
        local = Problems()

        def at(key: str) -> Location:
            return w.get(key, raw.where)

        title = _text(v.get("title"), at("title"), local, "title")
        severity = v.get("severity")
        if severity not in SEVERITIES:
            local.add(at("severity"), f"severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        action = v.get("action")
        if action not in ACTIONS:
            local.add(at("action"), f"action must be alert, audit or block, not {action!r}")
        accountable = str_list(v["accountable"], at("accountable"), local, "accountable") \
            if "accountable" in v else DEFAULT_ACCOUNTABLE
        for i, role in enumerate(accountable):
            if role not in ROLES:
                seq = v["accountable"]
                local.add(where_of(seq[i], at("accountable")) if isinstance(seq, LList) else at("accountable"),
                          f"unknown accountable role {role!r} (expected one of {', '.join(ROLES)})")
        controls = str_list(v["controls"], at("controls"), local, "controls") if "controls" in v else ()
        tags = str_list(v["tags"], at("tags"), local, "tags") if "tags" in v else ()
        msg = _text(v.get("message"), at("message"), local, "message")
        templates = []
        for lang in ("zh", "en"):
            try:
                templates.append(compile_template(msg.get(lang), _lang_at(v.get("message"), lang,
                                                                          at("message"))))
            except LoadError as exc:
                local.append(exc)
                templates.append(Template(((msg.get(lang), None),)))
        when = v.get("when")
        if not isinstance(when, str):
            local.add(at("when"), "when must be a condition written as a string")
            local.raise_if_any()
        c = None
        try:
            c = compile_when(str(when) if not isinstance(when, str) else when, at("when"), scope, raw.id)
        except LoadError as exc:
            local.append(exc)
        threshold = _threshold(v["threshold"], at("threshold"), local) if "threshold" in v else None
        enforce = None
        if action == "block" and c is not None:
            enforce = parse_rule_enforce(v.get("enforce"), at("enforce") if "enforce" in v else at("action"), local,
                                         c.kinds)
        elif "enforce" in v:
            local.add(at("enforce"), "enforce applies to action: block rules only")
        local.raise_if_any()
        assert c is not None
        test, window = c.test, None
        if threshold is not None:
            window = Window(threshold)
            test = counted(c.test, window)
        return Rule(raw.id, raw.pack, title, str(when), str(severity), str(action), tuple(accountable),
                    controls, tags, templates[0], templates[1], raw.source, raw.where, test, c.kinds, c.triggers,
                    window, enforce, c.tree)


def _threshold(value: Any, where: Location, problems: Problems) -> Threshold | None:
    """``threshold: {count: N, within: DURATION, by: [field, ...]}``, checked."""
    from agent.config import parse_duration

    m = expect_map(value, where, problems, "threshold", required=("count", "within"), optional=("by",))
    if m is None:
        return None
    count = expect_int(m.get("count"), m.at("count"), problems, "threshold count", minimum=2, maximum=100000)
    try:
        within = parse_duration(m.get("within"))
        if within <= 0:
            raise ValueError("threshold within must be more than zero")
    except ValueError as exc:
        problems.add(m.at("within"), str(exc))
        return None
    by = str_list(m["by"], m.at("by"), problems, "threshold by") if "by" in m else ()
    for i, name in enumerate(by):
        if name not in FIELDS:
            seq = m["by"]
            problems.add(where_of(seq[i], m.at("by")) if isinstance(seq, LList) else m.at("by"),
                         f"threshold by: unknown field {name!r}")
    if count is None:
        return None
    return Threshold(count, within, tuple(by))


def _empty_map(parent: LDict) -> LDict:
    m = LDict()
    m.where, m.key_where, m.value_where = parent.where, {}, {}
    return m


def _scalars(seq: LList | None, where: Location, problems: Problems, name: str) -> list[Any]:
    out = []
    for i, v in enumerate(seq or ()):
        if isinstance(v, (LDict, LList)) or v is None:
            problems.add(seq.at(i) if seq else where, f"list {name} may hold only strings and numbers")
            continue
        out.append(str(v) if isinstance(v, str) else v)
    return out


def _text(value: Any, where: Location, problems: Problems, what: str) -> Text:
    m = expect_map(value, where, problems, what, required=("zh", "en"))
    if m is None:
        return Text("", "")
    zh = expect_str(m.get("zh"), m.at("zh"), problems, f"{what}.zh") or ""
    en = expect_str(m.get("en"), m.at("en"), problems, f"{what}.en") or ""
    return Text(zh, en)


def _lang_at(value: Any, lang: str, default: Location) -> Location:
    return value.at(lang) if isinstance(value, LDict) else default


def load_rules(paths: Sequence[str | Path], optional: Iterable[str | Path] = (), *,
               sigma_skip_unsupported: bool = False) -> RuleSet:
    """Load, merge and compile rule files and directories; raise LoadErrors on any problem.

    With ``sigma_skip_unsupported`` (config ``sigma: {skip_unsupported: true}``), a Sigma rule that
    only uses constructs DutyWatch cannot evaluate is left out and listed in ``RuleSet.skipped``
    instead of failing the load; malformed Sigma rules still fail it.
    """
    loader = _Loader(sigma_skip_unsupported)
    for path in expand_paths(paths, loader.problems, optional):
        loader.read(path)
    return loader.compile()


def with_severity(rule: Rule, severity: str) -> Rule:
    """A copy of a rule with another severity (used by tooling and tests)."""
    return replace(rule, severity=severity)
