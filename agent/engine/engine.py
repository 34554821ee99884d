"""Evaluate events against a compiled rule set; every matching rule fires.

Rules are bucketed by the event kinds their condition can match, so an
event meets only its candidate rules. Inside a bucket, a rule with a
trigger set (a necessary condition: field values, path prefixes or
suffixes, required substrings) is reached through per-field dictionaries
and one combined substring scan, so an event costs a few lookups however
many rules there are; only rules that pass their trigger are evaluated.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.engine.rules import Rule, RuleSet
from agent.events import KINDS, Event


@dataclass(frozen=True, slots=True)
class Finding:
    """An event matched by a rule, with its attribution (the event carries it)."""

    rule: Rule
    event: Event

    def message(self, lang: str) -> str:
        """The rule's message for this event in ``lang`` (zh or en)."""
        t = self.rule.message_zh if lang == "zh" else self.rule.message_en
        return t.render(self.event, lang)

    def accountable(self) -> dict[str, str | None]:
        """Who answers: the operator, the host's custodian, unit and department."""
        op = self.event.operator
        h = self.event.host
        who = op.name or op.account
        return {"operator": who, "custodian": h.custodian, "unit": h.unit, "department": h.department}

    def to_record(self) -> dict[str, Any]:
        """The journal record of this finding (DESIGN §7 ``events --format json``)."""
        r, e = self.rule, self.event
        return {
            "type": "finding",
            "time": e.time,
            "host": e.host.id,
            "rule": r.id,
            "pack": r.pack,
            "severity": r.severity,
            "action": r.action,
            "title": {"zh": r.title.zh, "en": r.title.en},
            "message": {"zh": self.message("zh"), "en": self.message("en")},
            "event": e.to_dict(),
            "accountable": self.accountable(),
            "roles": list(r.accountable),
            "controls": list(r.controls),
            "tags": list(r.tags),
        }


Getter = Callable[[Event], Any]
RuleGroup = tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class _Bucket:
    """The rules one event kind can meet, split into those reached through indexes and the rest."""

    linear: RuleGroup
    eq: tuple[tuple[Getter, dict[Any, RuleGroup]], ...]
    prefix: tuple[tuple[Getter, tuple[int, ...], dict[str, RuleGroup]], ...]
    suffix: tuple[tuple[Getter, tuple[int, ...], dict[str, RuleGroup]], ...]
    contains: tuple[tuple[Getter, Callable[[str], Any], dict[str, RuleGroup]], ...]

    @property
    def indexed(self) -> bool:
        """Whether any rule is reached through an index."""
        return bool(self.eq or self.prefix or self.suffix or self.contains)


def _getter(dotted: str, fold: bool = False) -> Getter:
    group, _, name = dotted.partition(".")
    get = operator.attrgetter(name if group == "event" else dotted)
    if not fold:
        return get

    def get_lower(e: Event) -> Any:  # for case-insensitive (Sigma) triggers
        v = get(e)
        return v.lower() if v is not None else None
    return get_lower


def _freeze(table: dict[Any, list[Rule]]) -> dict[Any, RuleGroup]:
    return {k: tuple(dict.fromkeys(v)) for k, v in table.items()}


def _bucket(rules: list[Rule]) -> _Bucket:
    linear: list[Rule] = []
    tables: dict[tuple[str, str, bool], dict[Any, list[Rule]]] = {}
    for r in rules:
        if not r.triggers:
            linear.append(r)
            continue
        for t in r.triggers:
            tables.setdefault((t.op, t.field, t.fold), {}).setdefault(t.value, []).append(r)
    eq: list[tuple[Getter, dict[Any, RuleGroup]]] = []
    prefix: list[tuple[Getter, tuple[int, ...], dict[str, RuleGroup]]] = []
    suffix: list[tuple[Getter, tuple[int, ...], dict[str, RuleGroup]]] = []
    contains: list[tuple[Getter, Callable[[str], Any], dict[str, RuleGroup]]] = []
    for (op, fld, fold), table in sorted(tables.items(), key=lambda kv: kv[0]):
        get = _getter(fld, fold)
        frozen = _freeze(table)
        if op == "eq":
            eq.append((get, frozen))
        elif op in ("prefix", "suffix"):
            lengths = tuple(sorted({len(k) for k in frozen}))
            (prefix if op == "prefix" else suffix).append((get, lengths, frozen))
        else:
            # One C-level scan rejects values holding none of the substrings.
            rx = re.compile("|".join(re.escape(k) for k in sorted(frozen, key=len, reverse=True)))
            contains.append((get, rx.search, frozen))
    return _Bucket(tuple(linear), tuple(eq), tuple(prefix), tuple(suffix), tuple(contains))


class Engine:
    """Matches events against a rule set. Built once per (re)load."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._buckets: dict[str, _Bucket] = {
            kind: _bucket([r for r in ruleset.rules if kind in r.kinds]) for kind in KINDS
        }
        self._empty = _Bucket((), (), (), (), ())
        self.errors = 0  # rule evaluations that raised (bad event data); counted, never fatal

    def rules_for(self, kind: str) -> list[Rule]:
        """Every rule an event of ``kind`` could meet."""
        b = self._buckets.get(kind, self._empty)
        out = dict.fromkeys(b.linear)
        tables = [t for _, t in b.eq] + [t for _, _, t in (*b.prefix, *b.suffix, *b.contains)]
        for t in tables:
            out.update(dict.fromkeys(r for rs in t.values() for r in rs))
        return list(out)

    def match(self, e: Event) -> list[Rule]:
        """Every rule whose condition holds for the (attributed) event."""
        b = self._buckets.get(e.kind, self._empty)
        try:
            hits = [r for r in b.linear if r.test(e)]
            if b.indexed:
                cands = self._candidates(b, e)
                if cands:
                    hits.extend(r for r in cands if r.test(e))
        except Exception:
            # One bad value must not hide other rules' findings.
            return self._match_slow(e)
        return hits

    @staticmethod
    def _candidates(b: _Bucket, e: Event) -> dict[Rule, None]:
        cands: dict[Rule, None] = {}
        for get, table in b.eq:
            group = table.get(get(e))
            if group:
                cands.update(dict.fromkeys(group))
        for get, lengths, table in b.prefix:
            v = get(e)
            if v is not None:
                for n in lengths:
                    group = table.get(v[:n])
                    if group:
                        cands.update(dict.fromkeys(group))
        for get, lengths, table in b.suffix:
            v = get(e)
            if v is not None:
                for n in lengths:
                    group = table.get(v[-n:])
                    if group:
                        cands.update(dict.fromkeys(group))
        for get, search, table in b.contains:
            v = get(e)
            if v is not None and search(v) is not None:
                for lit, group in table.items():
                    if lit in v:
                        cands.update(dict.fromkeys(group))
        return cands

    def _match_slow(self, e: Event) -> list[Rule]:
        hits = []
        for r in self.rules_for(e.kind):
            try:
                if r.test(e):
                    hits.append(r)
            except Exception:
                self.errors += 1
        return hits

    def evaluate(self, e: Event) -> list[Finding]:
        """Findings for one attributed event."""
        return [Finding(r, e) for r in self.match(e)]
