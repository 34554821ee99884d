"""Reports as a reader sees them: HTML rendered by headless Chromium (to PDF and to a measured page), PDFs read
back with poppler. Page counts, cells that hold their text, identifiers and times in one piece, a banner on
page one for every bad source, coverage of a constructed timeline."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.report_noisy import MINUTES, noisy_journal
from tests.unit.test_report_support import T0, run_cli

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or shutil.which("pdftotext") is None,
                                reason="needs chromium and poppler-utils (apt-get install chromium poppler-utils)")

# Measures every table cell once the page is laid out at A4 width, and writes what overflows into the page.
PROBE = """<script>
window.addEventListener('load', () => {
  const bad = [];
  for (const c of document.querySelectorAll('td, th')) {
    if (c.scrollWidth > c.clientWidth + 1) bad.push(c.textContent.slice(0, 60));
  }
  const pre = document.createElement('pre'); pre.id = 'overflow-probe';
  pre.textContent = 'OVERFLOW:' + JSON.stringify(bad); document.body.appendChild(pre);
});
</script>"""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                           *args], capture_output=True, text=True, timeout=180, check=False)


def _pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True, timeout=60).stdout
    return int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))


def _text(pdf: Path, first: int | None = None, last: int | None = None) -> str:
    span = [*(["-f", str(first)] if first else []), *(["-l", str(last)] if last else [])]
    return subprocess.run(["pdftotext", "-enc", "UTF-8", *span, str(pdf), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("layout") / "state"
    noisy_journal(state)
    return state


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_noisy_half_hour_in_a_browser(noisy: Path, tmp_path: Path, lang: str) -> None:
    html = tmp_path / f"r-{lang}.html"
    status, _, err = run_cli(["report", "--state-dir", str(noisy), "--lang", lang, "--out", str(html),
                              "--since", _iso(T0), "--until", _iso(T0 + MINUTES * 60)])
    assert status == 0, err
    pdf = tmp_path / f"r-{lang}.pdf"
    _chromium(f"--print-to-pdf={pdf}", html.as_uri())
    assert pdf.exists(), "chromium printed nothing"
    assert _pages(pdf) <= 15
    text = _text(pdf)
    lines = text.splitlines()
    assert not any(re.search(r"(BM-NET-0?0?|ZR-0?0?)$", line.rstrip()) for line in lines)  # ids in one piece
    assert not any(re.search(r"\d\d:\d\d:$|\d{4}-\d\d-$", line.rstrip()) for line in lines)  # times too
    first = "".join(_text(pdf, 1, 1).split())
    assert ("结论" in first and "监控覆盖" in first) if lang == "zh" else ("Verdict" in first and "coverage" in first)
    # every cell holds its text at A4 width (794 CSS px) and on a narrow screen
    probe = tmp_path / f"probe-{lang}.html"
    page = html.read_text(encoding="utf-8")
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page)
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    for width in (794, 1280):
        dom = _chromium(f"--window-size={width},1200", "--virtual-time-budget=5000", "--dump-dom",
                        probe.as_uri()).stdout
        m = re.search(r"OVERFLOW:(\[.*?\])</pre>", dom, re.S)
        assert m is not None, dom[-500:]
        assert m.group(1) == "[]", (width, m.group(1)[:500])


def test_bad_sources_and_empty_period_on_page_one(noisy: Path, tmp_path: Path) -> None:
    import sqlite3
    state = tmp_path / "state"
    shutil.copytree(noisy, state)
    html = tmp_path / "empty.html"
    run_cli(["report", "--state-dir", str(state), "--out", str(html), "--since", _iso(T0 + 10 * 86400),
             "--until", _iso(T0 + 17 * 86400)])
    pdf = tmp_path / "empty.pdf"
    _chromium(f"--print-to-pdf={pdf}", html.as_uri())
    first = "".join(_text(pdf, 1, 1).split())
    assert "期间内没有任何监控（0秒）" in first and "期间内没有违规" not in first
    conn = sqlite3.connect(state / "journal.db")
    conn.execute("UPDATE records SET body = replace(body, '203.0.113.2', '203.0.113.7') "
                 "WHERE seq = (SELECT MIN(seq) FROM records WHERE body LIKE '%203.0.113.2%')")
    conn.commit()
    conn.close()
    status, _, _ = run_cli(["report", "--state-dir", str(state), "--out", str(html)])
    assert status == 1
    _chromium(f"--print-to-pdf={pdf}", html.as_uri())
    first = "".join(_text(pdf, 1, 1).split())
    assert "未纳入本报告" in first and "验证失败" in first


def test_pdf_pages_render(noisy: Path, tmp_path: Path) -> None:
    """The PDF writer's own output, rasterised by pdftoppm: every page renders, none blank."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not installed")
    pdf = tmp_path / "r.pdf"
    status, _, err = run_cli(["report", "--state-dir", str(noisy), "--format", "pdf", "--out", str(pdf),
                              "--since", _iso(T0), "--until", _iso(T0 + MINUTES * 60)])
    assert status == 0, err
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pngs = sorted(tmp_path.glob("page-*.png"))
    assert len(pngs) == _pages(pdf) <= 15
    assert all(p.stat().st_size > 2000 for p in pngs)


def _section_pages(pdf: Path, heading: str, following: str) -> list[int]:
    """The pages from ``heading`` up to the page before ``following`` (each section starts a new page)."""
    pages = ["".join(_text(pdf, n, n).split()) for n in range(1, _pages(pdf) + 1)]
    start = next(i for i, p in enumerate(pages) if heading in p)
    end = next(i for i, p in enumerate(pages) if i > start and following in p)
    return list(range(start + 1, end + 1))


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_controls_fit_one_page(noisy: Path, tmp_path: Path, lang: str) -> None:
    """The GB/T 22239-2019 controls: those with findings (or with no rule evidence) in full, only the rules that
    found something named; the rest one line. One page, printed by Chromium and by the PDF writer alike."""
    heading, following = ("二、控制点覆盖", "三、") if lang == "zh" else ("2.Controlcoverage", "3.Accountability")
    period = ["--since", _iso(T0), "--until", _iso(T0 + MINUTES * 60)]
    html = tmp_path / f"r-{lang}.html"
    status, _, err = run_cli(["report", "--state-dir", str(noisy), "--lang", lang, "--out", str(html), *period])
    assert status == 0, err
    printed = tmp_path / f"printed-{lang}.pdf"
    _chromium(f"--print-to-pdf={printed}", html.as_uri())
    written = tmp_path / f"written-{lang}.pdf"
    status, _, err = run_cli(["report", "--state-dir", str(noisy), "--lang", lang, "--format", "pdf",
                              "--out", str(written), *period])
    assert status == 0, err
    for pdf in (printed, written):
        pages = _section_pages(pdf, heading, following)
        assert len(pages) == 1, (pdf.name, pages)
        text = "".join(_text(pdf, pages[0], pages[0]).split())
        assert "ZR-001" in text and "BM-NET-001" in text  # the rules that found something
        assert "DB-AUTH-001" not in text  # a quiet rule is counted, not listed
        assert ("8.1.4.1身份鉴别" in text) if lang == "zh" else ("8.1.4.1Identificationandauthentication" in text)
