"""Marking detection on well-formed documents: the matcher, each format, positions."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from agent.levels import Level
from collectors.marking import MarkingResult, Position, scan_file, scan_text

CJK_FONTS = (
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
)

# --- the matcher -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level", "period"),
    [
        ("绝密★长期", Level.TOP_SECRET, "长期"),
        ("机密★10年", Level.SECRET, "10年"),
        ("秘密★1年", Level.CONFIDENTIAL, "1年"),
        ("机密★5年", Level.SECRET, "5年"),
        ("机密★", Level.SECRET, None),
        ("秘密★", Level.CONFIDENTIAL, None),
        ("绝密★启用前", Level.TOP_SECRET, "启用前"),
        ("秘密★2030年6月30日", Level.CONFIDENTIAL, "2030年6月30日"),
        ("机密 ★ 10 年", Level.SECRET, "10年"),
        ("机密\u3000★\u3000１０年", Level.SECRET, "10年"),  # full-width space and digits
        ("秘密★6个月", Level.CONFIDENTIAL, "6个月"),
        ("秘密★十年", Level.CONFIDENTIAL, "十年"),
    ],
)
def test_starred_markings_give_level_and_period(text: str, level: Level, period: str | None) -> None:
    found = scan_text(f"抄送：办公厅\n{text}\n关于年度工作的通知")
    assert [(m.level, m.period, m.offset) for m in found] == [(level, period, 7)]


@pytest.mark.parametrize(
    "text",
    [
        "秘密",  # the bare header is ambiguous with body text
        "各单位要严格保守国家秘密，不得泄露工作秘密。",
        "机密☆10年",  # hollow star is not the standard mark
        "机密*10年",
        "商业秘密文件 ★ 见附件",  # star after other words: not a marking
        "国家秘\n密★",  # a line break does not join words
        "",
    ],
)
def test_bare_words_and_other_stars_are_not_markings(text: str) -> None:
    assert scan_text(text) == []


def test_every_marking_is_listed_in_order() -> None:
    found = scan_text("秘密★1年 正文 机密★10年 正文 秘密★")
    assert [m.level for m in found] == [Level.CONFIDENTIAL, Level.SECRET, Level.CONFIDENTIAL]
    assert [m.offset for m in found] == [0, 9, 19]


# --- plain text files ----------------------------------------------------------


def test_highest_level_wins_and_its_first_position_is_reported(tmp_path: Path) -> None:
    body = "秘密★1年\n" + "正文。" * 50000 + "机密★10年\n" + "正文" * 10 + "机密★5年\n"
    path = tmp_path / "notice.txt"
    path.write_text(body, encoding="utf-8")
    result = scan_file(path)
    assert result == MarkingResult(
        "marked", Level.SECRET, "10年", Position(offset=body.index("机密★10年")), "", "机密★10年"
    )
    assert result.complete


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "gb18030", "gbk"])
def test_text_encodings(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes("关于印发方案的通知\n机密★10年\n".encode(encoding))
    result = scan_file(path)
    assert (result.status, result.level, result.period) == ("marked", Level.SECRET, "10年")


def test_gbk_after_a_long_ascii_head_is_still_decoded(tmp_path: Path) -> None:
    path = tmp_path / "doc.csv"
    path.write_bytes(b"id,title\n" * 20000 + "1,绝密★长期\n".encode("gbk"))
    assert scan_file(path).level is Level.TOP_SECRET


def test_unmarked_text(tmp_path: Path) -> None:
    path = tmp_path / "plain.md"
    path.write_text("# 会议纪要\n\n保守国家秘密是每个公民的义务。\n", encoding="utf-8")
    assert scan_file(path) == MarkingResult("unmarked")


def test_marking_split_across_read_windows_is_found(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    prefix = "x" * (64 * 1024 - 3)  # the marking straddles the first scan window
    path.write_text(prefix + "机密★10年", encoding="utf-8")
    result = scan_file(path)
    assert (result.level, result.position) == (Level.SECRET, Position(offset=len(prefix)))


def test_html_tags_and_character_references_are_stripped(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text("<html><body><p><b>机密</b><span>&#9733;</span>10<i>年</i></p></body></html>",
                    encoding="utf-8")
    result = scan_file(path)
    assert (result.level, result.period) == (Level.SECRET, "10年")


def test_xml_file(tmp_path: Path) -> None:
    path = tmp_path / "export.xml"
    path.write_text('<?xml version="1.0" encoding="UTF-8"?><doc><mark>秘密&#x2605;1年</mark></doc>',
                    encoding="utf-8")
    assert scan_file(path).level is Level.CONFIDENTIAL


def test_head_beyond_max_bytes_is_not_read_and_result_says_so(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes("秘密★\n".encode() + b"a" * 4096 + "绝密★长期".encode())
    result = scan_file(path, max_bytes=1024)
    assert (result.status, result.level, result.reason) == ("marked", Level.CONFIDENTIAL,
                                                           "truncated at 1024 bytes")
    assert not result.complete
    unmarked = scan_file(path, max_bytes=8)
    assert (unmarked.status, unmarked.reason) == ("unmarked", "truncated at 8 bytes")


# --- Office and WPS zip documents ---------------------------------------------

_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        for name, text in members.items():
            z.writestr(name, text)
    return path


def _paragraphs(*runs: list[str]) -> str:
    body = "".join(
        "<w:p><w:pPr><w:jc w:val=\"left\"/></w:pPr>"
        + "".join(f'<w:r><w:rPr><w:b/></w:rPr><w:t xml:space="preserve">{r}</w:t></w:r>' for r in p)
        + "</w:p>"
        for p in runs
    )
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            f"<w:document {_W}><w:body>{body}</w:body></w:document>")


def docx(path: Path, *runs: list[str], header: str | None = None) -> Path:
    """A minimal Word document whose paragraphs hold the given runs."""
    members = {"word/document.xml": _paragraphs(*runs)}
    if header is not None:
        members["word/header1.xml"] = f"<w:hdr {_W}><w:p><w:r><w:t>{header}</w:t></w:r></w:p></w:hdr>"
    return _zip(path, members)


def test_docx_marking_split_across_runs(tmp_path: Path) -> None:
    path = docx(tmp_path / "notice.docx", ["机密", "★", "10年"], ["关于做好保密工作的通知"])
    result = scan_file(path)
    assert (result.status, result.level, result.period) == ("marked", Level.SECRET, "10年")
    assert result.position == Position(offset=0, part="word/document.xml")


def test_docx_header_marking_counts_when_body_has_none(tmp_path: Path) -> None:
    path = docx(tmp_path / "h.docx", ["正文"], header="绝密★启用前")
    result = scan_file(path)
    assert (result.level, result.period) == (Level.TOP_SECRET, "启用前")
    assert result.position is not None and result.position.part == "word/header1.xml"


def test_docx_without_marking(tmp_path: Path) -> None:
    path = docx(tmp_path / "plain.docx", ["秘密"], ["保守国家秘密"])
    assert scan_file(path) == MarkingResult("unmarked")


def test_runs_in_separate_paragraphs_do_not_merge_words(tmp_path: Path) -> None:
    # "秘" closing one paragraph and "密★" opening the next are not a marking.
    path = docx(tmp_path / "p.docx", ["国家秘"], ["密★"])
    assert scan_file(path).status == "unmarked"


def test_xlsx_shared_strings(tmp_path: Path) -> None:
    path = _zip(tmp_path / "book.xlsx", {
        "xl/workbook.xml": "<workbook/>",
        "xl/sharedStrings.xml":
            "<sst><si><t>项目</t></si><si><r><t>秘密</t></r><r><t>★2年</t></r></si></sst>",
        "xl/worksheets/sheet1.xml": "<worksheet><sheetData/></worksheet>",
    })
    result = scan_file(path)
    assert (result.level, result.period) == (Level.CONFIDENTIAL, "2年")
    assert result.position is not None and result.position.part == "xl/sharedStrings.xml"


def test_xlsx_inline_string_in_a_later_sheet(tmp_path: Path) -> None:
    path = _zip(tmp_path / "book.xlsx", {
        "xl/workbook.xml": "<workbook/>",
        "xl/worksheets/sheet2.xml": '<worksheet><c t="inlineStr"><is><t>机密★</t></is></c></worksheet>',
        "xl/worksheets/sheet10.xml": "<worksheet/>",
    })
    assert scan_file(path).level is Level.SECRET


def test_pptx_slides_in_slide_order(tmp_path: Path) -> None:
    a = 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'
    path = _zip(tmp_path / "deck.pptx", {
        "ppt/presentation.xml": "<p:presentation/>",
        "ppt/slides/slide10.xml": f"<p:sld {a}><a:p><a:r><a:t>秘密★</a:t></a:r></a:p></p:sld>",
        "ppt/slides/slide2.xml":
            f"<p:sld {a}><a:p><a:r><a:t>机密</a:t></a:r><a:r><a:t>★3年</a:t></a:r></a:p></p:sld>",
        "ppt/slides/slide3.xml": f"<p:sld {a}><a:p><a:r><a:t>机密★1年</a:t></a:r></a:p></p:sld>",
    })
    result = scan_file(path)
    assert (result.level, result.period) == (Level.SECRET, "3年")
    assert result.position == Position(offset=0, part="ppt/slides/slide2.xml")


@pytest.mark.parametrize("suffix", [".wps", ".et", ".dps"])
def test_wps_formats_as_zip(tmp_path: Path, suffix: str) -> None:
    path = docx(tmp_path / f"wps{suffix}", ["绝密", "★", "长期"])
    assert scan_file(path).level is Level.TOP_SECRET


def test_wps_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "old.wps"
    path.write_bytes("秘密★1年\r\n通知".encode("gb18030"))
    assert scan_file(path).level is Level.CONFIDENTIAL


# --- detection by content -------------------------------------------------------


def test_docx_is_found_by_content_whatever_its_name(tmp_path: Path) -> None:
    path = docx(tmp_path / "report.dat", ["机密★10年"])
    assert scan_file(path).level is Level.SECRET


def test_zip_that_is_not_a_document_is_skipped(tmp_path: Path) -> None:
    path = _zip(tmp_path / "bundle.docx", {"readme.txt": "机密★10年"})
    result = scan_file(path)
    assert result.status == "skipped" and "not an Office" in result.reason


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("photo.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 64, "JPEG"),
        ("archive.7z", b"7z\xbc\xaf\x27\x1c" + b"\0" * 64, "7z"),
        ("tool", b"\x7fELF" + b"\0" * 64, "ELF"),
        ("data.bin", "机密★10年".encode(), "not a document format"),
    ],
)
def test_formats_not_read_are_skipped_with_a_reason(tmp_path: Path, name: str, content: bytes,
                                                    why: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = scan_file(path)
    assert result.status == "skipped" and why in result.reason


def test_text_file_mentioning_pdf_header_is_still_text(tmp_path: Path) -> None:
    path = tmp_path / "howto.md"
    path.write_text("文件以 %PDF-1.7 开头。\n机密★10年\n", encoding="utf-8")
    assert scan_file(path).level is Level.SECRET


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    result = scan_file(tmp_path / "gone.txt")
    assert result.status == "unreadable" and result.reason.startswith("cannot open")


def test_directory_is_skipped(tmp_path: Path) -> None:
    assert scan_file(tmp_path).status == "skipped"


# --- PDF text layer ---------------------------------------------------------------


def cjk_font() -> Path:
    """A CJK TrueType font from Debian's font packages, or skip the test."""
    for font in CJK_FONTS:
        if font.exists():
            return font
    pytest.skip("no CJK font found: apt-get install fonts-wqy-zenhei")


