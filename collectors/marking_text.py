"""Bytes to text for the marking scan: charset decoding and XML tag stripping.

Both work on chunks, so memory stays bounded however large or deeply nested
the input is. XML is never parsed into a tree and no entity beyond the five
predefined ones and numeric references is expanded: a DTD, internal or
external, is just markup to skip.
"""

from __future__ import annotations

import codecs
import re

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class TextDecoder:
    """Incremental decoding: a BOM decides; else UTF-8, falling back to GB18030.

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
            if len(self._head) < 3 and not final:
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
        _, encoding = self._bom(data)
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
