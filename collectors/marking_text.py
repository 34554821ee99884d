"""Bytes to text for the marking scan: charset decoding and XML tag stripping.

Both work on chunks, so memory stays bounded however large or deeply nested
the input is. XML is never parsed into a tree and no entity beyond the five
predefined ones and numeric references is expanded: a DTD, internal or
external, is just markup to skip.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

# UTF-32 first: its little-endian BOM starts with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# High bytes of UTF-16 code units that Chinese text is made of: ASCII (0x00),
# general punctuation and symbols (0x20-0x27, ★ is U+2605), CJK punctuation
# (0x30), CJK ideographs (0x34-0x4D extension A, 0x4E-0x9F) and full-width
# forms (0xFF).
_UTF16_HIGH = frozenset({0x00, 0x20, 0x21, 0x22, 0x25, 0x26, 0x27, 0x30, 0xFF, *range(0x34, 0xA0)})


def sniff_encoding(head: bytes) -> str | None:
    """The encoding of text that starts with ``head``: from its BOM, or UTF-32/UTF-16 without one.

    Without a BOM, UTF-32 shows as code units whose top byte is zero and that
    stay below U+110000; UTF-16 as one byte of each unit (the high one) that
    keeps to the few values Chinese and ASCII text use while the other varies.
    Valid UTF-8 is never taken for UTF-16. Returns None when nothing says so
    (the caller then tries UTF-8, then GB18030).
    """
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    sample = head[:4096]
    if len(sample) < 8:
        return None
    if b"\x00" not in sample:  # UTF-32 and ASCII-bearing UTF-16 always hold NULs; UTF-8 never
        try:
            sample.decode("utf-8")
            return None
        except UnicodeDecodeError as e:
            if e.start >= len(sample) - 3:  # only a character cut at the end of the sample
                return None
    else:
        whole = len(sample) & ~3
        b0, b1, b2, b3 = (sample[i:whole:4] for i in range(4))
        if b3.count(0) == len(b3) and max(b2) <= 0x10 and b0.count(0) < len(b0):
            return "utf-32-le"
        if b0.count(0) == len(b0) and max(b1) <= 0x10 and b3.count(0) < len(b3):
            return "utf-32-be"
    even = len(sample) & ~1
    for order, hi in (("utf-16-le", 1), ("utf-16-be", 0)):
        highs = sample[hi:even:2]
        lows = sample[1 - hi:even:2]
        fit = sum(b in _UTF16_HIGH for b in highs) / len(highs)
        if fit >= 0.95 and len(set(lows)) > 2 and len(set(highs)) < len(set(lows)):
            return order
    return None


# Characters that render as nothing: the format characters (category Cf:
# zero-width space and joiners, word joiner, BOM, bidi controls, soft hyphen,
# tags), the combining grapheme joiner and the Hangul fillers. Removed before
# matching, so they cannot split a marking.
_HIDDEN = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u180e"
    "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]+"
)
# The same set, BMP only, as single characters: ``in`` finds each far faster than a
# regular expression scans the text, and most text holds none of them.
_HIDDEN_BMP = "".join(map(chr, (
    0xAD, 0x34F, *range(0x600, 0x606), 0x61C, 0x6DD, 0x70F, 0x890, 0x891, 0x8E2, 0x115F, 0x1160, 0x180E,
    *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2065), *range(0x2066, 0x2070), 0x3164,
    0xFEFF, 0xFFA0, 0xFFF9, 0xFFFA, 0xFFFB,
)))
_BLANK_CHARS = "\t\f\v\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_ODD_BLANKS = re.compile("[" + _BLANK_CHARS + "]")
_SPACES = re.compile(" {2,}")
_FOLD_SPAN = 40  # characters after a ★ folded by NFKC: longer than any 保密期限


def _fold_near_marks(text: str) -> str:
    """NFKC only where it can change a match: the 保密期限 after each ★ (no compatibility form
    folds to a level character, to 密 or to ★). Folding all the text would cost more than all
    the matching: Chinese text is full of full-width punctuation, so NFKC rewrites every string."""
    out: list[str] = []
    last = 0
    at = text.find("★")
    while at >= 0:
        start, end = max(at, last), at + _FOLD_SPAN
        out += (text[last:start], unicodedata.normalize("NFKC", text[start:end]))
        last = end
        at = text.find("★", end)
    out.append(text[last:])
    return "".join(out)


def normalize(text: str) -> str:
    """Text as a reader sees it, for matching.

    Invisible characters go; spaces of every width become one plain space
    per run (a line break stays, so two paragraphs never join into one
    marking); full-width and compatibility forms after a ★ are folded by NFKC
    (``１０年`` and ``⑩年`` read as ``10年``).
    """
    if not text.isascii():
        if any(c in text for c in _HIDDEN_BMP) or len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text):
            text = _HIDDEN.sub("", text)
        if "★" in text:
            text = _fold_near_marks(text)
    if any(c in text for c in _BLANK_CHARS):
        text = _ODD_BLANKS.sub(" ", text)
    return _SPACES.sub(" ", text) if "  " in text else text


class TextDecoder:
    """Incremental decoding: a BOM or UTF-16/32 shape decides; else UTF-8, falling back to GB18030.

    The fallback happens at the first chunk that is not valid UTF-8 and holds
    for the rest of the input; GB18030 is a superset of GBK and GB2312, the
    usual encodings of Chinese text files written on Windows.
    """

    def __init__(self) -> None:
        self._head = b""
        self._decoder: codecs.IncrementalDecoder | None = None
        self._strict = False
        self.encoding = ""

    def decode(self, data: bytes, *, final: bool = False) -> str:
        """Return the text of ``data``; pass ``final=True`` with the last chunk."""
        if self._decoder is None:
            self._head += data
            if len(self._head) < 4096 and not final:  # enough to tell UTF-16 by its shape
                return ""
            data, self._head = self._head, b""
            self._start(data)
            data = data[len(self._bom(data)[0]):]
        assert self._decoder is not None
        if not self._strict:
            return self._decoder.decode(data, final)
        state = self._decoder.getstate()
        try:
            return self._decoder.decode(data, final)
        except UnicodeDecodeError:
            self._switch("gb18030")
            return self._decoder.decode(state[0] + data, final)

    @staticmethod
    def _bom(data: bytes) -> tuple[bytes, str | None]:
        for bom, encoding in _BOMS:
            if data.startswith(bom):
                return bom, encoding
        return b"", None

    def _start(self, data: bytes) -> None:
        encoding = sniff_encoding(data)
        if encoding is None:
            self.encoding = "utf-8"
            self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
            self._strict = True
        else:
            self._switch(encoding)

    def _switch(self, encoding: str) -> None:
        self.encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)("replace")
        self._strict = False


# End tags (and empty elements) after which Word, Excel and PowerPoint start a
# new line, paragraph or cell; every other tag vanishes so runs join up.
_BREAK = re.compile(r"<(?:/(?:[\w.-]+:)?(?:p|tr|tc|si|row|c|txBody)|(?:[\w.-]+:)?(?:br|cr|tab)\b[^>]*)>")
_TAG = re.compile(r"<[^>]*>")
_ENTITY = re.compile(r"&(#[xX][0-9a-fA-F]{1,6}|#[0-9]{1,7}|amp|lt|gt|quot|apos);")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_MAX_TAG = 64 * 1024  # a longer tag is skipped without being held in memory
_MAX_ENTITY = 10


def _entity(m: re.Match[str]) -> str:
    name = m.group(1)
    if name[0] != "#":
        return _NAMED[name]
    code = int(name[2:], 16) if name[1] in "xX" else int(name[1:])
    return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"


class XmlText:
    """Streams the character data out of XML, dropping tags, comments and DTDs."""

    def __init__(self) -> None:
        self._pending = ""  # an unfinished tag held until its '>'
        self._skipping = False  # inside a tag longer than _MAX_TAG
        self._text_tail = ""  # an unfinished entity reference

    def feed(self, data: str) -> str:
        """Return the text of the next chunk of XML."""
        if self._skipping:
            end = data.find(">")
            if end < 0:
                return ""
            data, self._skipping = data[end + 1:], False
        data = self._pending + data
        self._pending = ""
        cut = data.rfind("<")
        if cut >= 0 and data.find(">", cut) < 0:
            if len(data) - cut > _MAX_TAG:
                self._skipping = True
            else:
                self._pending = data[cut:]
            data = data[:cut]
        text = self._text_tail + _TAG.sub("", _BREAK.sub("\n", data))
        self._text_tail = ""
        amp = text.rfind("&", max(0, len(text) - _MAX_ENTITY))
        if amp >= 0 and ";" not in text[amp:]:
            text, self._text_tail = text[:amp], text[amp:]
        return _ENTITY.sub(_entity, text) if "&" in text else text

    def close(self) -> str:
        """Return any text still held back at the end of the document."""
        tail, self._text_tail, self._pending = self._text_tail, "", ""
        return tail
