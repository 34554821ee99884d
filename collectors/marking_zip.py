"""Marking scan of zip-based documents: OOXML (docx xlsx pptx), WPS, ODF and OFD.

Only the XML parts that carry document text are read, body first, then
headers and footers, in page or sheet or slide order. An OOXML document's
parts are found by their content types in ``[Content_Types].xml`` (so a
renamed main part is still read), falling back to the usual names. An OFD
document (GB/T 33190, the format of electronic government documents) is
followed from ``OFD.xml`` through ``DocBody/DocRoot`` to its
``Document.xml`` and the pages it lists, whose ``TextCode`` elements hold
the text; then its template pages. Embedded objects and
any other member are never opened, so an archive inside a document is never
unpacked. Before zipfile sees the archive, its end record is read here to
refuse a central directory too large to hold; while members inflate, their
size and ratio are checked against the limits chunk by chunk, because the
sizes an archive declares can lie.
"""

from __future__ import annotations

import posixpath
import re
import struct
import zipfile
import zlib
from typing import BinaryIO

from collectors.marking_limits import Deadline, Limits, Skipped, Truncated, Unreadable
from collectors.marking_match import StreamScanner
from collectors.marking_text import TextDecoder, XmlText

_CHUNK = 64 * 1024
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"7z\xbc\xaf", b"Rar!", b"\x1f\x8b", b"\xd0\xcf\x11\xe0")


def _number(name: str) -> tuple[int, str]:
    digits = re.search(r"(\d+)\.xml$", name)
    return (int(digits.group(1)) if digits else 0, name)


def _pick(names: set[str], exact: list[str], patterns: list[str]) -> list[str]:
    chosen = [n for n in exact if n in names]
    for pattern in patterns:
        rx = re.compile(pattern)
        chosen += sorted((n for n in names if rx.fullmatch(n)), key=_number)
    return chosen


def text_parts(names: set[str]) -> list[str]:
    """The members of a document archive to scan, in reading order; [] if none."""
    if "word/document.xml" in names:
        return _pick(names, ["word/document.xml"], [r"word/header\d*\.xml", r"word/footer\d*\.xml",
                                                     r"word/(?:foot|end)notes\.xml"])
    if "xl/workbook.xml" in names:
        return _pick(names, ["xl/sharedStrings.xml"], [r"xl/worksheets/sheet\d*\.xml"])
    if "ppt/presentation.xml" in names:
        return _pick(names, [], [r"ppt/slides/slide\d*\.xml", r"ppt/slideMasters/slideMaster\d*\.xml",
                                 r"ppt/notesSlides/notesSlide\d*\.xml"])
    if "content.xml" in names:
        return _pick(names, ["content.xml", "styles.xml"], [])
    return []


# Content types of OOXML parts that hold document text, with their reading rank.
_TEXT_TYPES = (
    (re.compile(r".*(?:wordprocessingml|ms-word)\.(?:document|template)(?:\.macroEnabled(?:Template)?)?\.main\+xml"),
     0),
    (re.compile(r".*spreadsheetml\.sharedStrings\+xml"), 0),
    (re.compile(r".*presentationml\.slide\+xml"), 0),
    (re.compile(r".*wordprocessingml\.(?:header|footer|footnotes|endnotes)\+xml"), 1),
    (re.compile(r".*spreadsheetml\.worksheet\+xml"), 1),
    (re.compile(r".*presentationml\.(?:slideMaster|notesSlide)\+xml"), 1),
)
_OVERRIDE = re.compile(r"<(?:[\w.-]+:)?Override\b([^>]{0,2048})>")
_ATTR = re.compile(r'([\w:.-]+)\s*=\s*(?:"([^"]*)"|\'([^\']*)\')')
_OFD_ROOT = re.compile(r"<(?:[\w.-]+:)?DocRoot\s*>\s*([^<]{1,1024}?)\s*<")
_OFD_PAGE = re.compile(r"<(?:[\w.-]+:)?(Page|TemplatePage)\b([^>]{0,2048})>")
_SMALL = 4 * 1024 * 1024  # the most read of a manifest (content types, OFD.xml, Document.xml)


def _attrs(text: str) -> dict[str, str]:
    return {m.group(1).rpartition(":")[2]: m.group(2) if m.group(2) is not None else m.group(3)
            for m in _ATTR.finditer(text)}


def _small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, deadline: Deadline) -> str:
    deadline.check()
    if info.flag_bits & 0x1:
        raise Unreadable(f"zip member {info.filename} is encrypted")
    with zf.open(info) as member:
        data = member.read(_SMALL)
    return TextDecoder().decode(data, final=True)


def _member(infos: dict[str, zipfile.ZipInfo], base: str, loc: str) -> str | None:
    """The member a location in the package names, relative to ``base`` unless absolute."""
    loc = loc.strip().replace("\\", "/")
    path = posixpath.normpath(loc.lstrip("/") if loc.startswith("/") else posixpath.join(base, loc))
    if path in infos:
        return path
    folded = {n.lower(): n for n in infos}
    return folded.get(path.lower())


def content_type_parts(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], deadline: Deadline) -> list[str]:
    """OOXML text parts by their declared content types, main part first; [] when none is declared."""
    info = infos.get("[Content_Types].xml")
    if info is None:
        return []
    ranked = []
    for m in _OVERRIDE.finditer(_small(zf, info, deadline)):
        a = _attrs(m.group(1))
        name = _member(infos, "", a.get("PartName", ""))
        kind = a.get("ContentType", "")
        for rx, rank in _TEXT_TYPES:
            if name is not None and rx.fullmatch(kind):
                ranked.append((rank, _number(name), name))
                break
    return [name for *_, name in sorted(set(ranked))]


