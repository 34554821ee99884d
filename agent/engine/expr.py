"""Compile a rule's ``when`` into a Python function, once, without eval of text.

The condition is parsed with :mod:`ast`, every node checked against a small
grammar (fields of the catalogue, literals, tuples, ``and or not``,
comparisons, list and macro names, a fixed function set) and typed against
the field catalogue. A new AST is then generated that reads the event's
named-tuple slots directly, guards ordering comparisons against ``None``,
and refers to pre-built constants (frozensets, compiled regexes); it is
compiled to a code object and bound as a function. No text reaches ``eval``.
"""

from __future__ import annotations

import ast
import ipaddress
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import LoadError, Location
from agent.events import FIELDS, GROUPS, KIND_SET
from agent.globs import compile_glob
from agent.levels import parse_level

Predicate = Callable[[Any], bool]
FUNCTIONS = ("startswith", "endswith", "contains", "glob", "regex", "cidr", "lower", "basename")
_STR_FUNCS = ("lower", "basename")

_FORBIDDEN = {
    ast.Lambda: "lambda is not allowed in when",
    ast.ListComp: "comprehension is not allowed in when",
    ast.SetComp: "comprehension is not allowed in when",
    ast.DictComp: "comprehension is not allowed in when",
    ast.GeneratorExp: "comprehension is not allowed in when",
    ast.Subscript: "subscript is not allowed in when",
    ast.JoinedStr: "f-string is not allowed in when",
    ast.FormattedValue: "f-string is not allowed in when",
    ast.NamedExpr: "assignment is not allowed in when",
    ast.IfExp: "conditional expression is not allowed in when",
    ast.BinOp: "arithmetic is not allowed in when",
    ast.List: "use a tuple (a, b) or a named list, not [a, b]",
    ast.Dict: "mappings are not allowed in when",
    ast.Set: "use a tuple (a, b) or a named list, not {a, b}",
    ast.Starred: "starred expressions are not allowed in when",
    ast.Await: "await is not allowed in when",
}


@dataclass(frozen=True, slots=True)
class Typed:
    """A generated expression and its type (str int float bool level none const)."""

    node: ast.expr
    type: str
    field: str | None = None  # the catalogue field it reads directly, if any
    const: Any = None  # the Python value, for literals and lists


@dataclass
class Scope:
    """What a condition may name: lists and macros of the loaded rule set."""

    lists: Mapping[str, tuple[Any, ...]]
    macros: Mapping[str, tuple[str, Location]]
    _macro_ast: dict[str, ast.expr] = field(default_factory=dict)
    _expanding: list[str] = field(default_factory=list)


