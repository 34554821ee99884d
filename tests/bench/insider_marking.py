"""Marking throughput per format, in-process and through the confined worker (files/s, per-file
latency and CPU, peak RSS); used by bench_insider.py.

Each format is a set of unmarked files (every byte is read), scanned ROUNDS
times; medians are printed. In-process figures come from a fresh child per
format (so its peak RSS is that format's alone); worker figures from a fresh
MarkingWorker per format, whose peak RSS is the worker's VmHWM. The worker is
measured two ways: one file per request (a lone file: the full hop each time)
and in batches as the files collector hands them over (a burst goes in one
request of up to MAX_BATCH descriptors; per file = the batch's time / files).
CPU per file adds the parent's and the worker's CPU time: on a shared, loaded
machine wall time mostly measures waiting for a core, CPU time what it costs.
The ratio columns are the worker's per-file time (and CPU) over the in-process one.
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
from collectors.marking_worker import MAX_BATCH, MarkingWorker  # noqa: E402
from tests.unit.marking_docs import ofd, ole2, rtf, rtf_escape, word_doc  # noqa: E402

ROUNDS = 5
FILES = 6
SMALL_FILES = 48  # the small formats: enough files for whole batches
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
    for i in range(SMALL_FILES if len(data) < 16 * 1024 else FILES):
        p = root / f"{name}-{i}{suffix}"
        p.write_bytes(data)
        paths.append(p)
    return paths


def _cpu(pid: int | None = None) -> float:
    """CPU seconds of this process (or of every thread of ``pid``, in nanoseconds from schedstat)."""
    if pid is None:
        return time.process_time()
    return sum(int((t / "schedstat").read_text().split()[0]) for t in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def _check(p: Path, result: object) -> None:
    if getattr(result, "status", None) != "unmarked":
        sys.exit(f"bench {p.name}: unexpected {result}")


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
        _check(p, result)
    return times


def measure(paths: list[Path], scan: Callable[[int, str], object], pid: int | None = None
            ) -> tuple[float, float, float]:
    """(files/s, median seconds per file, CPU seconds per file) over ROUNDS rounds after one warm-up
    round; CPU is this process's plus ``pid``'s."""
    _round(paths, scan)
    cpu0 = _cpu() + (_cpu(pid) if pid else 0.0)
    rounds = [_round(paths, scan) for _ in range(ROUNDS)]
    cpu = _cpu() + (_cpu(pid) if pid else 0.0) - cpu0
    per_round = statistics.median(sum(r) for r in rounds)
    per_file = statistics.median(t for r in rounds for t in r)
    return len(paths) / per_round, per_file, cpu / (ROUNDS * len(paths))


def measure_batched(paths: list[Path], worker: MarkingWorker) -> tuple[float, float, float]:
    """(files/s, seconds per file, CPU seconds per file) with the files handed over in batches."""
    def one_round() -> float:
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        try:
            t = time.perf_counter()
            results = worker.scan_many([(fd, str(p)) for fd, p in zip(fds, paths, strict=True)])
            elapsed = time.perf_counter() - t
        finally:
            for fd in fds:
                os.close(fd)
        for p, r in zip(paths, results, strict=True):
            _check(p, r)
        return elapsed

    one_round()
    cpu0 = _cpu() + _cpu(worker.pid)
    rounds = [one_round() for _ in range(ROUNDS)]
    cpu = _cpu() + _cpu(worker.pid) - cpu0
    per_round = statistics.median(rounds)
    return len(paths) / per_round, per_round / len(paths), cpu / (ROUNDS * len(paths))


def interleaved(paths: list[Path], worker: MarkingWorker) -> tuple[float, float, float, float]:
    """(in-process CPU, worker CPU, in-process wall, worker wall) per file, in seconds, from rounds
    taken in turn in this process and through the worker in batches: on a shared machine whose load
    changes by the minute, only rounds taken side by side compare. Worker CPU is the parent's and the
    worker's together."""
    def inproc_round() -> tuple[float, float]:
        c, t = _cpu(), time.perf_counter()
        _round(paths, lambda fd, n: scan_fd(fd, n))
        return _cpu() - c, time.perf_counter() - t

    def worker_round() -> tuple[float, float]:
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        try:
            c, t = _cpu() + _cpu(worker.pid), time.perf_counter()
            results = worker.scan_many([(fd, str(p)) for fd, p in zip(fds, paths, strict=True)])
            wall = time.perf_counter() - t
            cpu = _cpu() + _cpu(worker.pid) - c
        finally:
            for fd in fds:
                os.close(fd)
        for p, r in zip(paths, results, strict=True):
            _check(p, r)
        return cpu, wall

    inproc_round()
    worker_round()
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(inproc_round())
        b.append(worker_round())
    n = len(paths)
    return (sum(x[0] for x in a) / (n * ROUNDS), sum(x[0] for x in b) / (n * ROUNDS),
            statistics.median(x[1] for x in a) / n, statistics.median(x[1] for x in b) / n)


