"""Files collector figures: how soon an operation is seen and reported, its threads, and a burst's cost.

Run as root (fanotify): ``python tests/bench/bench_files.py [--paced 200] [--burst 5000]``.

- *paced*: a child process creates and writes, renames and deletes files one at a time,
  20 ms apart, then moves a few out of the tree, a second apart; for each operation, the
  time from the child's return from the system call to the joining thread taking the inotify
  operation (``seen``), and to the event (``event``; it waits on purpose for its fanotify
  record and the writer's close, ``WINDOW`` = 0.3 s, or is made due by the next operation on
  its path; a move out waits ``MOVE_DELAY`` = 0.5 s more for a second half). p50 and p99.
- *threads*: the threads the collector runs while it watches (watchdog's observer
  and emitters before; none for inotify now).
- *burst*: a child creates and writes ``--burst`` files as fast as it can; the events that
  came, the operations counted as dropped, and the events per CPU second of this process
  (the collector's threads) over the burst.

Prints one human-readable line per figure; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.events import Event
from collectors.files import FilesCollector

PACED = textwrap.dedent("""
    import json, os, sys, time
    d, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    marks = []
    for i in range(n):
        p, q = os.path.join(d, f"f{i}.txt"), os.path.join(d, f"g{i}.txt")
        with open(p, "w") as f:
            f.write("x" * 100)
        marks.append(("file.create", p, time.monotonic()))
        time.sleep(0.02)
        os.rename(p, q)
        marks.append(("file.rename", p, time.monotonic()))
        time.sleep(0.02)
        os.unlink(q)
        marks.append(("file.delete", q, time.monotonic()))
        time.sleep(0.02)
    # A move out of the tree is held for its second half (MOVE_DELAY), and what follows waits behind it:
    # these come on their own, a second apart.
    for i in range(max(1, n // 20)):
        p = os.path.join(d, f"m{i}.txt")
        with open(p, "w") as f:
            f.write("z")
        time.sleep(0.5)
        os.rename(p, os.path.join(out, f"m{i}.txt"))
        marks.append(("move out", p, time.monotonic()))
        time.sleep(0.8)
    print(json.dumps(marks))
""")

BURST = textwrap.dedent("""
    import os, sys
    d, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        with open(os.path.join(d, f"b{i}.txt"), "w") as f:
            f.write("y")
""")


class Session:
    """The collector on a thread; what it emits, and when the joining thread took each operation."""

    def __init__(self, root: str) -> None:
        self.collector = c = FilesCollector({"paths": [root]})
        self.events: list[tuple[float, Event]] = []
        self.seen: dict[tuple[str, str], float] = {}
        take = c._fs_op

        def spy(op: Any, now: float, wall: float) -> None:
            self.seen.setdefault((op.what, op.path), time.monotonic())
            take(op, now, wall)

        c._fs_op = spy  # type: ignore[method-assign]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=c.run, args=(self._emit, self.stop), name="dw-files", daemon=True)

    def _emit(self, e: Event) -> bool:
        self.events.append((time.monotonic(), e))
        return True

    def __enter__(self) -> Session:
        before = set(threading.enumerate())
        self.thread.start()
        end = time.monotonic() + 10
        while not self.collector.watched_roots() and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.5)
        self.threads = sorted(t.name for t in set(threading.enumerate()) - before)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def paced(n: int) -> None:
    top = tempfile.mkdtemp(prefix="dw-bench-files-")
    d, out = os.path.join(top, "w"), os.path.join(top, "out")
    os.mkdir(d)
    os.mkdir(out)
    try:
        with Session(d) as s:
            print(f"files threads while watching one tree: {len(s.threads)} {s.threads}")
            marks = json.loads(subprocess.run([sys.executable, "-c", PACED, d, out, str(n)], check=True,
                                              capture_output=True, text=True).stdout)
            time.sleep(2.0)
        by_kind: dict[str, tuple[list[float], list[float]]] = {}
        for kind, path, t in marks:
            seen, event = by_kind.setdefault(kind, ([], []))
            what = {"file.create": "created", "file.rename": "moved"}.get(kind, "deleted")
            if (what, path) in s.seen:
                seen.append(s.seen[what, path] - t)
            want = "file.rename" if kind == "move out" else kind
            times = [at for at, e in s.events if e.kind == want and e.file.path == path]
            if times:
                event.append(times[0] - t)
        for kind, (seen, event) in sorted(by_kind.items()):
            print(f"files paced {kind} (n={len(event)}): seen p50 {1000 * statistics.median(seen):.1f} ms, "
                  f"p99 {1000 * pct(seen, 99):.1f} ms; event p50 {1000 * statistics.median(event):.0f} ms, "
                  f"p99 {1000 * pct(event, 99):.0f} ms")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def burst(n: int) -> None:
    d = tempfile.mkdtemp(prefix="dw-bench-files-")
    try:
        with Session(d) as s:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", BURST, d, str(n)], check=True)
            end = time.monotonic() + 60
            while sum(1 for _, e in s.events if e.kind == "file.create") < n and time.monotonic() < end:
                time.sleep(0.1)
            last = max((at for at, _ in s.events), default=t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            dropped = dict(s.collector.health.drops)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        got = sum(1 for _, e in s.events if e.kind == "file.create")
        print(f"files burst of {n} new files: {got} file.create events, dropped {dropped or 0}, "
              f"last event {last - t0:.1f} s after the start, {cpu:.2f} CPU s, {got / cpu:.0f} events per CPU second")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--paced", type=int, default=200, help="rounds of the paced figure (default 200)")
    ap.add_argument("--burst", type=int, default=5000, help="files in the burst (default 5000)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("files bench: skipped (needs root for fanotify)")
        return 0
    paced(args.paced)
    burst(args.burst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
