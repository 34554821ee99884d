"""Evaluate events against a compiled rule set; every matching rule fires.

Rules are bucketed by the event kinds their condition can match, so an
event meets only its candidate rules. Inside a bucket, a rule with a
trigger set (a necessary condition: field values, path prefixes or
suffixes, required substrings, or only that a field is set) is reached
through per-field dictionaries and one combined substring scan, so an
event costs a few lookups however many rules there are; only rules that
pass their trigger are evaluated. Each bucket's lookup and tests are
generated as one function, with what each field value finds remembered.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from agent.engine.expr import Predicate, literal_search
from agent.engine.rules import Rule, RuleSet
from agent.events import KINDS, Event
from agent.textsafe import CAP_BYTES, cap


@dataclass(frozen=True, slots=True)
class Finding:
    """An event matched by a rule, with its attribution (the event carries it)."""

    rule: Rule
    event: Event
    # The registry's people, account -> display name: the custodian and media holder are named by it (the
    # event keeps their accounts, which rules compare).
    names: Mapping[str, str] | None = None

    def _person(self, account: str | None) -> str | None:
        if account is None or not self.names:
            return account
        return self.names.get(account) or account

    def message(self, lang: str) -> str:
        """The rule's message for this event in ``lang`` (zh or en)."""
        t = self.rule.message_zh if lang == "zh" else self.rule.message_en
        return t.render(self.event, lang)

    def accountable(self) -> dict[str, str | None]:
        """Who answers: the operator, the host's custodian, unit and department."""
        op = self.event.operator
        h = self.event.host
        who = op.name or op.account
        out = {"operator": who, "custodian": self._person(h.custodian), "unit": h.unit, "department": h.department}
        if h.custodian is not None and out["custodian"] != h.custodian:
            out["custodian_account"] = h.custodian
        return out

    def answer(self) -> list[dict[str, str | None]]:
        """Every role the rule holds to account, in its order, by name: ``{role, name, unit}``.

        ``unit`` is the person's own unit for the operator (not the host's),
        the host's unit for its custodian, and None for a unit or department;
        a person also carries ``account`` when it differs from the name.
        """
        e = self.event
        op, h = e.operator, e.host
        out: list[dict[str, str | None]] = []
        for role in self.rule.accountable:
            if role == "operator":
                out.append(_with_account({"role": role, "name": op.name or op.account, "unit": op.unit},
                                         op.account))
            elif role == "host.custodian":
                out.append(_with_account({"role": role, "name": self._person(h.custodian), "unit": h.unit},
                                         h.custodian))
            elif role == "host.unit":
                out.append({"role": role, "name": h.unit, "unit": None})
            elif role == "host.department":
                out.append({"role": role, "name": h.department, "unit": None})
            elif role == "file.owner_unit":
                out.append({"role": role, "name": e.file.owner_unit, "unit": None})
            elif role == "media.holder":
                out.append(_with_account({"role": role, "name": self._person(e.media.holder), "unit": None},
                                         e.media.holder))
        return out

    def to_record(self) -> dict[str, Any]:
        """The journal record of this finding (DESIGN §7 ``events --format json``).

        Unbounded text (a command line, a path) is capped at 4 KiB; the record's
        ``truncated`` names each capped field with its full length and SHA-256.
        """
        r, e = self.rule, self.event
        event, truncated = cap_fields(e.to_dict())
        record = {
            "type": "finding",
            "time": e.time,
            "host": e.host.id,
            "rule": r.id,
            "pack": r.pack,
            "severity": r.severity,
            "action": r.action,
            "title": {"zh": r.title.zh, "en": r.title.en},
            "message": {"zh": self.message("zh"), "en": self.message("en")},
            "event": event,
            "accountable": self.accountable(),
            "roles": list(r.accountable),
            "answer": self.answer(),
            "controls": list(r.controls),
            "tags": list(r.tags),
        }
        if truncated:
            record["truncated"] = truncated
        if r.enforce is not None:  # what the rule asks; the enforcer turns it into ``enforcement``
            record["enforce"] = {"kind": r.enforce.kind, "scope": r.enforce.scope, "ttl": r.enforce.ttl}
        return record


def _with_account(entry: dict[str, str | None], account: str | None) -> dict[str, str | None]:
    """A person's answer entry with the account beside the name, when the two differ."""
    if account is not None and entry.get("name") not in (None, account):
        entry["account"] = account
    return entry


