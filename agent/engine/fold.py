"""Rules compiled for one host: constant folding of conditions whose fixed fields read as constants.

When a condition is compiled for one registry (``expr.compile_fixed``), the
host group's fields are constants; what depends on them alone is settled
here, once: ``host.level >= "confidential"`` becomes True or False, an
``and`` with a False part that is always reached becomes False, and the
rule can be left out. Folding keeps Python's evaluation exactly: a part is
dropped only where it is a constant whose value cannot change the result
(a true part of an ``and`` before its last, a false part of an ``or``), and
everything after a constant that ends an ``and``/``or`` is never evaluated
anyway. A comparison whose evaluation raises is left to raise at run time,
as it did. Conditions are used for their truth only (``if test(e)``), so a
result that is a bool of the same truth stands for the value.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.engine.rules import RuleSet
    from agent.events import Host

_UNKNOWN: Any = object()
_OPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


class _Folder:
    def __init__(self, consts: Mapping[str, Any]) -> None:
        self.known: dict[str, Any] = dict(consts)  # names whose value is known: the constants, then temps
        self.temps: dict[str, ast.expr] = {}  # a temp whose value is known -> the node its reads become

    def value(self, node: ast.expr) -> Any:
        """The value of a folded node when it is known, else _UNKNOWN."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in self.known:
            return self.known[node.id]
        return _UNKNOWN

    def bind(self, name: str, node: ast.expr, value: Any) -> None:
        self.known[name] = value
        self.temps[name] = node

    def expr(self, node: ast.expr) -> ast.expr:
        """``node`` folded; its parts are visited in Python's evaluation order."""
        if isinstance(node, ast.Name) and node.id in self.temps:
            return self.temps[node.id]
        if isinstance(node, ast.BoolOp):
            return self.boolop(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.expr(node.operand)
            v = self.value(inner)
            return ast.Constant(not v) if v is not _UNKNOWN else ast.UnaryOp(ast.Not(), inner)
        if isinstance(node, ast.NamedExpr):
            value = self.expr(node.value)
            v = self.value(value)
            if v is not _UNKNOWN:
                # Assigned once, before each read (the compiler's temps): the reads take the value.
                self.bind(node.target.id, value, v)
                return value
            return ast.NamedExpr(node.target, value)
        if isinstance(node, ast.Compare):
            left = self.expr(node.left)
            rights = [self.expr(c) for c in node.comparators]
            if len(node.ops) == 1 and type(node.ops[0]) in _OPS:
                a, b = self.value(left), self.value(rights[0])
                if a is not _UNKNOWN and b is not _UNKNOWN:
                    try:
                        result = _OPS[type(node.ops[0])](a, b)
                    except Exception:  # noqa: S110 - it raises at run time too, as before
                        pass
                    else:
                        if isinstance(result, bool):
                            return ast.Constant(result)
            return ast.Compare(left, node.ops, rights)
        if isinstance(node, ast.IfExp):
            test = self.expr(node.test)
            v = self.value(test)
            if v is not _UNKNOWN:
                return self.expr(node.body if v else node.orelse)
            return ast.IfExp(test, self.expr(node.body), self.expr(node.orelse))
        if isinstance(node, ast.Call):
            return ast.Call(self.expr(node.func), [self.expr(a) for a in node.args], node.keywords)
        if isinstance(node, ast.Attribute):
            return ast.Attribute(self.expr(node.value), node.attr, node.ctx)
        if isinstance(node, ast.Subscript):
            return ast.Subscript(self.expr(node.value), self.expr(node.slice), node.ctx)
        return node

    def boolop(self, node: ast.BoolOp) -> ast.expr:
        ends = isinstance(node.op, ast.Or)  # the truth value at which evaluation stops
        kept: list[ast.expr] = []
        for part in node.values:
            folded = self.expr(part)
            v = self.value(folded)
            if v is _UNKNOWN:
                kept.append(folded)
            elif bool(v) == ends:
                if all(map(_cannot_raise, kept)):  # the parts before it only decide when it is reached
                    return folded
                kept.append(folded)  # evaluation stops here: the parts after it are never reached
                break
            # else: a constant that passes evaluation on to the next part, and only its truth matters
        if not kept:
            return ast.Constant(not ends)
        if len(kept) == 1:
            return kept[0]
        return ast.BoolOp(node.op, kept)


_PLAIN_OPS = (ast.Eq, ast.NotEq, ast.Is, ast.IsNot, ast.In, ast.NotIn)


def _plain(node: ast.expr) -> bool:
    """A field of the event (``e.group.name``: a decoded JSON scalar or None), a name or a literal."""
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.NamedExpr):
        return _plain(node.value)
    return isinstance(node, (ast.Name, ast.Constant))


