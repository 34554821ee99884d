"""Path globs with ``**``: compiled once to anchored regular expressions.

``*`` matches within one path component, ``**`` across components (``/a/**``
also matches ``/a`` itself), ``?`` one character, ``[...]`` a class.
"""

from __future__ import annotations

import re


def glob_to_regex(pattern: str) -> str:
    """Translate a glob to a regular expression source; ValueError if malformed."""
    if not pattern:
        raise ValueError("empty glob")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith(("[!", "[^"), i) else i + 1)
            if end < 0:
                raise ValueError(f"unclosed '[' at position {i + 1}")
            body = pattern[i + 1:end]
            if body.startswith(("!", "^")):
                body = "^" + body[1:]
            if body in ("", "^"):
                raise ValueError(f"empty character class at position {i + 1}")
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif c == "]":
            raise ValueError(f"unmatched ']' at position {i + 1}")
        else:
            out.append(re.escape(c))
        i += 1
    src = "".join(out)
    # "/srv/x/**" should also match the directory "/srv/x" itself.
    if pattern.endswith("/**"):
        src = src[: -len("/.*")] + "(?:/.*)?"
    return src


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a glob to a regex that must match the whole value."""
    src = glob_to_regex(pattern)
    try:
        return re.compile(r"\A(?:" + src + r")\Z", re.DOTALL)
    except re.error as exc:
        raise ValueError(f"bad glob: {exc}") from None


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard: a cheap pre-filter."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern
