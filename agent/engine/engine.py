"""Evaluate events against a compiled rule set; every matching rule fires.

Rules are bucketed by the event kinds their condition can match, so an
event meets only its candidate rules. Inside a bucket, rules that share a
top-level ``field == value`` (or ``field in (...)``) test are grouped in a
dictionary on that field: an event then costs one lookup for the whole
group instead of one call per rule, which keeps large rule sets cheap.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.engine.rules import Rule, RuleSet
from agent.events import KINDS, Event

_MIN_GROUP = 3  # rules sharing a key before a dictionary beats calling each


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


@dataclass(frozen=True, slots=True)
class _Bucket:
    linear: tuple[Rule, ...]
    indexes: tuple[tuple[Callable[[Event], Any], dict[Any, tuple[Rule, ...]]], ...]


def _getter(dotted: str) -> Callable[[Event], Any]:
    group, _, name = dotted.partition(".")
    return operator.attrgetter(name if group == "event" else dotted)


def _bucket(rules: list[Rule]) -> _Bucket:
    remaining = list(rules)
    indexes = []
    while True:
        counts = Counter(f for r in remaining for f, _ in r.keys)
        if not counts:
            break
        fld, n = counts.most_common(1)[0]
        if n < _MIN_GROUP:
            break
        table: dict[Any, list[Rule]] = {}
        keep = []
        for r in remaining:
            values = next((v for f, v in r.keys if f == fld), None)
            if values is None:
                keep.append(r)
                continue
            for v in values:
                table.setdefault(v, []).append(r)
        indexes.append((_getter(fld), {k: tuple(v) for k, v in table.items()}))
        remaining = keep
    return _Bucket(tuple(remaining), tuple(indexes))


class Engine:
    """Matches events against a rule set. Built once per (re)load."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._buckets: dict[str, _Bucket] = {
            kind: _bucket([r for r in ruleset.rules if kind in r.kinds]) for kind in KINDS
        }
        self._empty = _Bucket((), ())
        self.errors = 0  # rule evaluations that raised (bad event data); counted, never fatal

    def candidates(self, kind: str) -> int:
        """How many rules an event of ``kind`` could meet (for diagnostics)."""
        b = self._buckets.get(kind, self._empty)
        return len(b.linear) + sum(len({r.id for rs in t.values() for r in rs}) for _, t in b.indexes)

    def match(self, e: Event) -> list[Rule]:
        """Every rule whose condition holds for the (attributed) event."""
        b = self._buckets.get(e.kind, self._empty)
        try:
            hits = [r for r in b.linear if r.test(e)]
            for get, table in b.indexes:
                group = table.get(get(e))
                if group:
                    hits.extend(r for r in group if r.test(e))
        except Exception:
            return self._match_slow(b, e)
        return hits

    def _match_slow(self, b: _Bucket, e: Event) -> list[Rule]:
        hits = []
        seen = set()
        for r in (*b.linear, *(r for _, t in b.indexes for rs in t.values() for r in rs)):
            if r.id in seen:
                continue
            seen.add(r.id)
            try:
                if r.test(e):
                    hits.append(r)
            except Exception:
                self.errors += 1
        return hits

    def evaluate(self, e: Event) -> list[Finding]:
        """Findings for one attributed event."""
        return [Finding(r, e) for r in self.match(e)]
