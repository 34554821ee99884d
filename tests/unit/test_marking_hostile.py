"""Marking detection on malformed and hostile files: bounded, and never raising."""

from __future__ import annotations

import io
import itertools
import os
import struct
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.levels import Level
from collectors.marking import Limits, MarkingResult, scan_file

MIB = 1024 * 1024
_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx_bytes(body_xml: str | bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A minimal Word document whose word/document.xml is ``body_xml``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", body_xml)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return out.getvalue()


def marked_docx() -> bytes:
    return docx_bytes(f"<w:document {_W}><w:body><w:p><w:r><w:t>机密</w:t></w:r><w:r><w:t>★10年</w:t>"
                      "</w:r></w:p></w:body></w:document>")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_handled(result: MarkingResult) -> None:
    """The scan ended in a defined state, not through the internal safety net."""
    assert result.status in ("marked", "unmarked", "unreadable", "skipped")
    assert not result.reason.startswith("scan failed"), result.reason
    assert (result.level is not None) == (result.status == "marked")


# --- zip containers -------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_docx_is_unreadable_with_reason(tmp_path: Path, keep: float) -> None:
    data = marked_docx()
    result = scan_file(write(tmp_path / "cut.docx", data[: int(len(data) * keep)]))
    assert result.status == "unreadable"
    assert "zip" in result.reason


def test_corrupted_member_data_is_unreadable(tmp_path: Path) -> None:
    data = bytearray(marked_docx())
    at = data.index(b"word/document.xml") + len("word/document.xml") + 4  # inside the deflate stream
    data[at:at + 8] = b"\xff" * 8
    result = scan_file(write(tmp_path / "bad.docx", bytes(data)))
    assert result.status == "unreadable" and "word/document.xml" in result.reason


def _bomb(path: Path, inflated_mib: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w") as member:
            member.write(f"<w:document {_W}><w:body>".encode())
            block = b" " * MIB
            for _ in range(inflated_mib):
                member.write(block)
    return path


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "bomb.docx", 64)
    assert path.stat().st_size < MIB  # it really is a bomb
    result = scan_file(path)
    assert result.status == "unreadable" and "zip bomb" in result.reason


def test_inflation_budget_bounds_many_modest_members(tmp_path: Path) -> None:
    filler = ("<w:p><w:r><w:t>正文" + "一二三四五六七八九十" * 40 + "</w:t></w:r></w:p>") * 400
    parts = {f"word/header{i}.xml": filler.encode() for i in range(1, 30)}
    path = write(tmp_path / "wide.docx", docx_bytes(f"<w:document {_W}/>", parts))
    result = scan_file(path, limits=Limits(max_unpacked=2 * MIB))
    assert (result.status, result.reason) == ("unmarked", f"truncated at {2 * MIB} unpacked bytes")


def test_member_count_cap(tmp_path: Path) -> None:
    extra = {f"word/media/image{i}.png": b"x" for i in range(20)}
    path = write(tmp_path / "many.docx", docx_bytes("<w:document/>", extra))
    result = scan_file(path, limits=Limits(max_members=10))
    assert result.status == "unreadable" and "22 members" in result.reason


def test_member_count_cap_holds_when_end_record_understates_it(tmp_path: Path) -> None:
    data = bytearray(docx_bytes("<w:document/>", {f"word/media/image{i}.png": b"x" for i in range(20)}))
    eocd = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 2, 2)  # entries on this disk, entries in total
    result = scan_file(write(tmp_path / "liar.docx", bytes(data)), limits=Limits(max_members=10))
    assert result.status == "unreadable" and "22 members" in result.reason


def test_nested_archive_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "nest.docx", docx_bytes(marked_docx()))
    result = scan_file(path)
    assert result.status == "unreadable" and "nested archive" in result.reason


def test_embedded_document_is_never_opened(tmp_path: Path) -> None:
    extra = {"word/embeddings/oleObject1.docx": marked_docx()}
    path = write(tmp_path / "embed.docx", docx_bytes(f"<w:document {_W}/>", extra))
    assert scan_file(path) == MarkingResult("unmarked")


