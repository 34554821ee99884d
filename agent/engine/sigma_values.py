"""One Sigma field test (``Field|mod|mod: values``) as a DutyWatch condition.

The result is ``when`` text in DutyWatch's own condition language, compiled
afterwards by the same checker and compiler as every native rule, so the
indexes see ordinary ``startswith``/``endswith``/``contains``/``==`` tests.

Semantics, as the Sigma specification gives them:

- String matching is case-insensitive: the field is read through
  ``lower()`` and the patterns are lowered once, here. ``re`` is the
  exception (case-sensitive unless ``|i``), and so are values produced by
  ``base64``/``base64offset`` (an encoding is case-significant) and values
  marked ``|cased``.
- ``re`` searches (unanchored); ``*`` and ``?`` are wildcards, ``\\*``,
  ``\\?`` and ``\\\\`` their escapes (any other backslash is literal);
  a plain value must match the whole field.
- A list of values is any-of, or all-of with ``|all``.

Unset fields, in three-valued logic (as SQL's NULL): a test on a field the
event does not have is *unknown*, neither true nor false, and ``not`` of
unknown is unknown; a rule fires only when its condition is true. So a
field the event lacks matches no positive selection, and ``selection and
not filter`` does not fire on an event that lacks the filter's field: the
rule cannot tell that the event is not the benign case it excludes. (A rule
judges only the event kinds of its category, and the collectors fill the
fields Sigma expects of those, so this is the exception, not the rule.)
Tests that are about absence are decided: ``null`` and ``''`` accept an
unset field (the empty value of a Sysmon record), ``|exists`` says whether
the field is set. Each test is therefore compiled twice, as the condition
under which it holds (``Cond.true``) and the one under which it is known not
to (``Cond.false``); ``not`` swaps them.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.engine.sigma_fields import INITIATED, RENAME_KIND, TARGET_FILE, Category, field_type
from agent.errors import LoadError, Location
from agent.yamlsrc import LDict, LList, where_of


class SigmaUnsupported(LoadError):
    """A valid Sigma construct DutyWatch cannot evaluate (a modifier, field or log source)."""


_MATCH = ("contains", "startswith", "endswith")
_ENCODINGS = {"wide": "utf-16le", "utf16le": "utf-16le", "utf16be": "utf-16be", "utf16": "utf-16"}
_COMPARE = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_RE_FLAGS = ("i", "m", "s")
KNOWN_MODIFIERS = frozenset((*_MATCH, "all", "re", *_RE_FLAGS, "cidr", "windash", "base64", "base64offset",
                             *_ENCODINGS, "cased", "exists", *_COMPARE))
_DASHES = ("-", "/", "\u2013", "\u2014", "\u2015")  # windash: - / en dash, em dash, horizontal bar
_WINDASH_AT = re.compile(r"\B[-/]\b")
_MAX_VARIANTS = 1024


@dataclass(frozen=True, slots=True)
class Cond:
    """A test in three-valued logic: condition texts for "holds" and for "known not to hold"."""

    true: str
    false: str

    @staticmethod
    def decided_when(true: str, known: str | None) -> Cond:
        """A test that holds on ``true`` and is decided when ``known`` holds (None: always decided)."""
        return Cond(true, f"(not {true})" if known is None else f"({known} and not {true})")

    def negated(self) -> Cond:
        """``not``: true where this is false, false where it is true, unknown where it is unknown."""
        return Cond(self.false, self.true)


def all_of(conds: Sequence[Cond]) -> Cond:
    """``and``: true when all are true, false when any is false."""
    return Cond(_join([c.true for c in conds], "and"), _join([c.false for c in conds], "or"))


def any_of(conds: Sequence[Cond]) -> Cond:
    """``or``: true when any is true, false when all are false."""
    return Cond(_join([c.true for c in conds], "or"), _join([c.false for c in conds], "and"))


@dataclass(frozen=True, slots=True)
class _Atom:
    """One pattern test: ``op`` is eq, contains, startswith, endswith, regex or cidr."""

    op: str
    pattern: str
    cased: bool
    empty: bool  # whether the test accepts the empty string


def values_of(value: Any, where: Location) -> list[tuple[Any, Location]]:
    """A test's values with their places: a scalar is a one-value list."""
    if isinstance(value, LList):
        if not value:
            raise LoadError(where, "a field needs at least one value")
        return [(v, value.at(i)) for i, v in enumerate(value)]
    return [(value, where_of(value, where))]


