"""Marking scan throughput: files/s and MB/s for .txt, .docx and .pdf, and peak RSS.

Each format is a set of unmarked files (the worst case: every byte is read),
scanned five times; the median round is printed. Run: python tests/bench/bench_marking.py
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from collectors.marking import scan_file

ROUNDS = 5
FILES = 8
PARAGRAPH = "根据有关规定，现将年度工作安排通知如下，请各单位认真贯彻落实。"
CJK_FONTS = (
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
)


def make_txt(path: Path) -> None:
    """About 1 MiB of Chinese text, GB18030-encoded as many Windows files are."""
    path.write_bytes("".join(f"{i}. {PARAGRAPH}\n" for i in range(16000)).encode("gb18030"))


def make_docx(path: Path) -> None:
    """A Word document of about 2 MiB of XML in 4000 numbered paragraphs of three runs each."""
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    third = len(PARAGRAPH) // 3
    runs = [PARAGRAPH[:third], PARAGRAPH[third:2 * third], PARAGRAPH[2 * third:]]
    body = "".join(
        f'<w:p w:rsidR="{i:08X}"><w:r><w:t>{i}. </w:t></w:r>'
        + "".join(f'<w:r><w:rPr><w:sz w:val="32"/></w:rPr><w:t>{r}</w:t></w:r>' for r in runs)
        + "</w:p>"
        for i in range(4000)
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", f"<w:document {w}><w:body>{body}</w:body></w:document>")


def make_pdf(path: Path) -> bool:
    """A 20-page Chinese PDF with a CID font; False when fpdf2 or a CJK font is missing."""
    font = next((f for f in CJK_FONTS if f.exists()), None)
    try:
        from fpdf import FPDF
    except ImportError:
        return False
    if font is None:
        return False
    doc = FPDF()
    doc.add_font("zh", fname=str(font))
    for _ in range(20):
        doc.add_page()
        doc.set_font("zh", size=12)
        for _ in range(30):
            doc.cell(text=PARAGRAPH)
            doc.ln()
    doc.output(str(path))
    return True


def bench(name: str, paths: list[Path]) -> None:
    """Scan ``paths`` ROUNDS times and print the median round's rates."""
    size = sum(p.stat().st_size for p in paths)
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for p in paths:
            result = scan_file(p)
            if result.status != "unmarked":
                sys.exit(f"bench {name}: unexpected {result}")
        rounds.append(time.perf_counter() - start)
    median = statistics.median(rounds)
    print(f"marking {name:5s}: {len(paths) / median:8.1f} files/s {size / median / 1e6:7.1f} MB/s "
          f"({size / len(paths) / 1024:.0f} KiB each, median of {ROUNDS})")


def make_all(root: Path) -> None:
    """Write FILES fixtures of each format under ``root`` (pdf only if it can)."""
    makers: list[tuple[str, Callable[[Path], object]]] = [
        (".txt", make_txt), (".docx", make_docx), (".pdf", make_pdf)]
    for suffix, make in makers:
        first = root / f"doc0{suffix}"
        if make(first) is False:
            continue
        for i in range(1, FILES):
            (root / f"doc{i}{suffix}").write_bytes(first.read_bytes())


def main() -> int:
    """Build the fixtures in a child process (so its memory is not counted), scan, print peak RSS."""
    if sys.argv[1:2] == ["--make"]:
        make_all(Path(sys.argv[2]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--make", tmp], check=True, stderr=subprocess.DEVNULL)
        for name in ("txt", "docx", "pdf"):
            paths = sorted(root.glob(f"*.{name}"))
            if not paths:
                print(f"marking {name:5s}: skipped (needs fpdf2 and fonts-wqy-zenhei)")
                continue
            bench(name, paths)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"marking peak RSS: {peak:.0f} MB (scanning process, pypdf imported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