def _in_process(name: str, root: str) -> None:
    paths = sorted(Path(root).glob(f"{name}-[0-9]*"))
    rate, latency, cpu = measure(paths, lambda fd, n: scan_fd(fd, n))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rate": rate, "latency": latency, "cpu": cpu, "peak": peak}))


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _handoff() -> None:
    """The fixed cost of the process hop: an empty file scanned in-process and through the worker."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-marking-") as tmp:
        empty = [Path(tmp) / f"empty-{i}.txt" for i in range(48)]
        for p in empty:
            p.write_bytes(b"")
        _, inproc, _ = measure(empty, lambda fd, n: scan_fd(fd, n))
        worker = MarkingWorker()
        try:
            worker.start()
            _, through, _ = measure(empty, worker.scan, worker.pid)
            _, batched, _ = measure_batched(empty, worker)
        finally:
            worker.close()
    load = os.getloadavg()[0]
    print(f"marking empty file (the hop's fixed cost): in-process {inproc * 1e6:.0f} us, worker {through * 1e6:.0f} us "
          f"per file one by one, {batched * 1e6:.0f} us in batches of {MAX_BATCH}; load average {load:.1f} on "
          f"{os.cpu_count()} CPUs (a busy machine delays each wake-up)")


def bench_marking(only: list[str] | None = None) -> None:
    """Print one line per format: in-process and worker rates, per-file latency and CPU, peak RSS, ratios."""
    single, single_cpu, batched, batched_cpu = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="dw-bench-marking-") as tmp:
        root = Path(tmp)
        for name in only or list(MAKERS):
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
                _, one, one_cpu = measure(paths, worker.scan, worker.pid)
                rate, _, _ = measure_batched(paths, worker)
                in_cpu, w_cpu, in_wall, w_wall = interleaved(paths, worker)
                peak = _vm_hwm(worker.pid) if worker.pid else 0
            finally:
                worker.close()
            single.append(one / inproc["latency"])
            single_cpu.append(one_cpu / inproc["cpu"])
            batched.append(w_wall / in_wall)
            batched_cpu.append(w_cpu / in_cpu)
            size = paths[0].stat().st_size
            print(f"marking {name:10s} ({size / 1024:6.0f} KiB, {len(paths)} files): in-process "
                  f"{inproc['rate']:7.1f} files/s, peak RSS {inproc['peak'] / 2**20:4.0f} MB | worker batched "
                  f"{rate:7.1f} files/s, peak RSS {peak / 2**20:4.0f} MB | side by side per file: in-process "
                  f"{in_wall * 1e3:8.2f} ms cpu {in_cpu * 1e3:7.2f} ms, worker batched {w_wall * 1e3:8.2f} ms "
                  f"cpu {w_cpu * 1e3:7.2f} ms: ratio {batched[-1]:.2f} (cpu {batched_cpu[-1]:.2f}) | "
                  f"one by one {one * 1e3:8.2f} ms/file cpu {one_cpu * 1e3:7.2f} ms, {single[-1]:.2f} of in-process "
                  f"(cpu {single_cpu[-1]:.2f})")
    if batched:
        print(f"marking worker/in-process per-file time, batched as the collector hands files over: median "
              f"{statistics.median(batched):.2f}, worst {max(batched):.2f}; CPU per file: median "
              f"{statistics.median(batched_cpu):.2f}, worst {max(batched_cpu):.2f}; a lone file (one by one): median "
              f"{statistics.median(single):.2f}, worst {max(single):.2f}, "
              f"CPU median {statistics.median(single_cpu):.2f}, worst {max(single_cpu):.2f} (target: at most 1.20); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
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
        bench_marking(sys.argv[1:] or None)