def field_test(cat: Category, key: str, key_at: Location, value: Any, value_at: Location) -> Cond:
    """The condition of one ``Field|modifiers: values`` entry of a selection."""
    name, *mods = key.split("|")
    target = cat.field(name)
    if target is None:
        raise SigmaUnsupported(key_at, f"field {name!r} has no DutyWatch mapping in category {cat.name} "
                                       f"(mapped: {', '.join(cat.fields)})")
    for m in mods:
        if m not in KNOWN_MODIFIERS:
            what = "placeholder expansion" if m == "expand" else "modifier"
            raise SigmaUnsupported(key_at, f"unsupported {what} {m!r} on {name}")
    if len(set(mods)) != len(mods):
        raise LoadError(key_at, f"repeated modifier on {name}")
    items = values_of(value, value_at)
    for v, at in items:
        if isinstance(v, (LDict, LList)):
            raise LoadError(at, f"a value of {name} must be a scalar, not a {type(v).__name__[1:].lower()}")
    if target == INITIATED:
        return _initiated(name, mods, items, key_at)
    if target == TARGET_FILE:
        # A rename creates its destination name; other file events name one path.
        dest = _test("file.dest_path", name, mods, items, key_at)
        path = _test("file.path", name, mods, items, key_at)
        rename, other = f"event.kind == {RENAME_KIND!r}", f"event.kind != {RENAME_KIND!r}"
        return Cond(f"(({rename} and {dest.true}) or ({other} and {path.true}))",
                    f"(({rename} and {dest.false}) or ({other} and {path.false}))")
    return _test(target, name, mods, items, key_at)


def _initiated(name: str, mods: list[str], items: list[tuple[Any, Location]], key_at: Location) -> Cond:
    if mods:
        raise SigmaUnsupported(key_at, f"modifiers on {name} are not supported")
    kinds = set()
    for v, at in items:
        text = str(v).lower() if isinstance(v, (str, bool)) else None
        if text not in ("true", "false"):
            raise LoadError(at, f"{name} must be 'true' or 'false', not {v!r}")
        kinds.add("net.connect" if text == "true" else "net.accept")
    return Cond.decided_when(f"event.kind in {tuple(sorted(kinds))!r}", None)


def _test(dotted: str, name: str, mods: list[str], items: list[tuple[Any, Location]], key_at: Location) -> Cond:
    if field_type(dotted) == "int":
        return _int_test(dotted, name, mods, items, key_at)
    return _str_test(dotted, name, mods, items, key_at)


def _int_test(dotted: str, name: str, mods: list[str], items: list[tuple[Any, Location]],
              key_at: Location) -> Cond:
    cmp = [m for m in mods if m in _COMPARE]
    other = [m for m in mods if m not in _COMPARE and m != "exists"]
    if other or len(cmp) > 1:
        raise SigmaUnsupported(key_at, f"{name} is numeric; modifier {'|'.join(mods)!r} applies to text")
    if "exists" in mods:
        return _exists(dotted, name, mods, items, numeric=True)
    nums: list[int] = []
    null = False
    for v, at in items:
        if v is None or v == "":
            null = True
        elif isinstance(v, int) and not isinstance(v, bool):
            nums.append(v)
        elif isinstance(v, str) and v.strip().isdigit():
            nums.append(int(v))
        else:
            raise SigmaUnsupported(at, f"{name} is numeric; cannot match it against {v!r}")
    if cmp:
        if null or len(nums) != 1:
            raise LoadError(key_at, f"{name}|{cmp[0]} takes one number")
        return Cond.decided_when(f"{dotted} {_COMPARE[cmp[0]]} {nums[0]}", f"{dotted} != None")
    parts = []
    if nums:
        parts.append(f"{dotted} == {nums[0]}" if len(nums) == 1 else f"{dotted} in {tuple(nums)!r}")
    if null:
        parts.append(f"{dotted} == None")
    return Cond.decided_when(_join(parts, "or"), None if null else f"{dotted} != None")


