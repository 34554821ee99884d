"""Markings in the formats government documents use: OFD, legacy Office and WPS (OLE2), RTF,
UTF-16/32 text, OOXML found through its content types, and text written to hide a marking."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import olefile
import pytest

from agent.levels import Level
from collectors.marking import scan_file, scan_text
from tests.unit.marking_docs import ofd, ole2, rtf, rtf_escape, word_doc


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- OFD (GB/T 33190) --------------------------------------------------------------


def test_ofd_marking_on_a_page_split_into_positioned_glyphs(tmp_path: Path) -> None:
    data = ofd([["关于加强管理的通知"], ["机密★10年", "各处室："]])
    result = scan_file(write(tmp_path / "notice.ofd", data))
    assert (result.status, result.level, result.period) == ("marked", Level.SECRET, "10年")
    assert result.position is not None and result.position.part == "Doc_0/Pages/Page_1/Content.xml"


def test_ofd_is_found_by_content_and_its_doc_root_followed(tmp_path: Path) -> None:
    data = ofd([["绝密★启用前"]], doc_dir="Doc_A7")
    result = scan_file(write(tmp_path / "scan.bin.zip", data))
    assert (result.status, result.level) == ("marked", Level.TOP_SECRET)


def test_ofd_template_page_marking_counts(tmp_path: Path) -> None:
    data = ofd([["正文"]], templates=[["秘密★1年"]])
    assert scan_file(write(tmp_path / "t.ofd", data)).level is Level.CONFIDENTIAL


def test_ofd_text_outside_the_pages_is_not_a_marking(tmp_path: Path) -> None:
    # Near miss: the words sit in a resource the document does not show as a page.
    data = ofd([["关于加强管理的通知"]], extra={"Doc_0/Res/notes.xml": "<n>机密★10年</n>"})
    result = scan_file(write(tmp_path / "plain.ofd", data))
    assert (result.status, result.level) == ("unmarked", None)


def test_ofd_without_a_doc_root_is_unreadable(tmp_path: Path) -> None:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("OFD.xml", "<ofd:OFD><ofd:DocBody/></ofd:OFD>")
        zf.writestr("Doc_0/Pages/Page_0/Content.xml", "<p>机密★</p>")
    result = scan_file(write(tmp_path / "broken.ofd", buf.getvalue()))
    assert result.status == "unreadable" and "DocRoot" in result.reason


# --- OLE2: legacy Word, Excel, PowerPoint and WPS -----------------------------------


def test_the_ole2_writer_makes_files_olefile_reads() -> None:
    ole = olefile.OleFileIO(ole2({"WordDocument": b"x" * 5000, "1Table": b"y"}))
    assert sorted(ole.listdir()) == [["1Table"], ["WordDocument"]]
    assert ole.openstream("WordDocument").read()[:5000] == b"x" * 5000


@pytest.mark.parametrize("suffix", [".doc", ".wps", ".dat"])
def test_word_and_wps_binary_marking_through_the_piece_table(tmp_path: Path, suffix: str) -> None:
    # The marking is split between two pieces of the piece table.
    data = ole2(word_doc(["XX市人民政府办公室\r机密", "★5年\r关于做好防汛工作的通知\r"]))
    result = scan_file(write(tmp_path / f"notice{suffix}", data))
    assert (result.status, result.level, result.period) == ("marked", Level.SECRET, "5年")
    assert result.position is not None and result.position.part == "WordDocument"


def test_word_binary_without_marking(tmp_path: Path) -> None:
    data = ole2(word_doc(["各单位要严格保守国家秘密，不得泄露工作秘密。\r"]))
    assert scan_file(write(tmp_path / "policy.doc", data)).status == "unmarked"


def test_word_binary_without_table_stream_is_still_read(tmp_path: Path) -> None:
    data = ole2(word_doc(["秘密★1年\r正文\r"], with_table=False))
    assert scan_file(write(tmp_path / "t.doc", data)).level is Level.CONFIDENTIAL


@pytest.mark.parametrize(("stream", "suffix"), [("Workbook", ".xls"), ("Book", ".et"),
                                                ("PowerPoint Document", ".ppt"), ("PowerPoint Document", ".dps")])
@pytest.mark.parametrize("pad", [0, 1])
def test_excel_powerpoint_and_wps_streams(tmp_path: Path, stream: str, suffix: str, pad: int) -> None:
    # A BIFF or PowerPoint record header before the UTF-16 string, at either byte alignment.
    record = b"\xfc\x00\x20\x00" + b"\x01" * pad + "绝密★长期".encode("utf-16-le") + b"\x00" * 40
    result = scan_file(write(tmp_path / f"book{suffix}", ole2({stream: record})))
    assert (result.status, result.level, result.period) == ("marked", Level.TOP_SECRET, "长期")


def test_marking_in_a_stream_that_holds_no_document_text_is_not_read(tmp_path: Path) -> None:
    # Near miss: an OLE2 file that is no Office document (a thumbnail cache, say).
    data = ole2({"Catalog": "机密★10年".encode("utf-16-le")})
    result = scan_file(write(tmp_path / "Thumbs.db", data))
    assert result.status == "skipped" and "no Word" in result.reason


def test_encrypted_ole2_documents_are_unreadable(tmp_path: Path) -> None:
    enc = scan_file(write(tmp_path / "enc.docx", ole2({"EncryptedPackage": b"\0" * 100, "EncryptionInfo": b"1"})))
    assert enc.status == "unreadable" and "encrypted" in enc.reason
    word = scan_file(write(tmp_path / "enc.doc", ole2(word_doc(["机密★"], encrypted=True))))
    assert word.status == "unreadable" and "encrypted" in word.reason


def test_corrupt_ole2_is_unreadable(tmp_path: Path) -> None:
    data = bytearray(ole2(word_doc(["机密★"])))
    data[0x30:0x34] = b"\xff\xff\xff\x7f"  # first directory sector far out of the file
    result = scan_file(write(tmp_path / "bad.doc", bytes(data)))
    assert result.status == "unreadable" and not result.reason.startswith("scan failed")


# --- RTF ------------------------------------------------------------------------------


def test_rtf_code_page_bytes(tmp_path: Path) -> None:
    data = rtf(rtf_escape("机密★10年") + "\\par " + rtf_escape("关于印发的通知"))
    result = scan_file(write(tmp_path / "n.rtf", data))
    assert (result.status, result.level, result.period) == ("marked", Level.SECRET, "10年")


def test_rtf_unicode_escapes_and_a_marking_in_the_header(tmp_path: Path) -> None:
    data = rtf(rtf_escape("正文", codepage=None), header=rtf_escape("秘密★6个月", codepage=None))
    result = scan_file(write(tmp_path / "n.doc", data))  # Word saves RTF under .doc too
    assert (result.status, result.level, result.period) == ("marked", Level.CONFIDENTIAL, "6个月")


def test_rtf_marking_split_by_formatting_groups(tmp_path: Path) -> None:
    body = "{\\b " + rtf_escape("机") + "}{\\i " + rtf_escape("密") + "}\\cf1 " + rtf_escape("★") + " 5" \
           + rtf_escape("年")
    assert scan_file(write(tmp_path / "n.rtf", rtf(body))).level is Level.SECRET


def test_rtf_hidden_destinations_are_not_body_text(tmp_path: Path) -> None:
    # Near miss: the words sit in metadata groups a reader never shows.
    extra = "{\\*\\generator " + rtf_escape("机密★10年") + ";}{\\info{\\title " + rtf_escape("机密★10年") + "}}"
    result = scan_file(write(tmp_path / "n.rtf", rtf(rtf_escape("普通通知"), extra_groups=extra)))
    assert result.status == "unmarked"


def test_rtf_nested_too_deep_is_unreadable(tmp_path: Path) -> None:
    result = scan_file(write(tmp_path / "deep.rtf", b"{\\rtf1 " + b"{" * 100_000 + b"}" * 100_000 + b"}"))
    assert result.status == "unreadable" and "nested" in result.reason


# --- UTF-16 and UTF-32 text ------------------------------------------------------------------

_BODY = "机密★10年\n关于加强保密管理工作的通知\n各单位：为进一步做好工作，现通知如下。\n" * 3


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32-be", "utf-32"])
def test_utf16_and_utf32_text_with_and_without_bom(tmp_path: Path, encoding: str) -> None:
    result = scan_file(write(tmp_path / "n.txt", _BODY.encode(encoding)))
    assert (result.status, result.level) == ("marked", Level.SECRET)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_short_utf16_without_bom(tmp_path: Path, encoding: str) -> None:
    result = scan_file(write(tmp_path / "n.txt", "秘密★1年\n通知如下".encode(encoding)))
    assert result.level is Level.CONFIDENTIAL


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-8", "gb18030"])
def test_unmarked_text_in_any_encoding_stays_unmarked(tmp_path: Path, encoding: str) -> None:
    text = "各单位要严格保守国家秘密，不得泄露工作秘密。商业秘密文件见附件。\n" * 20
    result = scan_file(write(tmp_path / "n.txt", text.encode(encoding)))
    assert (result.status, result.level) == ("unmarked", None)


# --- OOXML through [Content_Types].xml ------------------------------------------------------

_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"


def _docx(parts: dict[str, str], types: dict[str, str]) -> bytes:
    overrides = "".join(f'<Override PartName="/{n}" ContentType="{t}"/>' for n, t in types.items())
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml",
                    '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
                    f'content-types"><Default Extension="xml" ContentType="application/xml"/>{overrides}</Types>')
        for name, text in parts.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _body(text: str) -> str:
    return f'<w:document xmlns:w="w"><w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:body></w:document>'


def test_ooxml_main_part_renamed_is_found_through_content_types(tmp_path: Path) -> None:
    data = _docx({"word/x9.xml": _body("机密★10年")}, {"word/x9.xml": _MAIN})
    result = scan_file(write(tmp_path / "r.docx", data))
    assert (result.status, result.level) == ("marked", Level.SECRET)
    assert result.position is not None and result.position.part == "word/x9.xml"


def test_ooxml_part_not_declared_as_text_is_not_read(tmp_path: Path) -> None:
    # Near miss: the marking sits in custom XML data that Word does not show.
    data = _docx({"word/document.xml": _body("通知"), "customXml/item1.xml": "<a>机密★10年</a>"},
                 {"word/document.xml": _MAIN})
    assert scan_file(write(tmp_path / "c.docx", data)).status == "unmarked"


# --- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "机\u200b密\u200d★\u206010年",  # zero-width space, joiner, word joiner
        "机\ufeff密\u00ad★10年",  # BOM and soft hyphen inside
        "机\u202e密\u202c★10年",  # bidi override
        "机     密 \t  ★    １０年",  # many spaces and full-width digits
        "机\u3000\u3000\u3000密★10年",  # ideographic spaces
    ],
)
def test_hidden_characters_and_spacing_do_not_hide_a_marking(tmp_path: Path, text: str) -> None:
    assert [m.level for m in scan_text(text)] == [Level.SECRET]
    for name, data in (("t.txt", text.encode()), ("t.rtf", rtf(rtf_escape(text, codepage=None)))):
        assert scan_file(write(tmp_path / name, data)).level is Level.SECRET, name
    doc = _docx({"word/document.xml": _body(text)}, {"word/document.xml": _MAIN})
    assert scan_file(write(tmp_path / "t.docx", doc)).level is Level.SECRET


def test_compatibility_forms_count_as_the_plain_character() -> None:
    # NFKC folds the circled ten and full-width digits to 10.
    assert [(m.level, m.period) for m in scan_text("秘密★⑩年")] == [(Level.CONFIDENTIAL, "10年")]
    assert [(m.level, m.period) for m in scan_text("秘密★\uff12\uff10\uff13\uff10年1月1日")] == \
        [(Level.CONFIDENTIAL, "2030年1月1日")]


def test_normalising_does_not_join_paragraphs_or_accept_other_stars() -> None:
    assert scan_text("国家秘\u200b\n密★") == []
    assert scan_text("机\u200b密☆10年") == []


def test_rtf_unicode_escape_with_code_page_fallback_bytes(tmp_path: Path) -> None:
    # Word writes \uN followed by the character in the code page (two bytes, \uc2) for older readers.
    body = "\\uc2" + "".join(f"\\u{ord(c)}" + "".join(f"\\'{b:02x}" for b in c.encode("gbk")) for c in "机密") \
        + "\\u9733\\'a1\\'ef" + "10" + "\\u24180\\'c4\\'ea"
    result = scan_file(write(tmp_path / "n.rtf", rtf(body)))
    assert (result.status, result.level, result.text) == ("marked", Level.SECRET, "机密★10年")