def ofd_parts(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], deadline: Deadline) -> list[str]:
    """The pages of an OFD package in order, then its template pages; raises Unreadable if it has none."""
    root = _OFD_ROOT.search(_small(zf, infos["OFD.xml"], deadline))
    doc = _member(infos, "", root.group(1)) if root else None
    if doc is None:
        raise Unreadable("OFD package without a readable DocBody/DocRoot")
    base = posixpath.dirname(doc)
    pages: list[str] = []
    templates: list[str] = []
    for m in _OFD_PAGE.finditer(_small(zf, infos[doc], deadline)):
        name = _member(infos, base, _attrs(m.group(2)).get("BaseLoc", ""))
        if name is not None:
            (pages if m.group(1) == "Page" else templates).append(name)
    if not pages:
        raise Unreadable(f"OFD document {doc} lists no page that the package holds")
    return list(dict.fromkeys(pages + templates))


def _central_directory(f: BinaryIO, size: int, limits: Limits) -> None:
    """Refuse an archive whose central directory is missing or too big to load."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise Unreadable("not a readable zip: no end of central directory (truncated?)")
    _, _, _, _, entries, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:
        loc_at = at - _EOCD64_LOCATOR.size
        if loc_at < 0 or tail[loc_at:loc_at + 4] != b"PK\x06\x07":
            raise Unreadable("not a readable zip: zip64 locator missing")
        _, _, eocd64_offset, _ = _EOCD64_LOCATOR.unpack_from(tail, loc_at)
        if eocd64_offset + _EOCD64.size > size:
            raise Unreadable("not a readable zip: zip64 end record out of range")
        f.seek(eocd64_offset)
        record = f.read(_EOCD64.size)
        if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
            raise Unreadable("not a readable zip: bad zip64 end record")
        entries, cd_size = _EOCD64.unpack(record)[7:9]
    if entries > limits.max_members:
        raise Unreadable(f"zip has {entries} members, over the limit of {limits.max_members}")
    if cd_size > limits.max_central_dir:
        raise Unreadable(f"zip central directory of {cd_size} bytes is over the limit")
    f.seek(0)


class _Budget:
    """Bytes read from the file and bytes inflated, across all members."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.read = 0
        self.unpacked = 0


def _scan_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget,
                 scanner: StreamScanner, deadline: Deadline) -> None:
    limits = budget.limits
    if info.flag_bits & 0x1:
        raise Unreadable(f"zip member {info.filename} is encrypted")
    if budget.read + info.compress_size > limits.max_bytes:
        raise Truncated(f"truncated at {budget.read} bytes")
    if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise Unreadable(f"zip bomb suspected: {info.filename} declares ratio over {limits.max_ratio}:1")
    budget.read += info.compress_size
    decoder, xml = TextDecoder(), XmlText()
    scanner.start_part(info.filename)
    out = 0
    with zf.open(info) as member:
        while True:
            deadline.check()
            chunk = member.read(_CHUNK)
            if out == 0 and chunk.startswith(_ARCHIVE_MAGIC):
                raise Unreadable(f"nested archive in {info.filename} refused")
            if chunk:
                out += len(chunk)
                budget.unpacked += len(chunk)
                if out > limits.ratio_floor and out > limits.max_ratio * max(info.compress_size, 1):
                    raise Unreadable(f"zip bomb suspected: {info.filename} inflates over "
                                     f"{limits.max_ratio}:1")
                if budget.unpacked > limits.max_unpacked:
                    raise Truncated(f"truncated at {limits.max_unpacked} unpacked bytes")
            scanner.feed(xml.feed(decoder.decode(chunk, final=not chunk)))
            if not chunk:
                break
    scanner.feed(xml.close())
    scanner.end_part()


def scan_zip(f: BinaryIO, size: int, scanner: StreamScanner, limits: Limits, deadline: Deadline) -> None:
    """Scan the text parts of the zip document open as ``f`` into ``scanner``.

    Raises Unreadable for a malformed or hostile archive, Skipped for a zip
    that holds no document, Truncated when a size budget cut the scan short.
    """
    _central_directory(f, size, limits)
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError, EOFError, OSError) as e:
        raise Unreadable(f"not a readable zip: {e}") from e
    with zf:
        if len(zf.infolist()) > limits.max_members:  # the end record can understate it
            raise Unreadable(f"zip has {len(zf.infolist())} members, over the limit of {limits.max_members}")
        infos = {i.filename: i for i in zf.infolist()}
        try:
            if "OFD.xml" in infos:
                parts = ofd_parts(zf, infos, deadline)
            else:
                parts = content_type_parts(zf, infos, deadline) or text_parts(set(infos))
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError,
                EOFError, OSError, zlib.error) as e:
            raise Unreadable(f"zip manifest unreadable: {e}") from e
        if not parts:
            raise Skipped("zip archive is not an Office or WPS document")
        budget = _Budget(limits)
        for name in parts:
            try:
                _scan_member(zf, infos[name], budget, scanner, deadline)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError,
                    EOFError, OSError, zlib.error) as e:
                raise Unreadable(f"zip member {name} unreadable: {e}") from e
            if scanner.done:
                return
