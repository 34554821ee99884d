"""A Sigma ``condition`` as DutyWatch condition text over its selections.

Grammar (Sigma specification, without aggregations)::

    expr   := term ("or" term)*
    term   := factor ("and" factor)*
    factor := "not" factor | "(" expr ")" | quant | NAME
    quant  := ("1" | "all") "of" (PATTERN | "them")

``PATTERN`` is a selection name with ``*`` wildcards; ``them`` is every
selection whose name does not start with ``_``. A pattern that names no
selection, an unknown name, or a syntax error is a load error; an
aggregation (``| count() ...``) or ``N of`` with N other than 1 is valid
Sigma that DutyWatch does not evaluate (``SigmaUnsupported``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping

from agent.engine.sigma_values import Cond, SigmaUnsupported, all_of, any_of
from agent.errors import LoadError, Location

_TOKEN = re.compile(r"\(|\)|\||[^\s()|]+")
_KEYWORDS = ("and", "or", "not", "of", "them")


class _Parser:
    def __init__(self, text: str, where: Location, selections: Mapping[str, Cond]) -> None:
        self.text = text
        self.where = where
        self.selections = selections
        self.tokens = [(m.group(0), m.start()) for m in _TOKEN.finditer(text)]
        self.pos = 0
        # A quoted scalar's text starts one column after its mark.
        self.shift = 1 if getattr(text, "style", None) in ("'", '"') else 0

    def at(self, offset: int) -> Location:
        if "\n" in self.text[:offset]:
            return self.where
        return Location(self.where.path, self.where.line, self.where.col + self.shift + offset)

    def peek(self) -> str | None:
        return self.tokens[self.pos][0].lower() if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, int]:
        if self.pos >= len(self.tokens):
            raise LoadError(self.at(len(self.text)), "condition ends too early")
        tok = self.tokens[self.pos]
        self.pos += 1
        if tok[0] == "|":
            raise SigmaUnsupported(self.at(tok[1]), "aggregation conditions (| count() ...) are not supported")
        return tok

    def parse(self) -> Cond:
        if not self.tokens:
            raise LoadError(self.where, "condition is empty")
        out = self.expr()
        if self.pos < len(self.tokens):
            tok, off = self.take()
            raise LoadError(self.at(off), f"unexpected {tok!r} in condition")
        return out

    def expr(self) -> Cond:
        parts = [self.term()]
        while self.peek() == "or":
            self.take()
            parts.append(self.term())
        return any_of(parts)

    def term(self) -> Cond:
        parts = [self.factor()]
        while self.peek() == "and":
            self.take()
            parts.append(self.factor())
        return all_of(parts)

    def factor(self) -> Cond:
        tok, off = self.take()
        low = tok.lower()
        if low == "not":
            return self.factor().negated()
        if tok == "(":
            inner = self.expr()
            close, coff = self.take()
            if close != ")":
                raise LoadError(self.at(coff), f"expected ')' in condition, found {close!r}")
            return inner
        if self.peek() == "of":
            return self.quantifier(low, off)
        if low in _KEYWORDS or tok == ")":
            raise LoadError(self.at(off), f"unexpected {tok!r} in condition")
        if tok not in self.selections:
            raise LoadError(self.at(off), f"condition names {tok!r}, which is not a selection of this rule")
        return self.selections[tok]

    def quantifier(self, count: str, off: int) -> Cond:
        self.take()  # "of"
        target, toff = self.take()
        if count not in ("1", "all"):
            if count.isdigit():
                raise SigmaUnsupported(self.at(off), f"'{count} of' is not supported (only '1 of' and 'all of')")
            raise LoadError(self.at(off), f"expected '1 of' or 'all of', found {count!r}")
        if target.lower() == "them":
            names = [n for n in self.selections if not n.startswith("_")]
        else:
            names = [n for n in self.selections if fnmatch.fnmatchcase(n, target)]
        if not names:
            raise LoadError(self.at(toff), f"{target!r} names no selection of this rule")
        parts = [self.selections[n] for n in names]
        return any_of(parts) if count == "1" else all_of(parts)


def condition_of(text: str, where: Location, selections: Mapping[str, Cond]) -> Cond:
    """Translate one condition; ``selections`` maps each selection name to its condition."""
    return _Parser(text, where, selections).parse()


__all__ = ["condition_of"]