def cap_fields(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The event dict with every string over 4 KiB capped, and ``{field: {length, sha256}}`` of those."""
    truncated: dict[str, Any] = {}
    for group, values in event.items():
        for name, value in values.items():
            if isinstance(value, str) and len(value) > CAP_BYTES // 4:
                short, info = cap(value)
                if info is not None:
                    values[name] = short
                    truncated[f"{group}.{name}"] = info
    return event, truncated


class NeedsEvent(Exception):
    """Raised by a match given a record, not an Event, where a rule's test raised: match its Event instead."""


Getter = Callable[[Event], Any]
RuleGroup = dict[Rule, Predicate]  # an ordered set with each rule's test: merged into the candidates with one update()


class _FieldIndex(NamedTuple):
    """Every index on one field, read as is or lowered (``fold``), so an event reads the value once.

    Suffixes holding a ``/`` are keyed by their last path component and found
    with one lookup of the value's (``/usr/bin/apt`` -> ``/apt``). Other
    prefixes and suffixes are keyed by their first or last ``head``/``tail``
    characters (the shortest one's length): one lookup, then a check of the
    few that share those characters, however many lengths there are.
    """

    get: Getter
    fold: bool
    eq: dict[Any, RuleGroup]
    head: int
    prefix: dict[str, tuple[tuple[str, RuleGroup], ...]]
    tail: int
    suffix: dict[str, tuple[tuple[str, RuleGroup], ...]]
    suffix_base: dict[str, RuleGroup]
    contains_search: Callable[[str], Any] | None
    contains: dict[str, RuleGroup]
    present: RuleGroup  # rules that need only the field to be set
    ne: dict[frozenset[str], RuleGroup]  # rules that need the field set and none of these values

    def groups(self) -> list[RuleGroup]:
        """Every rule group of every index of this field."""
        keyed = [g for t in (self.prefix, self.suffix) for entries in t.values() for _, g in entries]
        return keyed + [g for t in (self.eq, self.suffix_base, self.contains, self.ne) for g in t.values()] \
            + [self.present]


@dataclass(frozen=True, slots=True)
class _Bucket:
    """The rules one event kind can meet, split into those reached through indexes and the rest."""

    linear: tuple[Rule, ...]
    fields: tuple[_FieldIndex, ...]
    match: Callable[[Event], list[Rule]]


def _getter(dotted: str) -> Getter:
    group, _, name = dotted.partition(".")
    return operator.attrgetter(name if group == "event" else dotted)


def _group(rules: list[Rule]) -> RuleGroup:
    return {r: r.test for r in rules}


def _freeze(table: dict[Any, list[Rule]]) -> dict[Any, RuleGroup]:
    return {k: _group(v) for k, v in table.items()}


def _by_ends(table: dict[str, RuleGroup], suffix: bool) -> tuple[int, dict[str, tuple[tuple[str, RuleGroup], ...]]]:
    n = min((len(k) for k in table), default=0)
    out: dict[str, list[tuple[str, RuleGroup]]] = {}
    for k, group in table.items():
        out.setdefault(k[-n:] if suffix else k[:n], []).append((k, group))
    return n, {k: tuple(v) for k, v in out.items()}


def _field_index(fld: str, fold: bool, tables: dict[str, dict[Any, list[Rule]]]) -> _FieldIndex:
    base: dict[Any, list[Rule]] = {}
    plain: dict[Any, list[Rule]] = {}
    for key, rules in tables.get("suffix", {}).items():
        cut = key.rfind("/")
        if cut >= 0:
            base.setdefault(key[cut:], []).extend(rules)
        else:
            plain.setdefault(key, []).extend(rules)
    head, prefix = _by_ends(_freeze(tables.get("prefix", {})), suffix=False)
    tail, suffix = _by_ends(_freeze(plain), suffix=True)
    contains = _freeze(tables.get("contains", {}))
    search = literal_search(list(contains)) if contains else None
    present = _group(tables.get("present", {}).get(None, []))
    return _FieldIndex(_getter(fld), fold, _freeze(tables.get("eq", {})), head, prefix, tail, suffix,
                       _freeze(base), search, contains, present, _freeze(tables.get("ne", {})))


def _no_rules(e: Event) -> list[Rule]:
    return []


def _bucket(kind: str, rules: list[Rule], slow: Callable[[Event], list[Rule]]) -> _Bucket:
    linear: list[Rule] = []
    by_field: dict[tuple[str, bool], dict[str, dict[Any, list[Rule]]]] = {}
    for r in rules:
        if not r.triggers:
            linear.append(r)
            continue
        for t in r.triggers:
            tables = by_field.setdefault((t.field, t.fold), {})
            tables.setdefault(t.op, {}).setdefault(t.value, []).append(r)
    keys = sorted(by_field)
    fields = tuple(_field_index(fld, fold, by_field[(fld, fold)]) for fld, fold in keys)
    return _Bucket(tuple(linear), fields, _compile_match(kind, linear, [fld for fld, _ in keys], fields, slow))


def _read(dotted: str, env: dict[str, Any], n: int, shared: set[str]) -> str:
    """Source reading one field of ``e``: inline attribute reads where the name allows.

    A group in ``shared`` has been read into a local of its name already.
    """
    group, _, name = dotted.partition(".")
    path = name if group == "event" else dotted
    if all(part.isidentifier() for part in path.split(".")):
        return path if group in shared else "e." + path
    env[f"get{n}"] = _getter(dotted)
    return f"get{n}(e)"


_CACHE_LIMIT = 4096  # values per field and generation remembered (two generations: at most twice this)
_CACHE_LEN = 512  # longer values (odd command lines) are looked up every time, never kept
_QUICK_MAX = 16  # literals a quick startswith/endswith test may try; more go through the tables


def _quick_source(n: int, f: _FieldIndex, env: dict[str, Any]) -> list[str] | None:
    """A test that is false only when none of a field's tables can find anything for ``v``.

    Most values of a busy field (command lines) match no rule at all: one
    C-level test of the prefixes, one of the suffixes and the literal scan
    settle them without the per-table lookups. None when the tables hold
    too many prefixes or suffixes for such a test to be cheap.
    """
    prefixes = tuple(lit for entries in f.prefix.values() for lit, _ in entries)
    suffixes = tuple(lit for entries in f.suffix.values() for lit, _ in entries) + tuple(f.suffix_base)
    if len(prefixes) > _QUICK_MAX or len(suffixes) > _QUICK_MAX or f.ne:
        return None
    v = "lo" if f.fold else "r"
    tests = []
    if f.eq:
        env[f"eq{n}"] = f.eq
        tests.append(f"{v} in eq{n}")
    if prefixes:
        env[f"prefixes{n}"] = prefixes
        tests.append(f"{v}.startswith(prefixes{n})")
    if suffixes:
        env[f"suffixes{n}"] = suffixes
        tests.append(f"{v}.endswith(suffixes{n})")
    if f.contains_search is not None:
        env[f"search{n}"] = f.contains_search
        tests.append(f"search{n}({v}) is not None")  # the dearest: keep it last
    return tests


def _lookup_source(n: int, f: _FieldIndex, env: dict[str, Any]) -> list[str]:
    """Source appending to ``out`` every rule group one index table of a field finds for ``r``."""
    lines = ["  v = lo" if f.fold else "  v = r"]
    if f.eq:
        env[f"eq{n}"] = f.eq
        lines += [f"  g = eq{n}.get(v)", "  if g: out.append(g)"]
    if f.head:
        env[f"prefix{n}"] = f.prefix
        lines += [f"  for lit, g in prefix{n}.get(v[:{f.head}], ()):", "   if v.startswith(lit): out.append(g)"]
    if f.suffix_base:
        env[f"base{n}"] = f.suffix_base
        lines += ["  cut = v.rfind('/')", "  if cut >= 0:",
                  f"   g = base{n}.get(v[cut:])", "   if g: out.append(g)"]
    if f.tail:
        env[f"suffix{n}"] = f.suffix
        lines += [f"  for lit, g in suffix{n}.get(v[-{f.tail}:], ()):", "   if v.endswith(lit): out.append(g)"]
    if f.contains_search is not None:
        env[f"search{n}"] = f.contains_search
        env[f"contains{n}"] = tuple(f.contains.items())
        lines += [f"  if search{n}(v) is not None:", f"   for lit, g in contains{n}:",
                  "    if lit in v: out.append(g)"]
    if f.ne:
        env[f"ne{n}"] = tuple(f.ne.items())
        lines += [f"  for unlike, g in ne{n}:", "   if v not in unlike: out.append(g)"]
    return lines


def _only_present(f: _FieldIndex) -> bool:
    return not f.eq and _only_eq(f)


def _only_eq(f: _FieldIndex) -> bool:
    return not (f.head or f.tail or f.suffix_base or f.contains or f.ne)


def _field_source(kind: str, dotted: str, ns: list[int], fields: tuple[_FieldIndex, ...],
                  env: dict[str, Any], shared: set[str]) -> list[str]:
    """Source adding to the candidates ``c`` every rule group one field's indexes find."""
    m = ns[0]
    lines = [f" r = {_read(dotted, env, m, shared)}", " if r is not None:"]
    for n in ns:
        if fields[n].present:
            env[f"present{n}"] = fields[n].present
            lines.append(f"  add(present{n})")
    if all(_only_present(fields[n]) for n in ns):
        return lines
    if len(ns) == 1 and _only_eq(fields[m]):
        # One dictionary lookup is cheaper than remembering its answer.
        env[f"eq{m}"] = fields[m].eq
        return [*lines, f"  g = eq{m}.get(r.lower())" if fields[m].fold else f"  g = eq{m}.get(r)", "  if g: add(g)"]
    # Two generations: a full table becomes the old one, and what the old one still answers moves
    # back to the new one, so values that keep coming survive while one-off values age out.
    look = [f"def look{m}(r):", f" global cache{m}, old{m}", f" got = old{m}.get(r)", " if got is None:"]
    body = []
    if any(fields[n].fold for n in ns):
        body.append(" lo = r.lower()")
    quick = [_quick_source(n, fields[n], env) for n in ns]
    indent = " "
    if all(q is not None for q in quick):
        tests = sorted((t for q in quick if q for t in q), key=lambda t: t.startswith("search"))
        body += [f" if not ({' or '.join(tests)}):", "  got = ()", " else:"]
        indent = "  "
    body.append(indent + "out = []")
    for n in ns:
        body += [indent + line[2:] for line in _lookup_source(n, fields[n], env)]
    body.append(indent + "got = tuple(out)")
    look += [" " + line for line in body]
    look += [f" if len(cache{m}) >= _LIMIT:", f"  old{m} = cache{m}", f"  cache{m} = {{}}",
             f" if not isinstance(r, str) or len(r) <= _LEN: cache{m}[r] = got", " return got"]
    env[f"cache{m}"], env[f"old{m}"] = {}, {}
    exec(compile("\n".join(look), f"<lookup {kind} {dotted}>", "exec"), env)  # noqa: S102 - built from constants
    return [*lines, f"  gs = cache{m}.get(r)", "  if gs is None:", f"   gs = look{m}(r)", "  for g in gs: add(g)"]


# Fields whose values repeat from event to event on a host: a program's identity and its parent's, where
# it runs, whether anyone answers for it, the zones. Consecutive ones are looked up together, by the tuple
# of their values (a few hundred distinct ones in a million process starts), in one step.
_REPEATING = frozenset({"process.exe", "process.name", "process.cwd", "process.user", "parent.exe", "parent.name",
                        "parent.cmdline", "operator.known", "net.proto", "net.direction", "net.remote_zone",
                        "net.local_zone"})


def _run_source(kind: str, run: list[tuple[str, list[int]]], fields: tuple[_FieldIndex, ...],
                env: dict[str, Any], shared: set[str]) -> list[str]:
    """Source adding to ``c`` what several repeating fields' indexes find, remembered by the tuple of their values.

    The answer is each field's groups, in the fields' order, exactly as
    their own sources add them one by one.
    """
    m = run[0][1][0]
    reads = [_read(dotted, env, ns[0], shared) for dotted, ns in run]
    look = [f"def runlook{m}(k):", f" global runcache{m}, runold{m}", f" got = runold{m}.get(k)", " if got is None:",
            "  out = []", "  add = out.append"]
    for i, (dotted, ns) in enumerate(run):
        source = _field_source(kind, dotted, ns, fields, env, shared)
        look += [f"  r = k[{i}]", *(" " + line for line in source[1:])]
    look += ["  got = tuple(out)", f" if len(runcache{m}) >= _LIMIT:", f"  runold{m} = runcache{m}",
             f"  runcache{m} = {{}}", " if all(not isinstance(v, str) or len(v) <= _LEN for v in k):",
             f"  runcache{m}[k] = got", " return got"]
    env[f"runcache{m}"], env[f"runold{m}"] = {}, {}
    exec(compile("\n".join(look), f"<lookup {kind} {'+'.join(d for d, _ in run)}>", "exec"), env)  # noqa: S102
    return [f" k = ({', '.join(reads)},)", f" gs = runcache{m}.get(k)", " if gs is None:", f"  gs = runlook{m}(k)",
            " for g in gs: add(g)"]


def _compile_match(kind: str, linear: list[Rule], names: list[str], fields: tuple[_FieldIndex, ...],
                   slow: Callable[[Event], list[Rule]]) -> Callable[[Event], list[Rule]]:
    """One generated function per bucket: the rules without triggers, then the candidate lookup and tests.

    Each field is read once. What its indexes find depends on its value
    alone, so the rule groups are computed once per distinct value (lowered
    once, only the indexes the bucket has) and remembered: event streams
    repeat executables, directories and command lines. Groups are added in
    the order of the generic per-table lookup, so candidates keep their order.
    An exception (a value a rule cannot handle) hands the event to ``slow``,
    which tests each rule on its own so that one bad value hides no finding.
    """
    env: dict[str, Any] = {"_LIMIT": _CACHE_LIMIT, "_LEN": _CACHE_LEN, "_slow": slow}
    lines = [" hits = []"]
    for n, rule in enumerate(linear):
        env[f"rule{n}"], env[f"test{n}"] = rule, rule.test
        lines.append(f" if test{n}(e): hits.append(rule{n})")
    if names:
        lines += [" c = {}", " add = c.update"]
        by_field: dict[str, list[int]] = {}
        for n, dotted in enumerate(names):
            by_field.setdefault(dotted, []).append(n)
        groups = [d.partition(".")[0] for d in by_field]
        # A group with several indexed fields is read once: process = e.process, then process.exe ...
        shared = {g for g in groups if g != "event" and groups.count(g) > 1 and g.isidentifier()}
        lines += [f" {g} = e.{g}" for g in sorted(shared)]
        run: list[tuple[str, list[int]]] = []
        for dotted, ns in [*by_field.items(), ("", [])]:  # the empty name ends the last run
            if dotted in _REPEATING:
                run.append((dotted, ns))
                continue
            if len(run) >= 2:
                lines += _run_source(kind, run, fields, env, shared)
            else:
                for d, dns in run:
                    lines += _field_source(kind, d, dns, fields, env, shared)
            run = []
            if dotted:
                lines += _field_source(kind, dotted, ns, fields, env, shared)
        lines += [" if c:", "  for rule, test in c.items():", "   if test(e): hits.append(rule)"]
    lines.append(" return hits")
    lines = ["def match(e):", " try:", *(" " + line for line in lines), " except Exception:", "  return _slow(e)"]
    # Named per kind so that profiles tell the buckets apart.
    exec(compile("\n".join(lines), f"<match {kind}>", "exec"), env)  # noqa: S102 - built from constants
    fn: Callable[[Event], list[Rule]] = env["match"]
    return fn


class Engine:
    """Matches events against a rule set. Built once per (re)load."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._buckets: dict[str, _Bucket] = {
            kind: _bucket(kind, [r for r in ruleset.rules if kind in r.kinds], self._match_slow) for kind in KINDS
        }
        self._empty = _Bucket((), (), _no_rules)
        self._match = {kind: b.match for kind, b in self._buckets.items()}
        self.errors = 0  # rule evaluations that raised (bad event data); counted, never fatal

    def rules_for(self, kind: str) -> list[Rule]:
        """Every rule an event of ``kind`` could meet."""
        b = self._buckets.get(kind, self._empty)
        out = dict.fromkeys(b.linear)
        for f in b.fields:
            out.update(dict.fromkeys(r for rs in f.groups() for r in rs))
        return list(out)

    def matchers(self) -> Mapping[str, Callable[[Event], list[Rule]]]:
        """``match`` split by event kind, for loops that call it per event: one call less each time."""
        return MappingProxyType(self._match)

    def match(self, e: Event) -> list[Rule]:
        """Every rule whose condition holds for the (attributed) event."""
        return self._match.get(e.kind, _no_rules)(e)

    def stateless_kinds(self) -> frozenset[str]:
        """Kinds none of whose rules counts over a window: matching an event of one twice changes nothing."""
        return frozenset(kind for kind, b in self._buckets.items()
                         if not any(r.window is not None for r in self.rules_for(kind)))

    def _match_slow(self, e: Event) -> list[Rule]:
        if type(e) is not Event:
            # A record (agent.records) that some rule's test could not take: its Event will be
            # matched instead, and any error counted there, once.
            raise NeedsEvent
        hits = []
        for r in self.rules_for(e.kind):
            try:
                if r.test(e):
                    hits.append(r)
            except Exception:
                self.errors += 1
        return hits

    def reset_windows(self) -> None:
        """Forget the counts of count-over-window rules (each rule sample starts from nothing)."""
        for r in self.ruleset.rules:
            if r.window is not None:
                r.window.reset()

    def evaluate(self, e: Event) -> list[Finding]:
        """Findings for one attributed event."""
        return [Finding(r, e) for r in self.match(e)]
