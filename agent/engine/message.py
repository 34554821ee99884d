"""Message templates: ``{group.field}`` placeholders checked at load, rendered per finding."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import LoadError, Location
from agent.events import FIELDS, Event
from agent.levels import Level
from agent.textsafe import CAP_BYTES, cap

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
# A missing value reads as unknown, never as a bare "-" (which also starts a formula in a spreadsheet).
MISSING = {"zh": "（未知）", "en": "(unknown)"}
# The usual zone names of a registry, in Chinese; other names are shown as registered.
ZONES_ZH = {"internet": "互联网", "intranet": "内网", "extranet": "外网", "loopback": "本机回环",
            "dmz": "隔离区", "govnet": "电子政务外网", "classified": "涉密网"}


@dataclass(frozen=True, slots=True)
class Template:
    """A message split into literal text and field references."""

    parts: tuple[tuple[str, str | None], ...]  # (literal, field or None)
    # Per part: (literal, the field's getter or None, whether it is a zone): rendered per finding.
    _plan: tuple[tuple[str, Callable[[Event], Any] | None, bool], ...] = field(
        init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        plan = tuple((literal, None if name is None else _getter(name), name is not None and name.endswith("zone"))
                     for literal, name in self.parts)
        object.__setattr__(self, "_plan", plan)

    def render(self, event: Event, lang: str = "en") -> str:
        """The message for one event; a missing field shows as （未知） / (unknown)."""
        out = []
        zh = lang == "zh"
        for literal, get, zone in self._plan:
            out.append(literal)
            if get is not None:
                value = get(event)
                if zh and zone and isinstance(value, str):
                    value = ZONES_ZH.get(value, value)
                out.append(_show(value, lang))
        text = "".join(out)
        return text if len(text) <= CAP_BYTES // 4 else cap(text)[0]


def _getter(dotted: str) -> Callable[[Event], Any]:
    """What reads a catalogue field from an event (as ``Event.field``, resolved once)."""
    group, _, name = dotted.partition(".")
    return operator.attrgetter(name if group == "event" else dotted)


def _show(value: object, lang: str) -> str:
    if value is None:
        return MISSING["zh" if lang == "zh" else "en"]
    if isinstance(value, Level):
        return value.zh if lang == "zh" else str(value)
    if isinstance(value, bool):
        if lang == "zh":
            return "是" if value else "否"
        return "yes" if value else "no"
    return str(value)


def compile_template(text: str, where: Location) -> Template:
    """Check every placeholder names a catalogue field; raise LoadError if not."""
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        raise LoadError(where, "unbalanced brace in message (write {{ or }} for a literal brace)")
    parts: list[tuple[str, str | None]] = []
    pos = 0
    literal = ""
    for m in _PLACEHOLDER.finditer(text):
        literal += text[pos:m.start()]
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal += token[0]
            continue
        name = (m.group(1) or "").strip()
        if name not in FIELDS:
            raise LoadError(where, f"unknown field {{{name}}} in message")
        parts.append((literal, name))
        literal = ""
    parts.append((literal + text[pos:], None))
    return Template(tuple(parts))