class _Compiler:
    def __init__(self, text: str, where: Location, scope: Scope, style: str | None,
                 fixed: Mapping[str, Any] | None = None) -> None:
        self.text = text
        self.where = where
        self.scope = scope
        self.style = style
        # Fields whose value is known when compiling (the registry's host, the same on every event of a
        # replay): read as constants, so that ``fold`` can settle what depends on them alone.
        self.fixed: Mapping[str, Any] = fixed or {}
        self.read: set[str] = set()  # every field the condition reads, through its macros too
        self.consts: dict[str, Any] = {}
        self.temps = 0
        # lower(field) used more than once is computed once, before the condition (the top level only).
        self.hoist: frozenset[str] = frozenset()
        self.hoisted: dict[str, tuple[str, ast.expr]] = {}

    # -- locations --------------------------------------------------------
    def loc(self, node: ast.AST | None) -> Location:
        if node is None or not hasattr(node, "lineno"):
            return self.where
        line = node.lineno
        src_line = self.text.splitlines()[line - 1] if self.text.splitlines() else ""
        col = len(src_line.encode("utf-8")[: getattr(node, "col_offset", 0)].decode("utf-8", "ignore"))
        if self.style in ("|", ">"):
            return Location(self.where.path, self.where.line + line, col + 1)
        quote = 1 if self.style in ("'", '"') else 0
        if line == 1:
            return Location(self.where.path, self.where.line, self.where.col + quote + col)
        return Location(self.where.path, self.where.line + line - 1, col + 1)

    def err(self, node: ast.AST | None, message: str) -> LoadError:
        return LoadError(self.loc(node), message)

    # -- helpers ----------------------------------------------------------
    def const(self, value: Any) -> ast.expr:
        name = f"_c{len(self.consts)}"
        self.consts[name] = value
        return ast.Name(name, ast.Load())

    def temp(self) -> str:
        self.temps += 1
        return f"_t{self.temps}"

    # -- entry ------------------------------------------------------------
    def condition(self, node: ast.expr) -> Typed:
        t = self.expr(node)
        if t.type != "bool":
            raise self.err(node, f"expected a condition, got a {t.type} value")
        return t

    def expr(self, node: ast.expr) -> Typed:
        for bad, message in _FORBIDDEN.items():
            if isinstance(node, bad):
                raise self.err(node, message)
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            return Typed(ast.BoolOp(node.op, [p.node for p in parts]), "bool")
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.Not):
                raise self.err(node, "only 'not' is allowed as a unary operator")
            inner = self.condition(node.operand)
            return Typed(ast.UnaryOp(ast.Not(), inner.node), "bool")
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Constant):
            return self.literal(node)
        if isinstance(node, ast.Tuple):
            values = []
            for elt in node.elts:
                if not isinstance(elt, ast.Constant):
                    raise self.err(elt, "tuples may hold only literals")
                values.append(self.literal(elt).const)
            return Typed(self.const(tuple(values)), "tuple", const=tuple(values))
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.err(node, f"{type(node).__name__} is not allowed in when")

    def literal(self, node: ast.Constant) -> Typed:
        v = node.value
        if v is None or isinstance(v, (bool, int, float, str)):
            return _typed_const(v)
        raise self.err(node, f"{type(v).__name__} literals are not allowed in when")

    def attribute(self, node: ast.Attribute) -> Typed:
        base = node.value
        if not isinstance(base, ast.Name):
            raise self.err(node, "only group.field names are allowed, such as process.pid")
        dotted = f"{base.id}.{node.attr}"
        spec = FIELDS.get(dotted)
        if spec is None:
            if base.id in GROUPS:
                raise self.err(node, f"unknown field {dotted}")
            raise self.err(node, f"unknown field group {base.id!r} in {dotted}")
        self.read.add(dotted)
        if dotted in self.fixed:  # typed as the field, so that the checks and coercions stay the same
            return Typed(self.const(self.fixed[dotted]), spec.type, field=dotted)
        e = ast.Name("e", ast.Load())
        if spec.group == "event":
            access: ast.expr = ast.Attribute(e, spec.name, ast.Load())
        else:
            access = ast.Attribute(ast.Attribute(e, spec.group, ast.Load()), spec.name, ast.Load())
        return Typed(access, spec.type, field=dotted)

    def name(self, node: ast.Name) -> Typed:
        n = node.id
        if n in self.scope.macros:
            return self.macro(node)
        if n in self.scope.lists:
            values = self.scope.lists[n]
            return Typed(self.const(values), "list", const=values)
        if n in GROUPS:
            raise self.err(node, f"{n} is a field group; name one of its fields, such as {n}.{_first(n)}")
        if n in FUNCTIONS:
            raise self.err(node, f"{n} is a function; call it as {n}(...)")
        raise self.err(node, f"unknown name {n!r} (not a field, list or macro)")

    def macro(self, node: ast.Name) -> Typed:
        scope = self.scope
        n = node.id
        if n in scope._expanding:
            cycle = " -> ".join([*scope._expanding[scope._expanding.index(n):], n])
            raise self.err(node, f"macro cycle: {cycle}")
        text, where = scope.macros[n]
        scope._expanding.append(n)
        try:
            sub = _Compiler(text, where, scope, getattr(text, "style", None), self.fixed)
            sub.consts = self.consts
            sub.read = self.read
            sub.temps = self.temps
            tree = parse_when(text, where, sub)
            t = sub.condition(tree)
            self.temps = sub.temps
        finally:
            scope._expanding.pop()
        return t

    # -- comparisons ------------------------------------------------------
    def compare(self, node: ast.Compare) -> Typed:
        if len(node.ops) != 1:
            raise self.err(node, "chained comparisons are not allowed; join them with 'and'")
        op = node.ops[0]
        left = self.expr(node.left)
        right_node = node.comparators[0]
        if isinstance(op, (ast.In, ast.NotIn)):
            return self.membership(node, op, left, right_node)
        if isinstance(op, (ast.Is, ast.IsNot)):
            raise self.err(node, "use == None or != None instead of 'is'")
        right = self.expr(right_node)
        if left.field is None and right.field is not None:
            left, right = right, left
            op = _MIRROR.get(type(op), op)
        if left.type in ("tuple", "list") or right.type in ("tuple", "list"):
            raise self.err(node, "a tuple or list can only follow 'in' or 'not in'")
        right = self.coerce(node, left, right)
        if isinstance(op, (ast.Eq, ast.NotEq)):
            return Typed(ast.Compare(left.node, [op], [right.node]), "bool")
        if right.type == "none":
            raise self.err(node, "None can only be compared with == or !=")
        if left.type not in ("int", "float", "level") or right.type not in ("int", "float", "level"):
            raise self.err(node, f"ordering comparison needs numbers or levels, not {left.type}"
                                 f" and {right.type}")
        return Typed(self.guarded([left, right], lambda a, b: ast.Compare(a, [op], [b])), "bool")

    def guarded(self, parts: list[Typed], build: Callable[[ast.expr, ast.expr], ast.expr]) -> ast.expr:
        """``(t1 := a) is not None and (t2 := b) is not None and build(t1, t2)`` for fields."""
        checks: list[ast.expr] = []
        names: list[ast.expr] = []
        for p in parts:
            if p.type == "none" or (p.field is None and isinstance(p.node, (ast.Constant, ast.Name))
                                    and p.type not in _NULLABLE_CALL):
                names.append(p.node)
                continue
            t = self.temp()
            checks.append(ast.Compare(ast.NamedExpr(ast.Name(t, ast.Store()), p.node),
                                      [ast.IsNot()], [ast.Constant(None)]))
            names.append(ast.Name(t, ast.Load()))
        return ast.BoolOp(ast.And(), [*checks, build(names[0], names[1])]) if checks else build(*names)

    def coerce(self, node: ast.AST, left: Typed, right: Typed) -> Typed:
        """Check two sides compare sensibly; turn level names into levels."""
        lt, rt = left.type, right.type
        if rt == "none" or lt == "none":
            return right
        if lt == "level" and rt == "str" and right.field is None:
            lvl = self.level_const(node, right.const)
            return Typed(ast.Constant(int(lvl)), "level", const=lvl)
        if lt == "level" and rt == "int" and right.field is None:
            raise self.err(node, f"{left.field} is a level; compare it with a level name such as 'secret'")
        numeric = {"int", "float"}
        if lt == rt or (lt in numeric and rt in numeric):
            if left.field == "event.kind" and right.field is None and right.const not in KIND_SET:
                raise self.err(node, f"unknown event kind {right.const!r}")
            return right
        what = left.field or lt
        raise self.err(node, f"type mismatch: {what} is {lt}, compared with {rt}"
                             + (f" {right.const!r}" if right.field is None else f" {right.field}"))

    def level_const(self, node: ast.AST, value: Any) -> Any:
        try:
            return parse_level(value)
        except ValueError as exc:
            raise self.err(node, str(exc)) from None

    def membership(self, node: ast.Compare, op: ast.cmpop, left: Typed, right_node: ast.expr) -> Typed:
        if (isinstance(right_node, ast.Name) and right_node.id not in self.scope.lists
                and right_node.id not in self.scope.macros and right_node.id not in GROUPS):
            raise self.err(right_node, f"unknown list {right_node.id!r}")
        right = self.expr(right_node)
        if right.type not in ("tuple", "list"):
            if right.type == "str":
                raise self.err(node, "use contains(field, \"text\") to search inside a string")
            raise self.err(right_node, "'in' needs a tuple such as (\"a\", \"b\") or a list name")
        values = []
        for v in right.const:
            item = self.coerce(node, left, _typed_const(v))
            values.append(int(item.const) if left.type == "level" and item.const is not None else item.const)
            if left.field == "event.kind" and v not in KIND_SET:
                raise self.err(right_node, f"unknown event kind {v!r}")
        frozen = frozenset(values)
        return Typed(ast.Compare(left.node, [op], [self.const(frozen)]), "bool", const=frozen)

    # -- calls ------------------------------------------------------------
    def call(self, node: ast.Call) -> Typed:
        if not isinstance(node.func, ast.Name):
            raise self.err(node, "only the functions " + ", ".join(FUNCTIONS) + " may be called")
        fname = node.func.id
        if fname not in FUNCTIONS:
            raise self.err(node, f"unknown function {fname!r} (allowed: {', '.join(FUNCTIONS)})")
        if node.keywords:
            raise self.err(node, f"{fname}() takes no keyword arguments")
        if not node.args:
            raise self.err(node, f"{fname}() needs a field as its first argument")
        subject = self.expr(node.args[0])
        if subject.type != "str":
            raise self.err(node.args[0], f"{fname}() needs a string field, not {subject.type}")
        rest = node.args[1:]
        if fname in _STR_FUNCS:
            if rest:
                raise self.err(node, f"{fname}() takes exactly one argument")
            return self.str_func(fname, subject)
        if not rest:
            raise self.err(node, f"{fname}() needs a pattern after the field")
        patterns = self.patterns(fname, rest)
        return Typed(self.predicate(node, fname, subject, patterns), "bool")

    def str_func(self, fname: str, subject: Typed) -> Typed:
        if fname == "lower" and subject.field in self.hoist:
            if subject.field not in self.hoisted:
                self.hoisted[subject.field] = (self.temp(), self.applied(fname, subject))
            return Typed(ast.Name(self.hoisted[subject.field][0], ast.Load()), "str")
        return Typed(self.applied(fname, subject), "str")

    def applied(self, fname: str, subject: Typed) -> ast.expr:
        """``fname(subject)``, None when the subject is unset."""
        t = self.temp()
        value = ast.Name(t, ast.Load())
        if fname == "lower":
            applied: ast.expr = ast.Call(ast.Attribute(value, "lower", ast.Load()), [], [])
        else:
            applied = ast.Subscript(
                ast.Call(ast.Attribute(value, "rpartition", ast.Load()), [ast.Constant("/")], []),
                ast.Constant(2), ast.Load())
        return ast.IfExp(
            ast.Compare(ast.NamedExpr(ast.Name(t, ast.Store()), subject.node), [ast.IsNot()],
                        [ast.Constant(None)]),
            applied, ast.Constant(None))

    def patterns(self, fname: str, args: list[ast.expr]) -> tuple[str, ...]:
        out: list[str] = []
        for arg in args:
            t = self.expr(arg)
            if t.type == "str" and t.field is None:
                out.append(t.const)
            elif t.type in ("tuple", "list"):
                for v in t.const:
                    if not isinstance(v, str):
                        raise self.err(arg, f"{fname}() patterns must be strings, not {v!r}")
                    out.append(v)
            else:
                raise self.err(arg, f"{fname}() patterns must be string literals, tuples or list names")
        if fname == "regex" and len(out) != 1:
            raise self.err(args[0], "regex() takes one pattern")
        return tuple(out)

    def predicate(self, node: ast.Call, fname: str, subject: Typed, pats: tuple[str, ...]) -> ast.expr:
        t = self.temp()
        v = ast.Name(t, ast.Load())
        test: ast.expr
        if fname in ("startswith", "endswith"):
            test = ast.Call(ast.Attribute(v, fname, ast.Load()), [self.const(pats)], [])
        elif fname == "contains":
            if len(pats) == 1:
                test = ast.Compare(ast.Constant(pats[0]), [ast.In()], [v])
            else:
                test = ast.Compare(ast.Call(self.const(literal_search(list(pats))), [v], []), [ast.IsNot()],
                                   [ast.Constant(None)])
        elif fname == "glob":
            try:
                rx = re.compile("|".join(f"(?:{compile_glob(p).pattern})" for p in pats), re.DOTALL)
            except ValueError as exc:
                raise self.err(node.args[1], f"bad glob: {exc}") from None
            test = ast.Compare(ast.Call(self.const(rx.match), [v], []), [ast.IsNot()], [ast.Constant(None)])
        elif fname == "regex":
            try:
                rx = re.compile(pats[0])
            except re.error as exc:
                raise self.err(node.args[1], f"bad regex {pats[0]!r}: {exc}") from None
            test = ast.Compare(ast.Call(self.const(rx.search), [v], []), [ast.IsNot()], [ast.Constant(None)])
        else:  # cidr
            nets = []
            for p in pats:
                try:
                    nets.append(ipaddress.ip_network(p, strict=False))
                except ValueError as exc:
                    raise self.err(node.args[1], f"bad CIDR {p!r}: {exc}") from None
            test = ast.Call(self.const(_cidr_matcher(tuple(nets))), [v], [])
        return ast.BoolOp(ast.And(), [
            ast.Compare(ast.NamedExpr(ast.Name(t, ast.Store()), subject.node), [ast.IsNot()],
                        [ast.Constant(None)]),
            test])


