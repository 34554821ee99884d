"""The report as one self-contained HTML file: inline CSS and SVG, no external resource, A4 print.

Everything that came from a record is escaped (``html.escape`` with
quotes) after the model has cut it and written control characters as
escapes, so names, paths and command lines cannot break out of their cell.
"""

from __future__ import annotations

import re
from html import escape
from typing import TextIO

from agent.report.build import Report
from agent.report.charts import to_svg
from agent.report.sections import Figure, Para, Section, Table, all_sections, header

CSS = """
@page { size: A4; margin: 15mm 12mm 15mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "Noto Sans CJK SC", "WenQuanYi Zen Hei", "Microsoft YaHei", "PingFang SC", sans-serif;
       font-size: 10pt; color: #111; margin: 0 auto; padding: 0 16px; max-width: 1280px; line-height: 1.45; }
.wide { overflow-x: auto; }
@media print { body { max-width: none; padding: 0; } .wide { overflow: visible; } }
h1 { font-size: 18pt; margin: 0 0 6pt; }
h2 { font-size: 13pt; border-bottom: 2px solid #333; margin: 18pt 0 6pt; padding-bottom: 2pt;
     break-after: avoid; page-break-after: avoid; }
h3 { font-size: 11pt; margin: 10pt 0 4pt; break-after: avoid; page-break-after: avoid; }
section { break-before: auto; }
section + section { break-before: page; page-break-before: always; }
table { border-collapse: collapse; width: 100%; margin: 4pt 0 8pt; table-layout: fixed; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
th, td { border: 0.5pt solid #999; padding: 2pt 3pt; text-align: left; vertical-align: top;
         overflow-wrap: break-word; word-break: normal; font-size: 8.5pt; }
@media screen and (max-width: 720px) { table { table-layout: auto; min-width: 640px; } }
th { background: #e8e8e8; }
td.nb { white-space: nowrap; }
caption { text-align: left; font-weight: bold; padding: 4pt 0; }
figure { margin: 6pt 0; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-weight: bold; margin-bottom: 2pt; }
svg text { font-family: inherit; fill: #222; }
.facts th { width: 25%; }
.note { color: #555; font-size: 9pt; }
.ok { color: #1b5e20; font-weight: bold; }
.bad { color: #b71c1c; font-weight: bold; }
.warn { color: #995a00; font-weight: bold; }
pre.code { background: #f4f4f4; border: 0.5pt solid #bbb; padding: 4pt; white-space: pre-wrap;
           overflow-wrap: anywhere; font-size: 8.5pt; }
nav ol { margin: 4pt 0 0 16pt; padding: 0; }
@media print { nav { display: none; } a { color: inherit; text-decoration: none; } }
"""


def _e(text: str) -> str:
    return escape(text, quote=True)


# A cell that is one short token (a rule id, a host, a number) or a time is never broken across lines
# (a browser would break after its hyphens); the table widths leave room for it.
_WHOLE = re.compile(r"(?=[^-\d]*[-\d])[A-Za-z0-9_.:+%-]{1,24}"  # with a digit or hyphen: ids, hosts, counts
                    r"|\d{4}-\d\d-\d\d\u00a0\d\d:\d\d(:\d\d)?|\d\d-\d\d\u00a0\d\d:\d\d")


def _td(text: str) -> str:
    return f'<td class="nb">{_e(text)}</td>' if _WHOLE.fullmatch(text) else f"<td>{_e(text)}</td>"


def _table(t: Table) -> str:
    total = sum(t.weights) or 1
    cols = "".join(f'<col style="width:{100 * w / total:.1f}%">' for w in t.weights)
    out = ['<div class="wide"><table>']
    if t.caption:
        out.append(f"<caption>{_e(t.caption)}</caption>")
    out.append(f"<colgroup>{cols}</colgroup>")
    if any(t.headers):
        out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in t.headers) + "</tr></thead>")
    out.append("<tbody>")
    for row in t.rows:
        out.append("<tr>" + "".join(_td(c) for c in row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _section(s: Section) -> str:
    out = [f'<section id="{_e(s.id)}"><h2>{_e(s.title)}</h2>']
    for b in s.blocks:
        if isinstance(b, Para):
            if b.style == "code":
                out.append(f'<pre class="code">{_e(b.text)}</pre>')
            else:
                out.append(f'<p class="{_e(b.style)}">{_e(b.text)}</p>')
        elif isinstance(b, Table):
            out.append(_table(b))
        elif isinstance(b, Figure):
            out.append(f"<figure><figcaption>{_e(b.caption)}</figcaption>{to_svg(b.chart)}</figure>")
    out.append("</section>")
    return "\n".join(out)


def write_html(r: Report, out: TextIO) -> None:
    """Write the whole report as HTML to ``out``."""
    title, facts = header(r)
    write_document(r.lang, title, facts, all_sections(r), out)


def write_document(lang_code: str, title: str, facts: tuple[tuple[str, str], ...], sections: list[Section],
                   out: TextIO, one_page: bool = False) -> None:
    """Write a titled document of sections (a report, an incident sheet) as HTML to ``out``."""
    lang = "zh-CN" if lang_code == "zh" else "en"
    css = CSS + ("section + section { break-before: auto; page-break-before: auto; }\n" if one_page else "")
    out.write(f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
              '<meta name="viewport" content="width=device-width, initial-scale=1">'
              # No script and no remote load, whatever a record contains.
              "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
              "style-src 'unsafe-inline'; img-src data:\">"
              f"<title>{_e(title)}</title><style>{css}</style></head><body>\n")
    out.write(f"<header><h1>{_e(title)}</h1><table class=\"facts\"><tbody>")
    for k, v in facts:
        out.write(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    out.write("</tbody></table></header>\n<nav><ol>")
    for s in sections:
        out.write(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a></li>')
    out.write("</ol></nav>\n")
    for s in sections:
        out.write(_section(s))
        out.write("\n")
    out.write("</body></html>\n")