def test_encrypted_member_is_unreadable(tmp_path: Path) -> None:
    data = bytearray(marked_docx())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        for at in _find_all(data, sig):
            flags = struct.unpack_from("<H", data, at + flag_at)[0]
            struct.pack_into("<H", data, at + flag_at, flags | 1)
    result = scan_file(write(tmp_path / "enc.docx", bytes(data)))
    assert result.status == "unreadable" and "encrypted" in result.reason


def _find_all(data: bytearray, sig: bytes) -> list[int]:
    found, at = [], data.find(sig)
    while at >= 0:
        found.append(at)
        at = data.find(sig, at + 1)
    return found


# --- XML --------------------------------------------------------------------------


def test_xml_nested_100k_deep_is_read_flat(tmp_path: Path) -> None:
    deep = "<w:r>" * 100_000 + "<w:t>机密★10年</w:t>" + "</w:r>" * 100_000
    path = write(tmp_path / "deep.docx", docx_bytes(f"<w:document {_W}>{deep}</w:document>"))
    # So repetitive a part also trips the bomb check; lift it to test depth alone.
    assert "zip bomb" in scan_file(path).reason
    result = scan_file(path, limits=Limits(max_ratio=10**6))
    assert (result.level, result.period) == (Level.SECRET, "10年")
    xml = write(tmp_path / "deep.xml", deep.encode())
    assert scan_file(xml).level is Level.SECRET


def test_entities_are_never_expanded(tmp_path: Path) -> None:
    doc = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY m "机密★10年">'
           '<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&m;&x;</d>')
    assert scan_file(write(tmp_path / "ent.xml", doc.encode())) == MarkingResult("unmarked")


def test_overlong_tag_is_skipped_without_losing_later_text(tmp_path: Path) -> None:
    doc = '<w:p w:x="' + "a" * (3 * MIB) + '"/><w:t>秘密★1年</w:t>'
    result = scan_file(write(tmp_path / "long.xml", doc.encode()))
    assert (result.level, result.period) == (Level.CONFIDENTIAL, "1年")


# --- PDF --------------------------------------------------------------------------


def test_garbage_pdf_is_unreadable(tmp_path: Path) -> None:
    junk = bytes((i * 7919 + 13) % 256 for i in range(100_000))
    result = scan_file(write(tmp_path / "junk.pdf", b"%PDF-1.7\n" + junk))
    assert result.status == "unreadable" and result.reason.startswith("PDF unreadable")


def test_pdf_named_file_without_pdf_header(tmp_path: Path) -> None:
    result = scan_file(write(tmp_path / "fake.pdf", b"just text\n"))
    assert (result.status, result.reason) == ("unreadable", "not a PDF: no %PDF- header")


