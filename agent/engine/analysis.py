"""Static facts about a condition, used to index rules.

``possible_kinds`` is the set of event kinds for which a condition can be
true (so an event meets only its candidate rules); ``triggers`` gives a set
of cheap tests of which one holds whenever the condition does (a field's
value, prefix, suffix or substring, or that it is set), which lets many
rules be found by a few dictionary lookups and one substring scan.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.engine.expr import Scope
from agent.events import FIELDS, KINDS
from agent.levels import parse_level

ALL_KINDS = frozenset(KINDS)


def _macro(node: ast.expr, scope: Scope) -> ast.expr | None:
    if isinstance(node, ast.Name) and node.id in scope.macros:
        text, _ = scope.macros[node.id]
        src = " ".join(str(text).splitlines())
        return ast.parse(src.strip(), mode="eval").body
    return None


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _values(node: ast.expr, scope: Scope) -> tuple[Any, ...] | None:
    if isinstance(node, ast.Constant):
        return (node.value,)
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
        return tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
    if isinstance(node, ast.Name) and node.id in scope.lists:
        return tuple(scope.lists[node.id])
    return None


def _kind_test(node: ast.expr, scope: Scope) -> frozenset[str] | None:
    """The kinds a pure ``event.kind`` test accepts; None for other nodes."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and _dotted(node.left) == "event.kind"):
        return None
    vals = _values(node.comparators[0], scope)
    if vals is None:
        return None
    chosen = frozenset(v for v in vals if isinstance(v, str))
    op = node.ops[0]
    if isinstance(op, (ast.Eq, ast.In)):
        return chosen
    if isinstance(op, (ast.NotEq, ast.NotIn)):
        return ALL_KINDS - chosen
    return None


def possible_kinds(node: ast.expr, scope: Scope, depth: int = 0) -> frozenset[str]:
    """Kinds for which ``node`` may be true (a safe over-approximation)."""
    if depth > 50:
        return ALL_KINDS
    sub = _macro(node, scope)
    if sub is not None:
        return possible_kinds(sub, scope, depth + 1)
    if isinstance(node, ast.BoolOp):
        sets = [possible_kinds(v, scope, depth + 1) for v in node.values]
        if isinstance(node.op, ast.And):
            out = ALL_KINDS
            for s in sets:
                out &= s
            return out
        return frozenset().union(*sets)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = node.operand
        sub = _macro(inner, scope)
        kt = _kind_test(sub if sub is not None else inner, scope)
        return ALL_KINDS - kt if kt is not None else ALL_KINDS
    kt = _kind_test(node, scope)
    return kt if kt is not None else ALL_KINDS


@dataclass(frozen=True, slots=True)
class Trigger:
    """A necessary condition a cheap index can test: ``field`` eq/prefix/suffix/contains ``value``."""

    op: str  # eq | prefix | suffix | contains | present (value None: the field is set) | ne (set, and none of value)
    field: str
    value: Any
    fold: bool = False  # tested against lower(field), as Sigma's case-insensitive matching needs


_OP_COST = {"eq": 0, "prefix": 1, "suffix": 1, "contains": 2, "ne": 3, "present": 4}
_MIN_LITERAL = 3  # shorter substrings match too often to narrow anything


def _cost(ts: tuple[Trigger, ...]) -> tuple[int, int, int, int]:
    worst = max(_OP_COST[t.op] for t in ts)
    # A bool splits events in two at best; uid 0 is root, behind a large share of all processes;
    # the host group is the same on every event of a host, so that one of its fields is set narrows nothing.
    weak = any(isinstance(t.value, bool) or (t.value == 0 and t.field.endswith("uid"))
               or (t.op == "present" and t.field.startswith("host.")) for t in ts)
    # On a tie, the longer literal: "root" is on every host, "/var/opt/microsoft/scx/tmp" is not.
    shortest = min(len(t.value) if isinstance(t.value, str) else 0 for t in ts)
    return (int(weak), worst, len(ts), -shortest)


def _field(node: ast.expr) -> str | None:
    d = _dotted(node)
    return d if d is not None and d in FIELDS and d != "event.kind" else None