_NULLABLE_CALL = frozenset({"str"})
_MIRROR: dict[type[ast.cmpop], ast.cmpop] = {
    ast.Lt: ast.Gt(), ast.Gt: ast.Lt(), ast.LtE: ast.GtE(), ast.GtE: ast.LtE(),
}


def _first(group: str) -> str:
    return next(f.name for f in FIELDS.values() if f.group == group)


def _typed_const(v: Any) -> Typed:
    if v is None:
        return Typed(ast.Constant(None), "none", const=None)
    if isinstance(v, bool):
        return Typed(ast.Constant(v), "bool", const=v)
    if isinstance(v, int):
        return Typed(ast.Constant(v), "int", const=v)
    if isinstance(v, float):
        return Typed(ast.Constant(v), "float", const=v)
    return Typed(ast.Constant(str(v)), "str", const=str(v))


# Characters of command lines and paths, most common first (lowered text; anything not listed is rarer).
_COMMON_CHARS = " e/tsraoinlcd-.hpmu1b0g2f3y4v5=w96k87_:x,j'\"qz>|"
_RARITY = {ch: i for i, ch in enumerate(_COMMON_CHARS)}
_ANCHOR_MIN_ROOTS = 4  # a trie whose literals start with fewer distinct characters scans fast as it is