def pdf(path: Path, *pages: list[str]) -> Path:
    """A PDF with a CID font and its ToUnicode map, one text line per entry."""
    fpdf = pytest.importorskip("fpdf", reason="fpdf2 (test extra) builds the PDF fixtures")
    doc = fpdf.FPDF()
    doc.add_font("zh", fname=str(cjk_font()))
    for lines in pages:
        doc.add_page()
        doc.set_font("zh", size=14)
        for line in lines:
            doc.cell(text=line)
            doc.ln()
    doc.output(str(path))
    return path


def test_pdf_text_layer_with_cid_font(tmp_path: Path) -> None:
    path = pdf(tmp_path / "notice.pdf", ["关于做好年度工作的通知", "正文"], ["秘密★1年", "机密★10年"])
    result = scan_file(path)
    assert (result.status, result.level, result.period) == ("marked", Level.SECRET, "10年")
    assert result.position is not None and result.position.page == 2


def test_unmarked_pdf(tmp_path: Path) -> None:
    path = pdf(tmp_path / "plain.pdf", ["保守国家秘密", "秘密"])
    assert scan_file(path) == MarkingResult("unmarked")


def test_pdf_found_by_content_and_page_cap_reported(tmp_path: Path) -> None:
    path = pdf(tmp_path / "scan.bin", ["正文"], ["正文"], ["绝密★长期"])
    from collectors.marking import Limits

    capped = scan_file(path, limits=Limits(max_pages=2))
    assert (capped.status, capped.reason) == ("unmarked", "truncated at 2 of 3 pages")
    assert scan_file(path).level is Level.TOP_SECRET


@pytest.mark.parametrize("pad", [-1, 0, 1])
def test_files_either_side_of_the_whole_read_size_scan_alike(tmp_path: Path, pad: int) -> None:
    """A small file is read whole in one call, a larger one through a buffer: the marking at its very
    end is found either way, and the caller's descriptor keeps its offset for the small one."""
    import os

    from collectors.marking import SMALL_FILE, scan_fd

    tail = "\n机密★1年\n".encode()
    p = tmp_path / "edge.txt"
    p.write_bytes(b"a" * (SMALL_FILE + pad - len(tail)) + tail)
    assert p.stat().st_size == SMALL_FILE + pad
    fd = os.open(p, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        result = scan_fd(fd, str(p))
        if pad <= 0:
            assert os.lseek(fd, 0, os.SEEK_CUR) == 7
    finally:
        os.close(fd)
    assert result.status == "marked" and result.level is Level.SECRET and result.period == "1年"
    assert result.position is not None and result.position.offset == SMALL_FILE + pad - len(tail) + 1