def _lowered(node: ast.expr) -> str | None:
    """The field ``node`` reads through ``lower(field)``, if that is all it does."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "lower"
            and len(node.args) == 1 and not node.keywords):
        return _field(node.args[0])
    return None


_MIN_REGEX_LITERAL = 2  # a regex is dear to run on every event: even a short required text narrows it
_MAX_ALTERNATIVES = 16


def _item_texts(op: Any, arg: Any) -> tuple[str, ...] | None:
    """The texts one parsed regex item matches, when it matches only a few fixed ones."""
    name = str(op)
    if name == "LITERAL":
        return (chr(arg),)
    if name == "IN":
        if all(str(o) == "LITERAL" for o, _ in arg) and len(arg) <= _MAX_ALTERNATIVES:
            return tuple(chr(a) for _, a in arg)
        return None
    if name == "SUBPATTERN":
        _group, add_flags, _del_flags, sub = arg
        return None if add_flags & 2 else _sequence_texts(sub)  # (?i:...) matches other cases too
    if name == "BRANCH":
        out: list[str] = []
        for branch in arg[1]:
            texts = _sequence_texts(branch)
            if texts is None:
                return None
            out.extend(texts)
        return tuple(dict.fromkeys(out)) if len(out) <= _MAX_ALTERNATIVES else None
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and arg[0] == arg[1] == 1:
        return _sequence_texts(arg[2])
    return None


def _sequence_texts(items: Any) -> tuple[str, ...] | None:
    texts: tuple[str, ...] = ("",)
    for op, arg in items:
        alts = _item_texts(op, arg)
        if alts is None or len(texts) * len(alts) > _MAX_ALTERNATIVES:
            return None
        texts = tuple(dict.fromkeys(t + a for t in texts for a in alts))
    return texts


def _regex_literals(pattern: str) -> tuple[str, ...] | None:
    """Texts of which every match of ``pattern`` contains one: the best run of fixed items.

    A run is a stretch of items that each match a few fixed texts (a
    character, a class such as ``[WR]``, a group of alternatives such as
    ``(sh|bash)``); its texts are their combinations. The run with the
    longest shortest text wins, then the one with fewer texts.
    """
    try:
        from re import _parser  # type: ignore[attr-defined]
        parsed = _parser.parse(pattern)
    except Exception:
        return None
    if parsed.state.flags & 2:  # re.IGNORECASE
        return None
    runs: list[tuple[str, ...]] = []
    run: tuple[str, ...] = ("",)
    for op, arg in parsed:
        alts = _item_texts(op, arg)
        if alts is None or len(run) * len(alts) > _MAX_ALTERNATIVES:
            runs.append(run)
            run = alts or ("",)
            continue
        run = tuple(dict.fromkeys(t + a for t in run for a in alts))
    runs.append(run)
    best = max(runs, key=lambda r: (min(map(len, r)), -len(r)))
    return best if min(map(len, best)) >= _MIN_REGEX_LITERAL else None


def _call_triggers(node: ast.Call, scope: Scope) -> tuple[Trigger, ...] | None:
    if not isinstance(node.func, ast.Name) or len(node.args) < 2:
        return None
    fld = _field(node.args[0])
    fold = False
    if fld is None:
        fld, fold = _lowered(node.args[0]), True
        if fld is None:
            return None
    pats: list[str] = []
    for arg in node.args[1:]:
        vals = _values(arg, scope)
        if vals is None or not all(isinstance(v, str) for v in vals):
            return None
        pats.extend(vals)
    name = node.func.id
    if name in ("startswith", "endswith", "contains"):
        if any(len(p) < (1 if name != "contains" else _MIN_LITERAL) for p in pats):
            return None
        op = {"startswith": "prefix", "endswith": "suffix", "contains": "contains"}[name]
        return tuple(Trigger(op, fld, p, fold) for p in pats)
    if name == "regex" and len(pats) == 1:
        lits = _regex_literals(pats[0])
        return tuple(Trigger("contains", fld, lit, fold) for lit in lits) if lits else None
    if name == "glob":
        from agent.globs import literal_prefix
        prefixes = [literal_prefix(p) for p in pats]
        return tuple(Trigger("prefix", fld, p, fold) for p in prefixes) if all(len(p) >= 2 for p in prefixes) \
            else None
    return None


_ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _presence(node: ast.expr) -> str | None:
    """The field ``node`` needs set: ``field != None``, or an ordering comparison (false on an unset side)."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
        return None
    left, op, right = node.left, node.ops[0], node.comparators[0]
    if isinstance(op, ast.NotEq):
        for a, b in ((left, right), (right, left)):
            if _field(a) is not None and isinstance(b, ast.Constant) and b.value is None:
                return _field(a)
        return None
    if isinstance(op, _ORDERING):
        return _field(left) or _field(right)
    return None