def literal_search(literals: list[str]) -> Callable[[str], Any]:
    """One C-level scan that finds whether a value holds any of the literals (a match, or None).

    The alternation is written as a trie (``a(?:bc|d)``, not ``abc|ad``): the
    regex engine tries alternatives one by one at each position, so sharing
    prefixes makes a scan over dozens of literals two to three times faster.
    When the literals start with many different characters, the scan would
    still try nearly every position of a value; then each literal is found
    through its rarest character instead (see ``_anchored``).
    """
    trie: dict[str, Any] = {}
    for lit in literals:
        node = trie
        for ch in lit:
            node = node.setdefault(ch, {})
        node[""] = {}

    def pattern(node: dict[str, Any]) -> str:
        if "" in node:  # a literal ends here: holding it is enough, longer ones add nothing
            return ""
        alts = [re.escape(ch) + pattern(sub) for ch, sub in sorted(node.items())]
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    if len(trie) >= _ANCHOR_MIN_ROOTS and "" not in trie:
        try:
            return re.compile(_anchored(literals)).search
        except (RecursionError, re.error):
            pass
    try:
        return re.compile(pattern(trie)).search
    except (RecursionError, re.error):  # pathologically long literals: the flat alternation still works
        return re.compile("|".join(re.escape(k) for k in sorted(literals, key=len, reverse=True))).search