def _exists(dotted: str, name: str, mods: list[str], items: list[tuple[Any, Location]], numeric: bool) -> Cond:
    if len(mods) != 1 or len(items) != 1 or not isinstance(items[0][0], bool):
        raise LoadError(items[0][1], f"{name}|exists takes one value, true or false")
    # An empty text is the empty value of a record, as null is (see the module docstring).
    present = f"{dotted} != None" if numeric else f"{dotted} not in ('', None)"
    return Cond.decided_when(present if items[0][0] else f"not {present}", None)


def _str_test(dotted: str, name: str, mods: list[str], items: list[tuple[Any, Location]],
              key_at: Location) -> Cond:
    m = set(mods)
    if "exists" in m:
        return _exists(dotted, name, mods, items, numeric=False)
    if m & set(_COMPARE):
        raise SigmaUnsupported(key_at, f"{name} is text; numeric comparison modifiers do not apply")
    if "re" in m:
        atoms = _regex_atoms(name, m, items, key_at)
    elif "cidr" in m:
        atoms = _cidr_atoms(dotted, name, m, items, key_at)
    else:
        if m & set(_RE_FLAGS):
            raise LoadError(key_at, f"modifiers i, m and s need re on {name}")
        atoms = _string_atoms(name, m, items, key_at)
    return _render(dotted, atoms, "all" in m)


def _regex_atoms(name: str, m: set[str], items: list[tuple[Any, Location]], key_at: Location) -> list[_Atom]:
    if m - {"re", "all", *_RE_FLAGS}:
        raise SigmaUnsupported(key_at, f"re cannot be combined with {', '.join(sorted(m - {'re', 'all'}))} on {name}")
    flags = "".join(f for f in _RE_FLAGS if f in m)
    out = []
    for v, at in items:
        if not isinstance(v, str):
            raise LoadError(at, f"a regular expression must be a string, not {v!r}")
        pattern = f"(?{flags}){v}" if flags else str(v)
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise SigmaUnsupported(at, f"regular expression {v!r} is not valid for Python's re: {exc}") from None
        out.append(_Atom("regex", pattern, True, rx.search("") is not None))
    return out


def _cidr_atoms(dotted: str, name: str, m: set[str], items: list[tuple[Any, Location]],
                key_at: Location) -> list[_Atom]:
    if m - {"cidr", "all"}:
        raise SigmaUnsupported(key_at, f"cidr cannot be combined with other modifiers on {name}")
    if dotted not in ("net.remote_ip", "net.local_ip"):
        raise SigmaUnsupported(key_at, f"cidr applies to addresses, not {name}")
    out = []
    for v, at in items:
        try:
            net = ipaddress.ip_network(str(v), strict=False)
        except ValueError as exc:
            raise LoadError(at, f"bad CIDR {v!r}: {exc}") from None
        out.append(_Atom("cidr", str(net), True, False))
    return out


def _string_atoms(name: str, m: set[str], items: list[tuple[Any, Location]], key_at: Location) -> list[_Atom]:
    ops = [x for x in _MATCH if x in m]
    if len(ops) > 1:
        raise LoadError(key_at, f"{' and '.join(ops)} cannot be combined on {name}")
    op = ops[0] if ops else "eq"
    encodings = [x for x in _ENCODINGS if x in m]
    b64 = [x for x in ("base64", "base64offset") if x in m]
    if len(b64) > 1 or len(encodings) > 1:
        raise LoadError(key_at, f"conflicting encoding modifiers on {name}")
    if encodings and not b64:
        raise SigmaUnsupported(key_at, f"{encodings[0]} without base64 does not apply to Linux text on {name}")
    out: list[_Atom] = []
    for v, at in items:
        if v is None:
            out.append(_Atom("eq", "", False, True))  # null: unset, or the empty value
            continue
        text = _scalar_text(v)
        variants = _windash(text, at) if "windash" in m else [text]
        if b64:
            for variant in variants:
                if _has_wildcard(variant):
                    raise LoadError(at, f"wildcards cannot be base64-encoded ({name})")
                raw = _unescape(variant).encode(_ENCODINGS[encodings[0]] if encodings else "utf-8")
                for enc in _base64(raw, offset=b64[0] == "base64offset"):
                    out.append(_Atom(op, enc, True, enc == ""))
            continue
        cased = "cased" in m
        for variant in variants:
            out.append(_pattern_atom(op, variant, cased))
    return out


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _windash(text: str, at: Location) -> list[str]:
    spots = [mt.start() for mt in _WINDASH_AT.finditer(text)]
    if len(_DASHES) ** len(spots) > _MAX_VARIANTS:
        raise SigmaUnsupported(at, f"windash on {text!r} gives too many variants")
    out = []
    for combo in itertools.product(_DASHES, repeat=len(spots)):
        chars = list(text)
        for pos, dash in zip(spots, combo, strict=True):
            chars[pos] = dash
        out.append("".join(chars))
    return out


