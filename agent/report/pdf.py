"""The report as an A4 PDF with an embedded CJK font and vector charts (fpdf2).

fpdf2 is pure Python, already used by the marking tests, embeds TrueType
collections (``.ttc``) as subsets so a report carries only the glyphs it
uses, and repeats table headings on every page. Charts are drawn with the
PDF's own rectangle, line and text operators, never as images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from agent.report.build import Report
from agent.report.charts import Chart, Label, Line, Rect
from agent.report.errors import ReportError
from agent.report.sections import Figure, Para, Section, Table, all_sections, header

FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/arphic/uming.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc"),
)
INSTALL_HINT = ("install one with `apt-get install fonts-wqy-zenhei` (or fonts-noto-cjk), "
                "or name a TTF/TTC file in the config as `report: {font: PATH}`")
FAMILY = "cjk"
PT_PER_MM = 72 / 25.4


def find_font(configured: Path | None, candidates: Iterable[Path] = FONT_CANDIDATES) -> Path:
    """The CJK font to embed: the configured one, else the first installed candidate."""
    if configured is not None:
        if not configured.is_file():
            raise ReportError(f"report.font {configured}: no such file; {INSTALL_HINT}")
        return configured
    for c in candidates:
        if c.is_file():
            return c
    raise ReportError(f"no Chinese font found for the PDF report (looked for {', '.join(map(str, candidates))}); "
                      f"{INSTALL_HINT}")


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


class _Writer:
    def __init__(self, r: Report | None, font: Path, lang: str = "zh", title: str = "",
                 facts: tuple[tuple[str, str], ...] = (), sections: list[Section] | None = None) -> None:
        import logging

        from fpdf import FPDF
        from fpdf.enums import WrapMode

        # fontTools names every table of the font it does not subset; nothing for the user to act on.
        logging.getLogger("fontTools.subset").setLevel(logging.ERROR)

        # Break at spaces in both languages: fpdf2 still breaks a run of Chinese (or anything longer than
        # the cell) between characters, but never splits an identifier like BM-NET-001 that fits.
        self.wrap = WrapMode.WORD
        if r is not None:
            lang = r.lang
            title, facts = header(r)
            sections = all_sections(r)
        self.facts = facts
        self.title = title
        self.sections = sections or []
        pdf = FPDF(orientation="P", unit="mm", format="A4")
        pdf.set_margins(12, 14, 12)
        pdf.set_auto_page_break(True, margin=14)
        try:
            pdf.add_font(FAMILY, "", str(font))
        except Exception as exc:  # fpdf2 raises several kinds for an unusable font file
            raise ReportError(f"{font}: cannot embed this font in a PDF ({exc}); {INSTALL_HINT}") from exc
        pdf.set_title(title)
        pdf.set_creator("DutyWatch")
        pdf.set_lang("zh-CN" if lang == "zh" else "en")
        footer_text = title

        def footer() -> None:
            pdf.set_y(-10)
            pdf.set_font(FAMILY, size=7)
            pdf.set_text_color(100, 100, 100)
            pdf.cell(0, 4, f"{footer_text}    {pdf.page_no()}/{{nb}}", align="C")
            pdf.set_text_color(0, 0, 0)

        pdf.footer = footer  # type: ignore[method-assign]
        self.pdf = pdf
        self.one_page = False

    def heading(self, text: str, size: float) -> None:
        pdf = self.pdf
        if pdf.get_y() > pdf.h - 40:
            pdf.add_page()
        pdf.set_font(FAMILY, size=size)
        pdf.multi_cell(0, size * 0.5, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1.5)

    def para(self, b: Para) -> None:
        pdf = self.pdf
        size = 7.5 if b.style == "code" else 9
        pdf.set_font(FAMILY, size=size)
        colors = {"ok": (27, 94, 32), "bad": (183, 28, 28), "warn": (153, 90, 0), "note": (85, 85, 85)}
        pdf.set_text_color(*colors.get(b.style, (0, 0, 0)))
        fill = b.style == "code"
        if fill:
            pdf.set_fill_color(244, 244, 244)
        pdf.multi_cell(0, size * 0.5, b.text, border=1 if fill else 0, fill=fill, new_x="LMARGIN", new_y="NEXT",
                       wrapmode=self.wrap if not fill else _char_wrap(), align="L")
        pdf.set_text_color(0, 0, 0)
        pdf.ln(1.5)

    def table(self, t: Table) -> None:
        from fpdf.fonts import FontFace

        pdf = self.pdf
        if t.caption:
            self.heading(t.caption, 10)
        if not t.rows:
            return
        heads = any(t.headers)
        pdf.set_fill_color(255, 255, 255)
        pdf.set_font(FAMILY, size=7 if len(t.headers) > 5 else 8)
        style = FontFace(emphasis="", fill_color=(232, 232, 232))
        with pdf.table(col_widths=t.weights, text_align="LEFT", v_align="TOP", wrapmode=self.wrap,
                       first_row_as_headings=heads, headings_style=style, line_height=pdf.font_size * 1.35,
                       padding=0.8) as table:
            if heads:
                row = table.row()
                for h in t.headers:
                    row.cell(h)
            for cells in t.rows:
                row = table.row()
                for c in cells:
                    row.cell(c)
        pdf.ln(2)

    def chart(self, f: Figure) -> None:
        pdf = self.pdf
        self.heading(f.caption, 10)
        c: Chart = f.chart
        scale = min(pdf.epw / c.width, 0.28)
        height = c.height * scale
        if pdf.get_y() + height > pdf.page_break_trigger:
            pdf.add_page()
        x0, y0 = pdf.l_margin, pdf.get_y()
        pdf.set_line_width(0.2)
        for s in c.shapes:
            if isinstance(s, Rect):
                pdf.set_fill_color(*_rgb(s.fill))
                pdf.rect(x0 + s.x * scale, y0 + s.y * scale, s.w * scale, s.h * scale, style="F")
            elif isinstance(s, Line):
                pdf.set_draw_color(*_rgb(s.stroke))
                pdf.line(x0 + s.x1 * scale, y0 + s.y1 * scale, x0 + s.x2 * scale, y0 + s.y2 * scale)
            elif isinstance(s, Label):
                self._label(s, x0, y0, scale)
        pdf.set_draw_color(0, 0, 0)
        pdf.set_fill_color(255, 255, 255)
        pdf.set_y(y0 + height + 3)

    def _label(self, s: Label, x0: float, y0: float, scale: float) -> None:
        pdf = self.pdf
        pdf.set_font(FAMILY, size=s.size * scale * PT_PER_MM)
        w = pdf.get_string_width(s.text)
        shift = {"start": 0.0, "middle": w / 2, "end": w}.get(s.anchor, 0.0)
        pdf.text(x0 + s.x * scale - shift, y0 + s.y * scale, s.text)

    def section(self, s: Section, new_page: bool) -> None:
        if new_page:
            self.pdf.add_page()
        self.heading(s.title, 14)
        for b in s.blocks:
            if isinstance(b, Para):
                self.para(b)
            elif isinstance(b, Table):
                self.table(b)
            elif isinstance(b, Figure):
                self.chart(b)

    def write(self) -> bytes:
        pdf = self.pdf
        pdf.add_page()
        self.heading(self.title, 18)
        self.table(Table("", ("", ""), self.facts, (1, 4)))
        for i, s in enumerate(self.sections):
            self.section(s, new_page=i > 0 and not self.one_page)
        return bytes(pdf.output())


def _char_wrap() -> Any:
    from fpdf.enums import WrapMode
    return WrapMode.CHAR


def write_pdf(r: Report, out: BinaryIO, font: Path) -> None:
    """Write the report as PDF to ``out``, embedding ``font`` (a TTF or TTC with Chinese glyphs)."""
    out.write(_Writer(r, font).write())


def write_document_pdf(lang: str, title: str, facts: tuple[tuple[str, str], ...], sections: list[Section],
                       out: BinaryIO, font: Path, one_page: bool = False) -> None:
    """Write a titled document of sections as PDF; ``one_page`` keeps every section on the first page."""
    w = _Writer(None, font, lang, title, facts, sections)
    w.one_page = one_page
    out.write(w.write())