def _not_equal(node: ast.expr, scope: Scope, fixed: Mapping[str, Any], depth: int = 0) -> tuple[str, str] | None:
    """``(field, text)`` when ``node`` is ``field != "text"`` for a string field (a fixed field reads as its value)."""
    sub = _macro(node, scope)
    if sub is not None:
        return _not_equal(sub, scope, fixed, depth + 1) if depth < 50 else None
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.NotEq)):
        return None
    for a, b in ((node.left, node.comparators[0]), (node.comparators[0], node.left)):
        fld = _field(a)
        if fld is None or fld in fixed or FIELDS[fld].type != "str":
            continue
        other = _field(b)
        value = fixed.get(other) if other is not None else b.value if isinstance(b, ast.Constant) else None
        if isinstance(value, str):
            return fld, value
    return None


def _exclusions(values: list[ast.expr], parts: list[tuple[Trigger, ...] | None], scope: Scope,
                fixed: Mapping[str, Any]) -> list[tuple[Trigger, ...]]:
    """``ne`` triggers of an ``and``: a field it needs set (``f != None``) that it also needs unlike some texts.

    ``f != "x"`` alone holds when f is unset, so only together with ``f != None``
    does it say that f is set and not "x".
    """
    needed = {p[0].field for p in parts if p is not None and len(p) == 1 and p[0].op == "present"}
    unlike: dict[str, set[str]] = {}
    for v in values:
        ne = _not_equal(v, scope, fixed)
        if ne is not None and ne[0] in needed:
            unlike.setdefault(ne[0], set()).add(ne[1])
    return [(Trigger("ne", fld, frozenset(texts)),) for fld, texts in unlike.items()]


def triggers(node: ast.expr, scope: Scope, depth: int = 0,
             fixed: Mapping[str, Any] | None = None) -> tuple[Trigger, ...] | None:
    """Index entries of which at least one holds whenever ``node`` is true; None if none can be given.

    ``fixed`` fields have one value on every event (``expr.compile_fixed``):
    a test of one of them narrows nothing, and one compared with a field
    reads as its value.
    """
    fixed = fixed or {}
    if depth > 50:
        return None
    sub = _macro(node, scope)
    if sub is not None:
        return triggers(sub, scope, depth + 1, fixed)
    if isinstance(node, ast.BoolOp):
        parts = [triggers(v, scope, depth + 1, fixed) for v in node.values]
        if isinstance(node.op, ast.And):
            usable = [p for p in parts if p and not all(t.field in fixed for t in p)]
            usable += _exclusions(node.values, parts, scope, fixed)
            return min(usable, key=_cost) if usable else None
        if any(not p for p in parts):
            return None
        return tuple(t for p in parts if p for t in p)
    present = _presence(node)
    if present is not None:
        return (Trigger("present", present, None),)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.In)):
        left, right = node.left, node.comparators[0]
        if _field(left) is None and _field(right) is not None and isinstance(node.ops[0], ast.Eq):
            left, right = right, left
        fld = _field(left)
        vals = _values(right, scope)
        if fld is not None and vals is not None and not any(v is None for v in vals):
            if FIELDS[fld].type == "level":
                try:
                    vals = tuple(parse_level(v) for v in vals)
                except ValueError:
                    return None
            return tuple(Trigger("eq", fld, v) for v in vals)
        low = _lowered(left)
        if low is not None and vals and all(isinstance(v, str) for v in vals):
            return tuple(Trigger("eq", low, v, True) for v in vals)
        if (isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id == "basename"
                and len(left.args) == 1 and _field(left.args[0]) and vals
                and all(isinstance(v, str) and v for v in vals)):
            return tuple(Trigger("suffix", str(_field(left.args[0])), v) for v in vals)
        return None
    if isinstance(node, ast.Call):
        return _call_triggers(node, scope)
    return None
