"""Marking scan of RTF documents: the text of an RTF file without its markup.

Chinese in RTF is written as ``\\uN`` Unicode escapes (each followed by
``\\ucN`` fallback characters to skip) or as ``\\'hh`` bytes in the document's
code page (``\\ansicpg936``, or a GB2312 font ``\\fcharset134``). Destinations
that hold no body text (font and colour tables, pictures, objects, ``{\\*...}``
groups) are skipped. The file is read up to ``max_bytes`` and tokenised with
bounded patterns, so neither deep nesting nor long words cost more than
linear time.
"""

from __future__ import annotations

import codecs
import re
from typing import BinaryIO

from collectors.marking_limits import Deadline, Limits, Truncated, Unreadable
from collectors.marking_match import StreamScanner

RTF_MAGIC = b"{\\rtf"
_TOKEN = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?[0-9]{1,10})? ?"  # control word with optional parameter
    rb"|((?:\\'[0-9a-fA-F]{2}){1,4096})"  # bytes in the code page, as many as come in a row
    rb"|\\([^a-zA-Z'])"  # control symbol
    rb"|([{}])"
    rb"|([\r\n]+)"
    rb"|([^\\{}\r\n]{1,4096})"
)
_SKIP = frozenset({
    b"fonttbl", b"colortbl", b"stylesheet", b"info", b"pict", b"object", b"objdata", b"themedata",
    b"colorschememapping", b"datastore", b"latentstyles", b"listtable", b"listoverridetable", b"rsidtbl",
    b"generator", b"xmlnstbl", b"mmathPr", b"fldinst", b"filetbl", b"revtbl", b"userprops", b"bkmkstart",
    b"bkmkend",
})
_BREAKS = {b"par": "\n", b"line": "\n", b"row": "\n", b"cell": "\n", b"sect": "\n", b"page": "\n", b"tab": "\t"}
_SYMBOLS = {b"~": "\u00a0", b"-": "\u00ad", b"_": "\u2011", b"\\": "\\", b"{": "{", b"}": "}"}
_MAX_DEPTH = 1000


class _Text:
    """Bytes in the code page and Unicode characters, joined in order and fed in large pieces."""

    def __init__(self, scanner: StreamScanner) -> None:
        self.scanner = scanner
        self.codepage = "cp1252"
        self._bytes = bytearray()
        self._text: list[str] = []
        self._size = 0

    def raw(self, data: bytes) -> None:
        self._bytes += data

    def text(self, s: str) -> None:
        self._decode()
        self._text.append(s)
        self._size += len(s)
        if self._size > 65536:
            self.flush()

    def _decode(self) -> None:
        if self._bytes:
            self._text.append(bytes(self._bytes).decode(self.codepage, "replace"))
            self._size += len(self._bytes)
            self._bytes.clear()

    def flush(self) -> None:
        self._decode()
        self.scanner.feed("".join(self._text))
        self._text.clear()
        self._size = 0


def _codepage(n: int) -> str:
    name = "gb18030" if n == 936 else f"cp{n}"
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name


def scan_rtf(f: BinaryIO, size: int, scanner: StreamScanner, limits: Limits, deadline: Deadline) -> None:
    """Scan the text of the RTF document open as ``f`` into ``scanner``."""
    f.seek(0)
    data = f.read(limits.max_bytes)
    if not data.startswith(RTF_MAGIC):
        raise Unreadable("not an RTF document: no {\\rtf header")
    out = _Text(scanner)
    if b"\\fcharset134" in data[:65536] and b"\\ansicpg" not in data[:4096]:
        out.codepage = "gb18030"
    # Per group: skipping its text, \ucN (fallback characters after \u).
    stack: list[tuple[bool, int]] = []
    skip, uc, pending_skip = False, 1, 0
    first_in_group = False
    scanner.start_part()
    for count, m in enumerate(_TOKEN.finditer(data)):
        if count % 4096 == 0:
            deadline.check()
            if scanner.done:
                break
        word, param, hexrun, symbol, brace, _newline, text = m.groups()
        if brace == b"{":
            if len(stack) >= _MAX_DEPTH:
                raise Unreadable(f"RTF groups nested over {_MAX_DEPTH} deep")
            stack.append((skip, uc))
            first_in_group = True
            continue
        if brace == b"}":
            if stack:
                skip, uc = stack.pop()
            pending_skip = 0
            continue
        starting, first_in_group = first_in_group, False
        if symbol is not None:
            if symbol == b"*" and starting:
                skip = True
            elif not skip and pending_skip:
                pending_skip -= 1
            elif not skip and symbol in _SYMBOLS:
                out.text(_SYMBOLS[symbol])
            continue
        if hexrun is not None:
            raw = bytes.fromhex(hexrun.replace(b"\\'", b"").decode("ascii"))
            if pending_skip:  # \ucN counts the fallback in bytes
                drop = min(pending_skip, len(raw))
                pending_skip -= drop
                raw = raw[drop:]
            if not skip:
                out.raw(raw)
            continue
        if word is not None:
            if word in _SKIP:
                skip = True
            elif word == b"ansicpg" and param:
                out.codepage = _codepage(int(param))
            elif word == b"uc" and param:
                uc = max(0, int(param))
            elif word == b"u" and param:
                if not skip:
                    out.text(chr(int(param) & 0xFFFF))
                pending_skip = uc
            elif not skip and word in _BREAKS:
                out.text(_BREAKS[word])
            continue
        if text is not None and not skip:
            if pending_skip:
                drop = min(pending_skip, len(text))
                pending_skip -= drop
                text = text[drop:]
            out.raw(text)
            if len(out._bytes) > 65536:
                out.text("")
    out.flush()
    scanner.end_part()
    if size > limits.max_bytes:
        raise Truncated(f"truncated at {limits.max_bytes} bytes")
