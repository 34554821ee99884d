"""Static facts about a condition, used to index rules.

``possible_kinds`` is the set of event kinds for which a condition can be
true (so an event meets only its candidate rules); ``index_keys`` lists the
top-level ``field == constant`` and ``field in (...)`` conjuncts, which let
many rules on the same field be found by one dictionary lookup.
"""

from __future__ import annotations

import ast
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


def _conjuncts(node: ast.expr, scope: Scope, depth: int = 0) -> list[ast.expr]:
    if depth > 50:
        return []
    sub = _macro(node, scope)
    if sub is not None:
        return _conjuncts(sub, scope, depth + 1)
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        out: list[ast.expr] = []
        for v in node.values:
            out.extend(_conjuncts(v, scope, depth + 1))
        return out
    return [node]


def index_keys(node: ast.expr, scope: Scope) -> tuple[tuple[str, frozenset[Any]], ...]:
    """Top-level equality conjuncts as (field, accepted values), event.kind excluded."""
    keys = []
    for c in _conjuncts(node, scope):
        if not (isinstance(c, ast.Compare) and len(c.ops) == 1
                and isinstance(c.ops[0], (ast.Eq, ast.In))):
            continue
        dotted = _dotted(c.left)
        if dotted is None or dotted == "event.kind" or dotted not in FIELDS:
            continue
        vals = _values(c.comparators[0], scope)
        if vals is None or any(v is None for v in vals):
            continue
        if FIELDS[dotted].type == "level":
            try:
                vals = tuple(parse_level(v) for v in vals)
            except ValueError:
                continue
        keys.append((dotted, frozenset(vals)))
    return tuple(keys)
