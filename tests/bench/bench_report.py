"""Report cost: time and peak RSS of `dutywatch report` (HTML, PDF) over journals of N records.

The journal is built from the shipped samples' findings (every pack),
copied with new times, units and operators, in batches of 10,000; a
lifecycle record every 5,000. Each report runs in its own process so its
peak RSS is its own. Cost should grow linearly with records; peak RSS
should not (one pass over a SQLite cursor, bounded lists).
Run: .venv/bin/python tests/bench/bench_report.py [--records 10000 1000000] [--formats html pdf]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.journal.store import Journal
from tests.unit.test_report_support import T0, sample_findings, shipped_ruleset

HOST = "js-fgw-0042"
UNITS = (("省发改委信息中心", "省发展和改革委员会"), ("省发改委办公室", "省发展和改革委员会"),
         ("省政务云运维中心", "省大数据管理局"), ("省公安厅网安总队", "省公安厅"))
OPERATORS = ("张三", "李四", "王五", "赵六", None)
BATCH = 10_000


def build(state: Path, n: int) -> float:
    """A journal of ``n`` records over 30 days; returns seconds taken."""
    templates = list(sample_findings(shipped_ruleset()))
    span = 30 * 86400.0
    t_start = time.perf_counter()
    with Journal(state, host=HOST, checkpoint_every=BATCH, clock=time.time) as j:
        batch: list[dict[str, Any]] = []
        for i in range(n):
            t = T0 + span * i / n
            if i % 5000 == 0:
                kind = "agent.start" if i % 20000 == 0 else "agent.reload"
                batch.append({"type": "lifecycle", "time": t, "host": HOST, "kind": kind,
                              "detail": {"ok": True, "why": "bench"}})
            else:
                rec = copy.deepcopy(templates[i % len(templates)])
                unit, dept = UNITS[i % len(UNITS)]
                rec["time"] = t
                rec["event"]["event"]["time"] = t
                rec["host"] = HOST
                rec["accountable"].update({"unit": unit, "department": dept,
                                           "operator": OPERATORS[(i // 7) % len(OPERATORS)]})
                batch.append(rec)
            if len(batch) >= BATCH:
                j.append_many(batch)
                batch = []
        if batch:
            j.append_many(batch)
    return time.perf_counter() - t_start


def run_report(state: Path, fmt: str, out: Path) -> tuple[float, float, float]:
    """Seconds, peak RSS (MB) and CPU seconds of one report in a child process.

    The report runs under /usr/bin/time, which reports its peak RSS: a child forked straight from this
    process would inherit this process's own high-water mark (Linux keeps it across exec), the journal
    builder's included.
    """
    argv = ["/usr/bin/time", "-f", "DWMAXRSS %M", sys.executable, "-m", "agent", "report", "--state-dir",
            str(state), "--format", fmt, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"report {fmt} failed: {err}")
    kb = next((int(line.split()[1]) for line in err.splitlines() if line.startswith("DWMAXRSS ")), 0)
    return elapsed, kb / 1024, usage.ru_utime + usage.ru_stime


def demo_pages() -> None:
    """Pages of the noisy demo host's 30-minute report (tests/unit/report_noisy.py), PDF in zh and en."""
    import datetime as dt
    import re

    from tests.unit.report_noisy import MINUTES, noisy_journal

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")

    with tempfile.TemporaryDirectory(prefix="bench-report-") as d:
        state = Path(d) / "state"
        n = noisy_journal(state)
        for lang in ("zh", "en"):
            out = Path(d) / f"demo-{lang}.pdf"
            subprocess.run([sys.executable, "-m", "agent", "report", "--state-dir", str(state), "--format", "pdf",
                            "--lang", lang, "--out", str(out), "--since", iso(T0), "--until",
                            iso(T0 + MINUTES * 60)], check=False, capture_output=True,
                           cwd=Path(__file__).resolve().parents[2])
            pages = len(re.findall(rb"/Type\s*/Page\b", out.read_bytes()))
            print(f"demo host, {MINUTES}-minute report ({n} records, 20 noisy daemons): pdf {lang} {pages} pages "
                  "(target <= 15)", flush=True)


def label(n: int) -> str:
    """10000 -> 10k, 1000000 -> 1M."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def main() -> None:
    """Build each journal, then time each format over it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--formats", nargs="+", default=["html", "pdf", "json", "csv"],
                    choices=["html", "pdf", "json", "csv"])
    args = ap.parse_args()
    print(f"records: {', '.join(map(str, args.records))}; formats: {', '.join(args.formats)}")
    demo_pages()
    for n in args.records:
        with tempfile.TemporaryDirectory(prefix="bench-report-") as d:
            state = Path(d) / "state"
            took = build(state, n)
            size = (state / "journal.db").stat().st_size / 1e6
            print(f"journal {label(n)}: built in {took:.1f} s ({n / took:,.0f} records/s), {size:.0f} MB",
                  flush=True)
            for fmt in args.formats:
                secs, rss, cpu = run_report(state, fmt, Path(d) / f"report.{fmt}")
                print(f"report {fmt} {label(n)}: {secs:.1f} s, {rss:.0f} MB peak RSS ({n / secs:,.0f} records/s; "
                      f"{cpu:.1f} CPU s, {n / max(cpu, 1e-6):,.0f} records per CPU second; "
                      f"load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