def _cannot_raise(node: ast.expr) -> bool:
    """Whether evaluating ``node`` cannot raise: equality and membership tests of plain values, joined.

    Membership is in the compiler's frozensets and tuples; a scalar is always hashable.
    """
    if isinstance(node, ast.BoolOp):
        return all(map(_cannot_raise, node.values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _cannot_raise(node.operand)
    if isinstance(node, ast.Compare):
        return (all(isinstance(op, _PLAIN_OPS) for op in node.ops) and _plain(node.left)
                and all(map(_plain, node.comparators)))
    return isinstance(node, ast.Constant)


def fold(body: list[ast.stmt], result: ast.expr, consts: Mapping[str, Any]) -> tuple[list[ast.stmt], ast.expr]:
    """A condition function's statements (hoisted assignments) and result expression, folded."""
    f = _Folder(consts)
    out: list[ast.stmt] = []
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = f.expr(stmt.value)
            v = f.value(value)
            if v is not _UNKNOWN:
                f.bind(stmt.targets[0].id, value, v)
            out.append(ast.Assign(stmt.targets, value))
        else:
            out.append(stmt)
    return out, f.expr(result)


def _same_fields(new: tuple[Any, ...] | None, old: tuple[Any, ...] | None) -> bool:
    """Whether two trigger sets test the same fields the same way: the rule meets an event at the same place."""
    if not new or not old:
        return False
    return {(t.op, t.field, t.fold) for t in new} == {(t.op, t.field, t.fold) for t in old}


def for_host(ruleset: RuleSet, host: Host) -> RuleSet:
    """``ruleset`` compiled for events that all carry this host group (a replay against one registry).

    Attribution sets the registry's host on every event, so within a replay
    a rule's test of a host field has one answer: each rule that reads the
    host group is compiled again with those fields as constants and folded.
    A rule that then can never hold is left out (``BM-NET-001``, a classified
    host's rule, on an internal host); one that compares a field with the
    host's is indexed by the host's value (``net.local_zone != host.zone``).
    Rules that count over a window keep their compiled test and state.
    Every rule fires on exactly the events it fired on before, and in the
    same order: a rule keeps its index triggers (still necessary conditions)
    unless the new ones test the same fields, which keeps its place among
    the candidates of an event.
    """
    from agent.engine.expr import Scope, compile_fixed
    from agent.errors import LoadError

    fixed = {f"host.{name}": value for name, value in zip(type(host)._fields, host, strict=True)}
    scope = Scope(ruleset.lists, ruleset.macros)
    rules = []
    for r in ruleset.rules:
        if r.tree is None or r.window is not None:
            rules.append(r)
            continue
        try:
            c = compile_fixed(r.tree, r.when, r.where, scope, r.id, fixed)
        except LoadError:  # it compiled once, so this cannot be; the general test then stays
            rules.append(r)
            continue
        if not c.never:
            rules.append(replace(r, test=c.test, triggers=c.triggers if _same_fields(c.triggers, r.triggers)
                                 else r.triggers))
    return replace(ruleset, rules=tuple(rules))


__all__ = ["fold", "for_host"]
