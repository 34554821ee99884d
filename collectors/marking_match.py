"""The 密级标志 matcher: finds ``机密★10年``-style markings in plain text.

A marking is a level name (秘密, 机密, 绝密), the star ``★`` and an optional
保密期限: a span (``10年``, ``6个月``, ``十年``), ``长期``, ``启用前`` or a
解密时间 date (``2030年6月30日``). Full-width digits and spaces count as
their ASCII forms (the reported period is folded to ASCII), and a few spaces
may sit between the parts, because PDF text layers and typed documents put
them there (``机密 ★ 10 年``).

Only the starred form counts. A bare ``秘密`` at the top of a page is the
older header style, but the same two characters are everyday words in body
text (保守国家秘密, 商业秘密), so counting them would flag most policy
documents; ``☆`` and ASCII ``*`` are not the standard mark (GB/T 9704) and are
not accepted either.

Text is normalised before matching (:func:`collectors.marking_text.normalize`):
zero-width and other format characters cannot split a marking, full-width and
compatibility forms count as their plain forms, and a run of spaces counts as
one. Offsets count characters of the normalised text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.levels import Level
from collectors.marking_text import normalize

_LEVEL_OF = {"秘密": Level.CONFIDENTIAL, "机密": Level.SECRET, "绝密": Level.TOP_SECRET}

# Applied to the period only: translating whole documents would cost ten
# times the matching, and the pattern's digits and \s already take full-width
# digits and the ideographic space.
_FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_FOLD[0x3000] = 0x20

# Spaces and tabs may split a marking (PDF text layers space out CJK); a line
# break may not, so words from two paragraphs never join into one marking.
_S = r"[^\S\r\n]{0,2}"
_S3 = r"[^\S\r\n]{0,3}"
_D = "[0-9０-９]"  # not \d, which takes every script's digits
_DATE = rf"{_D}{{4}}{_S}年{_S}{_D}{{1,2}}{_S}月{_S}{_D}{{1,2}}{_S}日"
_NUM = rf"(?:{_D}(?:[ \t]?{_D}){{0,3}}|[一二三四五六七八九十两]{{1,3}})"
_PERIOD = rf"{_DATE}|{_NUM}{_S}(?:年|个{_S}月)|长{_S}期|启{_S}用{_S}前"
_PATTERN = re.compile(
    rf"(?P<level>[秘机绝]{_S}密){_S3}★(?:{_S3}(?P<period>{_PERIOD}))?"
)
_SPACE = re.compile(r"\s+")

# Longer than any match of _PATTERN (its quantifiers are all bounded), so a
# marking that straddles two fed chunks is always whole in one window.
OVERLAP = 96
_WINDOW = 64 * 1024


@dataclass(frozen=True, slots=True)
class Marking:
    """One 密级标志 found in text: its level, 保密期限 and where it starts."""

    level: Level
    period: str | None  # e.g. "10年", "长期", "启用前", "2030年6月30日"; None when absent
    offset: int  # character offset of the level name in the text scanned
    text: str  # the marking as written in the document


@dataclass(frozen=True, slots=True)
class Position:
    """Where in a file a marking was found.

    ``offset`` counts characters from the start of ``part`` (an XML part of an
    Office file, e.g. ``word/document.xml``) or of ``page`` (a PDF page,
    1-based); in a plain-text file both are None and it counts from the start
    of the file's text.
    """

    offset: int
    part: str | None = None
    page: int | None = None


def scan_text(text: str) -> list[Marking]:
    """Return every starred 密级标志 in ``text``, in order of appearance.

    Bare level words without ``★`` (a ``秘密`` header alone) are ambiguous and
    deliberately not reported; see the module docstring.
    """
    return [_marking(m, 0) for m in _PATTERN.finditer(normalize(text))]


def _marking(m: re.Match[str], base: int) -> Marking:
    level = _LEVEL_OF[_SPACE.sub("", m.group("level"))]
    raw_period = m.group("period")
    period = _SPACE.sub("", raw_period).translate(_FOLD) if raw_period else None
    return Marking(level=level, period=period, offset=base + m.start(), text=m.group(0))


@dataclass(frozen=True, slots=True)
class Best:
    """The highest marking seen so far and where it was first seen."""

    marking: Marking
    position: Position


class StreamScanner:
    """Scans text fed in pieces, part by part, keeping the highest marking.

    The first occurrence of the highest level wins. Memory stays bounded by a
    window plus ``OVERLAP`` characters whatever the size of a part.
    """

    def __init__(self) -> None:
        self.best: Best | None = None
        self._buf = ""
        self._base = 0  # part offset of _buf[0]
        self._part: str | None = None
        self._page: int | None = None
        self.chars = 0  # characters seen in all parts

    @property
    def done(self) -> bool:
        """True once nothing later could change the result (绝密 found)."""
        return self.best is not None and self.best.marking.level is Level.TOP_SECRET

    def start_part(self, part: str | None = None, page: int | None = None) -> None:
        """Begin a new part; offsets restart at zero."""
        self.end_part()
        self._part, self._page, self._base = part, page, 0

    def feed(self, text: str) -> None:
        """Add text to the current part, scanning whole windows as they fill."""
        text = normalize(text)
        if text[:1] == " " and self._buf[-1:] == " ":
            text = text[1:]  # one run of spaces, however it was fed
        self.chars += len(text)
        self._buf += text
        if len(self._buf) >= _WINDOW:
            self._scan(final=False)

    def end_part(self) -> None:
        """Scan what is left of the current part."""
        if self._buf:
            self._scan(final=True)

    def _scan(self, *, final: bool) -> None:
        buf = self._buf
        limit = len(buf) if final else len(buf) - OVERLAP
        for m in _PATTERN.finditer(buf):
            if m.start() >= limit:
                break
            self._offer(_marking(m, self._base))
        if final:
            self._base += len(buf)
            self._buf = ""
        else:
            self._base += limit
            self._buf = buf[limit:]

    def _offer(self, marking: Marking) -> None:
        if self.best is None or marking.level > self.best.marking.level:
            position = Position(offset=marking.offset, part=self._part, page=self._page)
            self.best = Best(marking, position)