def _base64(raw: bytes, offset: bool) -> list[str]:
    if not offset:
        return [base64.b64encode(raw).decode("ascii")]
    # The three encodings of ``raw`` at each byte offset mod 3, cut to the
    # characters that do not depend on the bytes around it.
    starts, ends = (0, 2, 3), (None, -3, -2)
    return [base64.b64encode(b" " * i + raw)[starts[i]:ends[(len(raw) + i) % 3]].decode("ascii")
            for i in range(3)]


def _tokens(text: str) -> list[str]:
    """Literal characters and the wildcards ``*``/``?`` (as the one-letter tokens ``\\0*``/``\\0?``)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "*?\\":
            out.append(text[i + 1])
            i += 2
            continue
        out.append("\0" + c if c in "*?" else c)
        i += 1
    return out


def _has_wildcard(text: str) -> bool:
    return any(t in ("\0*", "\0?") for t in _tokens(text))


def _unescape(text: str) -> str:
    return "".join(t[-1] for t in _tokens(text))


def _pattern_atom(op: str, text: str, cased: bool) -> _Atom:
    tokens = _tokens(text)
    fold = (lambda s: s) if cased else str.lower
    if not any(t in ("\0*", "\0?") for t in tokens):
        literal = fold("".join(tokens))
        return _Atom(op, literal, cased, literal == "")
    body = "".join(".*" if t == "\0*" else "." if t == "\0?" else re.escape(fold(t)) for t in tokens)
    head = "^" if op in ("eq", "startswith") else ""
    tail = r"\Z" if op in ("eq", "endswith") else ""
    pattern = f"(?s){head}{body}{tail}"
    return _Atom("regex", pattern, cased, re.search(pattern, "") is not None)


def _render(dotted: str, atoms: Sequence[_Atom], all_of: bool) -> Cond:
    """Join atoms (any-of, or all-of), grouping literal tests of one kind into one call.

    A test that accepts the empty value accepts an unset field too, and is
    always decided; any other is decided only when the field is set.
    """
    def subject(cased: bool) -> str:
        return dotted if cased else f"lower({dotted})"

    parts: list[str] = []
    if all_of:
        parts = [_one(subject(a.cased), a) for a in atoms]
        empty = all(a.empty for a in atoms)
    else:
        groups: dict[tuple[str, bool], list[str]] = {}
        for a in atoms:
            if a.op in ("regex",):
                parts.append(_one(subject(a.cased), a))
            elif a.op == "cidr":
                groups.setdefault(("cidr", True), []).append(a.pattern)
            else:
                groups.setdefault((a.op, a.cased), []).append(a.pattern)
        for (op, cased), pats in groups.items():
            uniq = list(dict.fromkeys(pats))
            subj = dotted if op == "cidr" else subject(cased)
            if op == "eq":
                parts.append(f"{subj} == {uniq[0]!r}" if len(uniq) == 1 else f"{subj} in {tuple(uniq)!r}")
            else:
                parts.append(f"{op}({subj}, {', '.join(repr(p) for p in uniq)})")
        empty = any(a.empty for a in atoms)
    text = _join(parts, "and" if all_of else "or")
    if empty:
        return Cond.decided_when(f"({dotted} == None or {text})", None)
    return Cond.decided_when(text, f"{dotted} != None")


def _one(subj: str, a: _Atom) -> str:
    if a.op == "eq":
        return f"{subj} == {a.pattern!r}"
    if a.op == "cidr":
        return f"cidr({subj}, {a.pattern!r})"
    return f"{a.op}({subj}, {a.pattern!r})"


def _join(parts: list[str], op: str) -> str:
    return parts[0] if len(parts) == 1 else "(" + f" {op} ".join(parts) + ")"


__all__ = ["KNOWN_MODIFIERS", "Cond", "SigmaUnsupported", "all_of", "any_of", "field_test", "values_of"]