def _pdf(objects: list[bytes]) -> bytes:
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<</Size {len(objects) + 1}/Root 1 0 R>>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_pdf_with_a_huge_deflate_stream_stays_bounded(tmp_path: Path) -> None:
    import zlib

    stream = zlib.compress(b"0 0 m " * (40 * MIB // 6), 9)  # 40 MiB of operators in ~40 KiB
    pdf = _pdf([b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
                b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]/Contents 4 0 R>>",
                f"<</Length {len(stream)}/Filter/FlateDecode>>stream\n".encode() + stream + b"\nendstream"])
    result = scan_file(write(tmp_path / "zbomb.pdf", pdf))
    assert_handled(result)
    assert result.status in ("unmarked", "unreadable")


# --- size, time and odd files ------------------------------------------------------


def test_200mb_sparse_text_reads_only_the_head(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.write(("机密★10年\n" + "正文内容。" * 1000).encode())
        f.truncate(200 * MIB)
    result = scan_file(path)
    assert (result.status, result.level) == ("marked", Level.SECRET)
    assert result.reason == f"truncated at {32 * MIB} bytes"


@pytest.mark.parametrize(("name", "head", "status"), [
    ("huge.txt", b"", "unreadable"),
    ("huge.docx", b"", "unreadable"),
    ("huge.docx", b"PK\x03\x04", "unreadable"),
    ("huge.pdf", b"%PDF-1.4\n", "unreadable"),
    ("huge.iso", b"", "skipped"),
])
def test_200mb_sparse_files(tmp_path: Path, name: str, head: bytes, status: str) -> None:
    path = tmp_path / name
    with path.open("wb") as f:
        f.write(head)
        f.truncate(200 * MIB)
    result = scan_file(path)
    assert_handled(result)
    assert result.status == status
    if name == "huge.pdf":
        assert f"truncated at {32 * MIB} bytes" in result.reason


def test_time_cap_stops_the_scan(tmp_path: Path) -> None:
    ticks = itertools.count(0.0, 1.0)
    path = write(tmp_path / "slow.txt", b"plain text\n" * 100_000)
    result = scan_file(path, max_seconds=2.5, clock=lambda: next(ticks))
    assert (result.status, result.reason) == ("unscanned", "time limit of 2.5s reached")


def test_time_cap_keeps_a_marking_already_found(tmp_path: Path) -> None:
    ticks = itertools.count(0.0, 1.0)
    data = ("秘密★\n" + "正文" * 200_000).encode()
    result = scan_file(write(tmp_path / "slow.txt", data), max_seconds=2.5, clock=lambda: next(ticks))
    assert (result.status, result.level, result.reason) == (
        "marked", Level.CONFIDENTIAL, "time limit of 2.5s reached")


def test_time_cap_between_zip_parts(tmp_path: Path) -> None:
    ticks = itertools.count(0.0, 10.0)
    result = scan_file(write(tmp_path / "d.docx", marked_docx()), max_seconds=5, clock=lambda: next(ticks))
    assert result.status == "unscanned" and "time limit" in result.reason


def test_invalid_utf8_falls_back_without_error(tmp_path: Path) -> None:
    data = b"\xc3\x28\xa0\xa1 \xf0\x28\x8c\xbc" + "机密★10年".encode("gb18030")
    result = scan_file(write(tmp_path / "bad.txt", data))
    assert (result.status, result.level) == ("marked", Level.SECRET)


def test_binary_junk_named_as_text(tmp_path: Path) -> None:
    junk = bytes((i * 31 + 7) % 256 for i in range(65536))
    result = scan_file(write(tmp_path / "junk.txt", junk))
    assert (result.status, result.reason) == ("unreadable", "binary content where text was expected")


def test_fifo_is_skipped_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    assert scan_file(fifo) == MarkingResult("skipped", reason="not a regular file")


def test_symlink_to_device_is_skipped(tmp_path: Path) -> None:
    link = tmp_path / "zero.txt"
    link.symlink_to("/dev/zero")
    assert scan_file(link).status == "skipped"


# --- fuzz ---------------------------------------------------------------------------

_SUFFIXES = [".txt", ".html", ".xml", ".docx", ".xlsx", ".pptx", ".wps", ".pdf", ".doc", ".xls", ".rtf", ".ofd", ""]
_MAGICS = [b"", b"PK\x03\x04", b"PK\x05\x06", b"%PDF-1.7\n", b"\xef\xbb\xbf", b"\xff\xfe", b"<",
           b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"{\\rtf1", b"\x00\x00\xfe\xff"]
_FUZZ = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_FUZZ
@given(magic=st.sampled_from(_MAGICS), body=st.binary(max_size=4096), suffix=st.sampled_from(_SUFFIXES))
def test_fuzz_random_bytes(tmp_path: Path, magic: bytes, body: bytes, suffix: str) -> None:
    assert_handled(scan_file(write(tmp_path / f"f{suffix}", magic + body)))


_DOCX = marked_docx()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, len(_DOCX) - 1), st.integers(0, 255)), min_size=1,
                      max_size=8),
       cut=st.integers(1, len(_DOCX)))
def test_fuzz_mutated_docx(tmp_path: Path, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_DOCX)
    for at, value in edits:
        data[at] = value
    assert_handled(scan_file(write(tmp_path / "m.docx", bytes(data[:cut]))))
