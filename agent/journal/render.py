"""How ``dutywatch events`` prints records: JSON lines, or an aligned table.

The table streams, so its columns have fixed display widths; a cell that is
too long is cut with an ellipsis. Width is counted in terminal cells: Chinese
characters take two.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

from agent.journal.query import Row
from agent.textsafe import visible


def cell_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide and fullwidth characters count two."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def fit(text: str, width: int, *, right: bool = False) -> str:
    """``text`` cut or padded to exactly ``width`` cells."""
    if cell_width(text) > width:
        out, used = [], 0
        for ch in text:
            w = cell_width(ch)
            if used + w > width - 1:
                break
            out.append(ch)
            used += w
        text = "".join(out) + "…"
    pad = " " * (width - cell_width(text))
    return pad + text if right else text + pad


_UNSAFE_IN_LINES = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_line(row: Row) -> str:
    """One record as a JSON line, ``seq`` first: valid UTF-8, and one line to every line splitter.

    Chinese stays readable; invalid UTF-8 from process names (surrogate
    escapes), Unicode line separators, DEL, C1 controls and bidi marks are
    written as ``\\uXXXX`` (JSON escapes C0 itself), so a SIEM, ``jq`` or
    ``str.splitlines`` sees exactly one record per line and a terminal shows
    the line as it is.
    """
    text = json.dumps({"seq": row.seq, **row.record}, ensure_ascii=False)
    return _UNSAFE_IN_LINES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# (header, width, right-aligned); the message takes the rest of the line.
COLUMNS = (("SEQ", 8, True), ("TIME", 19, False), ("SEVERITY", 8, False), ("ACTION", 6, False),
           ("RULE", 14, False), ("UNIT", 20, False), ("OPERATOR", 12, False))


def _text(value: Any, lang: str) -> str:
    if isinstance(value, dict):
        got = value.get(lang) or value.get("en") or value.get("zh")
        return str(got) if got is not None else ""
    return "" if value is None else str(value)


def table_cells(row: Row, lang: str) -> list[str]:
    """The cells of one row, before fitting."""
    r = row.record
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("time", 0))))
    if r.get("type") == "lifecycle":
        detail = json.dumps(r.get("detail", {}), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return [str(row.seq), when, "-", "-", _text(r.get("kind"), lang), "", "", detail]
    acc = r.get("accountable") or {}
    return [str(row.seq), when, _text(r.get("severity"), lang), _text(r.get("action"), lang),
            _text(r.get("rule"), lang), _text(acc.get("unit"), lang), _text(acc.get("operator"), lang),
            _text(r.get("message"), lang)]


def table_lines(rows: Iterable[Row], lang: str) -> Iterator[str]:
    """The header, then one aligned line a record; every cell's control and bidi characters made visible."""
    def line(cells: list[str]) -> str:
        cells = [visible(c) for c in cells]
        fitted = [fit(c, w, right=r) for c, (_, w, r) in zip(cells, COLUMNS, strict=False)]
        return "  ".join([*fitted, cells[-1]]).rstrip()

    yield line([h for h, _, _ in COLUMNS] + ["MESSAGE"])
    for row in rows:
        yield line(table_cells(row, lang))