def _anchored(literals: list[str]) -> str:
    """A pattern that finds any of ``literals`` (none empty) starting from its rarest character.

    ``abcde`` anchored on ``c`` is ``c(?<=abc)(?=de)``: the regex engine skips
    every position whose character is none of the anchors in C, and tries the
    look-arounds only where one is; literals sharing an anchor share its
    alternation. A literal that holds another is dropped (holding the shorter
    one is enough).
    """
    lits = sorted(set(literals), key=len)
    kept: list[str] = []
    for lit in lits:
        if not any(k in lit for k in kept):
            kept.append(lit)
    by_anchor: dict[str, list[tuple[str, str]]] = {}
    rare = len(_COMMON_CHARS)
    for lit in kept:
        at = max(range(len(lit)), key=lambda i: (_RARITY.get(lit[i], rare), -i))
        by_anchor.setdefault(lit[at], []).append((lit[:at + 1], lit[at + 1:]))
    alts = []
    for ch, parts in sorted(by_anchor.items()):
        tests = [(f"(?<={re.escape(head)})" if len(head) > 1 else "") + (f"(?={re.escape(tail)})" if tail else "")
                 for head, tail in sorted(parts)]
        # A literal that is the anchor alone needs nothing more.
        alts.append(re.escape(ch) + ("" if "" in tests else "(?:" + "|".join(tests) + ")"))
    return "|".join(alts)


