"""Builders of the documents the marking tests read: OLE2 (Word, Excel, PowerPoint, WPS), OFD, RTF.

Each is a minimal, valid file of its format, made here so no test data is
downloaded. The OLE2 writer knows one layout: one FAT sector, the directory,
then each stream in regular sectors (streams are padded to the mini-stream
cutoff, so no mini FAT is needed).
"""

from __future__ import annotations

import struct
import zipfile
from io import BytesIO

SECTOR = 512
END, FREE, FATSECT, NOSTREAM = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD, 0xFFFFFFFF
CUTOFF = 4096


def _dir_entry(name: str, kind: int, start: int, size: int, right: int = NOSTREAM, child: int = NOSTREAM) -> bytes:
    raw = name.encode("utf-16-le") + b"\0\0"
    return struct.pack(
        "<64sHBBLLL16sLQQLQ", raw, len(raw), kind, 1, NOSTREAM, right, child, b"\0" * 16, 0, 0, 0, start, size
    )


def ole2(streams: dict[str, bytes]) -> bytes:
    """An OLE2 compound file holding ``streams`` at its root (up to about 7 MiB: FAT sectors
    listed in the header only)."""
    names = sorted(streams, key=lambda n: (len(n), n.upper()))
    data = {n: streams[n] + b"\0" * max(0, CUTOFF - len(streams[n])) for n in names}
    dir_sectors = -(-(1 + len(names)) * 128 // SECTOR)
    data_sectors = sum(-(-len(d) // SECTOR) for d in data.values())
    fat_sectors = 1
    while fat_sectors * SECTOR // 4 < fat_sectors + dir_sectors + data_sectors:
        fat_sectors += 1
    assert fat_sectors <= 109, "the writer lists FAT sectors in the header only"
    fat: list[int] = [FATSECT] * fat_sectors
    dir_start = len(fat)
    fat += [*range(dir_start + 1, dir_start + dir_sectors), END]
    starts = {}
    for n in names:
        count = -(-len(data[n]) // SECTOR)
        starts[n] = len(fat)
        fat += [*range(len(fat) + 1, len(fat) + count), END]
    fat += [FREE] * (fat_sectors * SECTOR // 4 - len(fat))
    entries = [_dir_entry("Root Entry", 5, END, 0, child=1 if names else NOSTREAM)]
    for i, n in enumerate(names, start=1):
        entries.append(_dir_entry(n, 2, starts[n], max(len(streams[n]), CUTOFF),
                                  right=i + 1 if i < len(names) else NOSTREAM))
    directory = b"".join(entries)
    directory += _dir_entry("", 0, 0, 0) * ((dir_sectors * SECTOR - len(directory)) // 128)
    header = struct.pack(
        "<8s16sHHHHH6sLLLLLLLLL", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16, 0x3E, 3, 0xFFFE, 9, 6,
        b"\0" * 6, 0, fat_sectors, dir_start, 0, CUTOFF, END, 0, END, 0,
    ) + struct.pack("<109L", *range(fat_sectors), *([FREE] * (109 - fat_sectors)))
    body = struct.pack(f"<{len(fat)}L", *fat) + directory
    for n in names:
        body += data[n] + b"\0" * (-len(data[n]) % SECTOR)
    return header + body


def word_doc(pieces: list[str], *, encrypted: bool = False, with_table: bool = True) -> dict[str, bytes]:
    """The streams of a Word 97 (or WPS) document whose text is ``pieces``, one piece each, via a piece table."""
    text_at = 0x800
    doc = bytearray(text_at)
    struct.pack_into("<H", doc, 0, 0xA5EC)
    struct.pack_into("<H", doc, 0x0A, 0x0200 | (0x0100 if encrypted else 0))  # fWhichTblStm: 1Table
    cps, pcds, cp = [0], b"", 0
    for piece in pieces:
        pcds += struct.pack("<HLH", 0, len(doc), 0)
        doc += piece.encode("utf-16-le")
        cp += len(piece)
        cps.append(cp)
    plc = struct.pack(f"<{len(cps)}L", *cps) + pcds
    clx = b"\x02" + struct.pack("<L", len(plc)) + plc
    struct.pack_into("<LL", doc, 0x01A2, 0, len(clx))
    streams = {"WordDocument": bytes(doc)}
    if with_table:
        streams["1Table"] = clx
    return streams


def ofd(pages: list[list[str]], *, templates: list[list[str]] = (), doc_dir: str = "Doc_0",  # type: ignore[assignment]
        extra: dict[str, str] | None = None) -> bytes:
    """An OFD package: OFD.xml -> DocBody/DocRoot -> Document.xml -> each page's Content.xml.

    Each page is a list of text objects; each object's text is written one
    TextCode per character, as OFD writers that position every glyph do.
    """
    ns = 'xmlns:ofd="http://www.ofdspec.org/2016"'

    def content(objects: list[str]) -> str:
        body = "".join(
            f'<ofd:TextObject ID="{i + 10}" Boundary="0 0 100 10" Font="3" Size="5">'
            + "".join(f'<ofd:TextCode X="{j * 5}" Y="8">{c}</ofd:TextCode>' for j, c in enumerate(text))
            + "</ofd:TextObject>"
            for i, text in enumerate(objects)
        )
        return f'<?xml version="1.0" encoding="UTF-8"?><ofd:Page {ns}><ofd:Content><ofd:Layer ID="2">' \
               f"{body}</ofd:Layer></ofd:Content></ofd:Page>"

    page_refs = "".join(f'<ofd:Page ID="{i + 1}" BaseLoc="Pages/Page_{i}/Content.xml"/>' for i in range(len(pages)))
    tpl_refs = "".join(f'<ofd:TemplatePage ID="{i + 100}" BaseLoc="Tpls/Tpl_{i}/Content.xml"/>'
                       for i in range(len(templates)))
    members = {
        "OFD.xml": f'<?xml version="1.0" encoding="UTF-8"?><ofd:OFD {ns} Version="1.0" DocType="OFD">'
                   f"<ofd:DocBody><ofd:DocInfo><ofd:DocID>0C1D4F7159954EEEDE517F7285E84DC4</ofd:DocID>"
                   f"</ofd:DocInfo><ofd:DocRoot>{doc_dir}/Document.xml</ofd:DocRoot></ofd:DocBody></ofd:OFD>",
        f"{doc_dir}/Document.xml": f'<?xml version="1.0" encoding="UTF-8"?><ofd:Document {ns}><ofd:CommonData>'
                                   f"<ofd:MaxUnitID>99</ofd:MaxUnitID>{tpl_refs}</ofd:CommonData>"
                                   f"<ofd:Pages>{page_refs}</ofd:Pages></ofd:Document>",
        f"{doc_dir}/PublicRes.xml": f'<ofd:Res {ns} BaseLoc="Res"><ofd:Fonts><ofd:Font ID="3" FontName="宋体"/>'
                                    f"</ofd:Fonts></ofd:Res>",
    }
    for i, objects in enumerate(pages):
        members[f"{doc_dir}/Pages/Page_{i}/Content.xml"] = content(objects)
    for i, objects in enumerate(templates):
        members[f"{doc_dir}/Tpls/Tpl_{i}/Content.xml"] = content(objects)
    members.update(extra or {})
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buf.getvalue()


def rtf_escape(text: str, *, codepage: str | None = "gbk") -> str:
    """RTF body text: ``\\'hh`` bytes in the code page where it has the character, else ``\\uN?``."""
    out = []
    for c in text:
        if ord(c) < 128:
            out.append(c)
            continue
        try:
            raw = c.encode(codepage) if codepage else None
        except UnicodeEncodeError:
            raw = None
        if raw is None:
            n = ord(c)
            out.append(f"\\u{n if n < 32768 else n - 65536}?")
        else:
            out.append("".join(f"\\'{b:02x}" for b in raw))
    return "".join(out)


def rtf(body: str, *, header: str = "", extra_groups: str = "") -> bytes:
    """An RTF document (code page 936, as WPS and Word on Chinese Windows write it)."""
    return (
        "{\\rtf1\\ansi\\ansicpg936\\deff0{\\fonttbl{\\f0\\fnil\\fcharset134 " + rtf_escape("宋体") + ";}}"
        "{\\colortbl;\\red0\\green0\\blue0;}" + extra_groups
        + ("{\\header\\pard " + header + "\\par}" if header else "")
        + "\\viewkind4\\uc1\\pard\\f0\\fs32 " + body + "\\par}"
    ).encode("ascii")
