"""Marking throughput per format, in-process and through the confined worker (files/s, per-file
latency, peak RSS); used by bench_insider.py.

Each format is a set of unmarked files (every byte is read), scanned ROUNDS
times; medians are printed. In-process figures come from a fresh child per
format (so its peak RSS is that format's alone); worker figures from a fresh
MarkingWorker per format, whose peak RSS is the worker's VmHWM. The ratio
column is the worker's per-file time over the in-process one.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from collectors.marking import scan_fd  # noqa: E402
from collectors.marking_worker import MarkingWorker  # noqa: E402
from tests.unit.marking_docs import ofd, ole2, rtf, rtf_escape, word_doc  # noqa: E402

ROUNDS = 5
FILES = 6
PARAGRAPH = "根据有关规定，现将年度工作安排通知如下，请各单位认真贯彻落实。"
CJK_FONTS = (Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
             Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"))


def _lines(n: int) -> list[str]:
    return [f"{i}. {PARAGRAPH}" for i in range(n)]


def _docx(paragraphs: list[str]) -> bytes:
    import io
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<Types><Override PartName="/word/document.xml" ContentType="application/'
                   'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
        z.writestr("word/document.xml", f'<w:document xmlns:w="w"><w:body>{body}</w:body></w:document>')
    return buf.getvalue()


def _pdf() -> bytes | None:
    font = next((f for f in CJK_FONTS if f.exists()), None)
    try:
        from fpdf import FPDF
    except ImportError:
        return None
    if font is None:
        return None
    doc = FPDF()
    doc.add_font("zh", fname=str(font))
    for _ in range(20):
        doc.add_page()
        doc.set_font("zh", size=12)
        for _ in range(30):
            doc.cell(text=PARAGRAPH)
            doc.ln()
    return bytes(doc.output())


MAKERS: dict[str, tuple[str, Callable[[], bytes | None]]] = {
    "txt": (".txt", lambda: "\n".join(_lines(16000)).encode("gb18030")),
    "utf16": (".txt", lambda: "\n".join(_lines(8000)).encode("utf-16-le")),
    "docx": (".docx", lambda: _docx(_lines(8000))),
    "docx-small": (".docx", lambda: _docx(_lines(60))),
    "ofd": (".ofd", lambda: ofd([_lines(40) for _ in range(20)])),
    "doc": (".doc", lambda: ole2(word_doc(["\r".join(_lines(2000))]))),
    "rtf": (".rtf", lambda: rtf("\\par ".join(rtf_escape(x) for x in _lines(4000)))),
    "pdf": (".pdf", _pdf),
}


def make(root: Path, name: str) -> list[Path]:
    suffix, maker = MAKERS[name]
    data = maker()
    if data is None:
        return []
    paths = []
    for i in range(FILES):
        p = root / f"{name}-{i}{suffix}"
        p.write_bytes(data)
        paths.append(p)
    return paths


def _round(paths: list[Path], scan: Callable[[int, str], object]) -> list[float]:
    times = []
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            t = time.perf_counter()
            result = scan(fd, str(p))
            times.append(time.perf_counter() - t)
        finally:
            os.close(fd)
        if getattr(result, "status", None) != "unmarked":
            sys.exit(f"bench {p.name}: unexpected {result}")
    return times


def measure(paths: list[Path], scan: Callable[[int, str], object]) -> tuple[float, float]:
    """(files/s, median seconds per file) over ROUNDS rounds after one warm-up round."""
    _round(paths, scan)
    rounds = [_round(paths, scan) for _ in range(ROUNDS)]
    per_round = statistics.median(sum(r) for r in rounds)
    per_file = statistics.median(t for r in rounds for t in r)
    return len(paths) / per_round, per_file


def _in_process(name: str, root: str) -> None:
    paths = sorted(Path(root).glob(f"{name}-*"))
    rate, latency = measure(paths, lambda fd, n: scan_fd(fd, n))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rate": rate, "latency": latency, "peak": peak}))


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _handoff() -> None:
    """The fixed cost of the process hop: an empty file scanned in-process and through the worker."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-marking-") as tmp:
        empty = [Path(tmp) / f"empty-{i}.txt" for i in range(50)]
        for p in empty:
            p.write_bytes(b"")
        _, inproc = measure(empty, lambda fd, n: scan_fd(fd, n))
        worker = MarkingWorker()
        try:
            worker.start()
            _, through = measure(empty, worker.scan)
        finally:
            worker.close()
    load = os.getloadavg()[0]
    print(f"marking empty file (the hop's fixed cost): in-process {inproc * 1e6:.0f} us, worker {through * 1e6:.0f} us "
          f"per file; load average {load:.1f} on {os.cpu_count()} CPUs (a busy machine delays each wake-up)")


def bench_marking() -> None:
    """Print one line per format: in-process and worker rates, per-file latency, peak RSS, and the ratio."""
    ratios = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-marking-") as tmp:
        root = Path(tmp)
        for name in MAKERS:
            paths = make(root, name)
            if not paths:
                print(f"marking {name:10s}: skipped (needs fpdf2 and fonts-wqy-zenhei)")
                continue
            out = subprocess.run([sys.executable, __file__, "--in-process", name, tmp], check=True,
                                 capture_output=True, text=True).stdout
            inproc = json.loads(out)
            worker = MarkingWorker()
            try:
                worker.start()
                rate, latency = measure(paths, worker.scan)
                peak = _vm_hwm(worker.pid) if worker.pid else 0
            finally:
                worker.close()
            ratio = latency / inproc["latency"]
            ratios.append(ratio)
            size = paths[0].stat().st_size
            print(f"marking {name:10s} ({size / 1024:6.0f} KiB): in-process {inproc['rate']:7.1f} files/s "
                  f"{inproc['latency'] * 1e3:8.2f} ms/file, peak RSS {inproc['peak'] / 2**20:4.0f} MB | "
                  f"worker {rate:7.1f} files/s {latency * 1e3:8.2f} ms/file, worker peak RSS "
                  f"{peak / 2**20:4.0f} MB | worker/in-process per file {ratio:.2f}")
    if ratios:
        print(f"marking worker/in-process per-file time: median {statistics.median(ratios):.2f}, "
              f"worst {max(ratios):.2f} (target: at most 1.20)")
    _handoff()
    w = MarkingWorker()
    t = time.perf_counter()
    w.start()
    print(f"marking worker start (spawn, imports, confinement): {(time.perf_counter() - t) * 1e3:.0f} ms; "
          f"confinement: {w.confinement.get('problems') or 'complete'}")
    w.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--in-process"]:
        _in_process(sys.argv[2], sys.argv[3])
    else:
        bench_marking()