def _cidr_matcher(nets: tuple[Any, ...]) -> Callable[[str], bool]:
    cache: dict[str, bool] = {}

    def in_cidr(value: str) -> bool:
        hit = cache.get(value)
        if hit is None:
            try:
                addr = ipaddress.ip_address(value.split("%", 1)[0])
            except ValueError:
                hit = False
            else:
                hit = any(addr.version == n.version and addr in n for n in nets)
            if len(cache) > 4096:
                cache.clear()
            cache[value] = hit
        return hit
    return in_cidr


def parse_when(text: str, where: Location, compiler: _Compiler | None = None) -> ast.expr:
    """Parse a condition's text into an expression AST, or raise LoadError."""
    if not isinstance(text, str) or not text.strip():
        raise LoadError(where, "when is empty")
    src = " ".join(text.splitlines()) if getattr(text, "style", None) == ">" else text
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except SyntaxError as exc:
        line = (exc.lineno or 1)
        col = (exc.offset or 1)
        fake = ast.Constant(None)
        fake.lineno, fake.col_offset = line, max(col - 1, 0)
        loc = compiler.loc(fake) if compiler else where
        raise LoadError(loc, f"syntax error in when: {exc.msg}") from None
    return tree.body


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled condition: the predicate and the event kinds it can match."""

    test: Predicate
    kinds: frozenset[str]
    triggers: tuple[Any, ...] | None  # analysis.Trigger entries, one of which holds when the rule does
    tree: ast.expr | None = None  # the parsed condition, to compile again with fields fixed (agent.engine.fold)
    never: bool = False  # with the fixed fields, the condition can never hold


# Groups that attribution takes from the registry alone, the same on every event it attributes: a
# condition reading one may be compiled again with their values fixed (``compile_fixed``).
FIXABLE_GROUPS = ("host",)
_MAX_DEPTH_TEXT = "when is nested too deeply (more than Python's parser can take); split it into macros"


def compile_when(text: str, where: Location, scope: Scope, name: str = "when") -> Compiled:
    """Validate and compile a condition; raise LoadError naming path:line:col."""
    try:
        return _compile_when(text, where, scope, name)
    except (RecursionError, MemoryError):
        raise LoadError(where, _MAX_DEPTH_TEXT) from None


def _compile_when(text: str, where: Location, scope: Scope, name: str) -> Compiled:
    c = _Compiler(text, where, scope, getattr(text, "style", None))
    return _compile_tree(c, parse_when(text, where, c), name)


def compile_fixed(tree: ast.expr, text: str, where: Location, scope: Scope, name: str,
                  fixed: Mapping[str, Any]) -> Compiled:
    """An already valid condition compiled again with the ``fixed`` fields' values as constants, folded.

    What depends on those fields alone is settled here (``agent.engine.fold``),
    and the index triggers take their values into account; the result holds
    for exactly the events, in evaluation order, that the general one does
    whenever the fixed fields have those values.
    """
    try:
        return _compile_tree(_Compiler(text, where, scope, None, fixed), tree, name)
    except (RecursionError, MemoryError):
        raise LoadError(where, _MAX_DEPTH_TEXT) from None


def _compile_tree(c: _Compiler, tree: ast.expr, name: str) -> Compiled:
    c.hoist = _repeated_lowers(tree)
    typed = c.condition(tree)
    body: list[ast.stmt] = [ast.Assign([ast.Name(t, ast.Store())], value) for t, value in c.hoisted.values()]
    result = typed.node
    never = False
    if c.fixed:
        from agent.engine.fold import fold
        body, result = fold(body, result, c.consts)
        never = isinstance(result, ast.Constant) and not result.value
    fn = ast.FunctionDef(
        name=_safe_name(name), args=ast.arguments(posonlyargs=[], args=[ast.arg("e")], kwonlyargs=[],
                                                   kw_defaults=[], defaults=[]),
        body=[*body, ast.Return(result)], decorator_list=[], returns=None)
    module = ast.Module(body=[fn], type_ignores=[])
    ast.fix_missing_locations(module)
    code = compile(module, f"<rule {name}>", "exec")
    fcode = next(k for k in code.co_consts if isinstance(k, types.CodeType))
    # No builtins: the grammar names none, and the function could not reach them anyway.
    test = types.FunctionType(fcode, {"__builtins__": {}, **c.consts}, _safe_name(name))
    from agent.engine.analysis import possible_kinds, triggers
    # The tree is kept only where a fixed field could change something: a condition on the host group.
    keep = tree if any(f.partition(".")[0] in FIXABLE_GROUPS for f in c.read) else None
    return Compiled(test, possible_kinds(tree, c.scope), triggers(tree, c.scope, fixed=c.fixed), keep, never)


def _repeated_lowers(tree: ast.expr) -> frozenset[str]:
    """Fields read through ``lower()`` more than once in a condition (Sigma rules do so often)."""
    seen: dict[str, int] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "lower"
                and len(node.args) == 1 and isinstance(node.args[0], ast.Attribute)
                and isinstance(node.args[0].value, ast.Name)):
            dotted = f"{node.args[0].value.id}.{node.args[0].attr}"
            if dotted in FIELDS:
                seen[dotted] = seen.get(dotted, 0) + 1
    return frozenset(k for k, n in seen.items() if n > 1)


def _safe_name(name: str) -> str:
    return "rule_" + re.sub(r"\W", "_", name)


__all__ = ["FUNCTIONS", "Compiled", "Scope", "compile_fixed", "compile_when", "literal_search", "parse_when"]
