"""Marking scan of OLE2 compound files: legacy Word, Excel, PowerPoint and WPS.

WPS Office writes its own ``.wps .et .dps`` in the same binary formats as
Word, Excel and PowerPoint (streams ``WordDocument``, ``Workbook``/``Book``,
``PowerPoint Document``), so one reader serves both. The compound file is
read through ``olefile``; each stream is read up to ``max_bytes``.

A Word document's text is rebuilt from its piece table (the CLX in the table
stream), which is exact; where the piece table cannot be read, and for the
Excel and PowerPoint streams, text is taken the way those formats store
Chinese: as UTF-16LE runs, read at both byte alignments. Both ways can also
see text that Word keeps but no longer shows (fast-save leftovers), which errs
on the side of reporting a marking.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from collectors.marking_limits import Deadline, Limits, Skipped, Truncated, Unreadable
from collectors.marking_match import StreamScanner

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_TEXT_STREAMS = ("WordDocument", "Workbook", "Book", "PowerPoint Document")
_CHUNK = 256 * 1024


def scan_ole(f: BinaryIO, size: int, scanner: StreamScanner, limits: Limits, deadline: Deadline) -> None:
    """Scan the text of the OLE2 document open as ``f`` into ``scanner``.

    Raises Unreadable for a malformed or encrypted file, Skipped for a
    compound file that is no Office or WPS document, Truncated when a stream
    was longer than ``max_bytes``.
    """
    import olefile  # late: only legacy documents need it

    if size > 4 * limits.max_bytes:  # olefile holds each stream it opens in memory
        raise Unreadable(f"OLE2 file of {size} bytes is over the {4 * limits.max_bytes}-byte limit")
    f.seek(0)
    try:
        ole = olefile.OleFileIO(f)
    except Exception as e:  # olefile raises OSError, struct.error, IndexError... on hostile input
        raise Unreadable(f"OLE2 file unreadable: {type(e).__name__}: {e}") from e
    try:
        names = {"/".join(entry) for entry in ole.listdir(streams=True, storages=False)}
        if "EncryptedPackage" in names:
            raise Unreadable("encrypted Office document (EncryptedPackage)")
        present = [n for n in _TEXT_STREAMS if n in names]
        if not present:
            raise Skipped("OLE2 compound file holds no Word, Excel, PowerPoint or WPS document")
        cut = ""
        for name in present:
            deadline.check()
            try:
                data = ole.openstream(name).read(limits.max_bytes)
                if ole.get_size(name) > limits.max_bytes:
                    cut = f"truncated at {limits.max_bytes} bytes of stream {name}"
                if name == "WordDocument":
                    _scan_word(ole, names, data, scanner, deadline)
                else:
                    _scan_utf16(name, data, scanner, deadline)
            except (Unreadable, Skipped):
                raise
            except Exception as e:  # as above, for a broken stream
                raise Unreadable(f"OLE2 stream {name} unreadable: {type(e).__name__}: {e}") from e
            if scanner.done:
                return
        if cut:
            raise Truncated(cut)
    finally:
        ole.close()


def _scan_utf16(part: str, data: bytes, scanner: StreamScanner, deadline: Deadline) -> None:
    for align in (0, 1):
        scanner.start_part(part)
        for at in range(align, len(data), _CHUNK):
            deadline.check()
            scanner.feed(data[at:at + _CHUNK].decode("utf-16-le", "replace"))
        scanner.end_part()
        if scanner.done:
            return


def _scan_word(ole: object, names: set[str], doc: bytes, scanner: StreamScanner, deadline: Deadline) -> None:
    """Word's text through its piece table; UTF-16 runs when the table cannot be read."""
    if len(doc) < 0x1AA:
        raise Unreadable("Word document stream too short for its header")
    flags = struct.unpack_from("<H", doc, 0x0A)[0]
    if flags & 0x0100:  # fEncrypted
        raise Unreadable("Word document is encrypted with a password")
    table = "1Table" if flags & 0x0200 else "0Table"  # fWhichTblStm
    fc_clx, lcb_clx = struct.unpack_from("<LL", doc, 0x01A2)
    text = None
    if table in names and lcb_clx:
        table_data = ole.openstream(table).read(fc_clx + lcb_clx)  # type: ignore[attr-defined]
        text = _piece_text(doc, table_data[fc_clx:fc_clx + lcb_clx], deadline)
    if text is None:
        _scan_utf16("WordDocument", doc, scanner, deadline)
        return
    scanner.start_part("WordDocument")
    for piece in text:
        scanner.feed(piece)
    scanner.end_part()


def _piece_text(doc: bytes, clx: bytes, deadline: Deadline) -> list[str] | None:
    """The document's text, piece by piece, from the CLX; None when it does not parse."""
    at = 0
    while at < len(clx) and clx[at] == 0x01:  # Prc: property modifiers, skipped
        if at + 3 > len(clx):
            return None
        at += 3 + struct.unpack_from("<H", clx, at + 1)[0]
    if at + 5 > len(clx) or clx[at] != 0x02:
        return None
    lcb = struct.unpack_from("<L", clx, at + 1)[0]
    plc = clx[at + 5:at + 5 + lcb]
    if len(plc) != lcb or (lcb - 4) % 12:
        return None
    n = (lcb - 4) // 12
    cps = struct.unpack_from(f"<{n + 1}L", plc, 0)
    out = []
    for i in range(n):
        deadline.check()
        fc = struct.unpack_from("<L", plc, 4 * (n + 1) + 8 * i + 2)[0]
        chars = cps[i + 1] - cps[i]
        if chars <= 0 or chars > len(doc):
            return None
        if fc & 0x40000000:  # fCompressed: one byte a character, Windows-1252
            start = (fc & 0x3FFFFFFF) // 2
            out.append(doc[start:start + chars].decode("cp1252", "replace"))
        else:
            out.append(doc[fc:fc + 2 * chars].decode("utf-16-le", "replace"))
    return out
