"""What a quiet host pays for the agent: per-thread CPU ticks and wake-ups read from /proc.

Used by ``bench_capture.py`` (the whole-agent idle line) and by the idle test. The agent is
started through :mod:`tests.bench.named_agent`, which gives every Python thread its name in
the kernel (``/proc/PID/task/TID/comm``), so a figure can say which thread woke.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
ALL_ON = ("process", "network", "files", "media", "host")


@dataclass(frozen=True, slots=True)
class Task:
    """One thread's counters at one moment."""

    name: str
    ticks: int          # utime + stime, in clock ticks
    voluntary: int      # voluntary context switches: the thread went to sleep (a wake-up ends each)
    involuntary: int


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the agent's workers count towards its cost)."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def tasks(pid: int) -> dict[tuple[int, int], Task]:
    """Every thread of ``pid`` and its descendants, keyed by (pid, tid)."""
    out: dict[tuple[int, int], Task] = {}
    for p in tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            base = f"/proc/{p}/task/{tid}"
            try:
                stat = Path(f"{base}/stat").read_text()
                status = Path(f"{base}/status").read_text()
                comm = Path(f"{base}/comm").read_text().strip()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            counts = {k: int(v) for k, _, v in (line.partition(":\t") for line in status.splitlines())
                      if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")}
            name = comm if p == pid else f"[{p}] {comm}"
            out[(p, tid)] = Task(name, int(fields[11]) + int(fields[12]),
                                 counts.get("voluntary_ctxt_switches", 0),
                                 counts.get("nonvoluntary_ctxt_switches", 0))
    return out


def host_forks() -> int:
    """Processes (and threads) started on the whole host since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` alone, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass(frozen=True, slots=True)
class Idle:
    """What the agent cost over one quiet window."""

    seconds: float
    cpu_percent: float          # of one core, agent and workers
    rss_mb: float               # the agent process
    threads: int                # the agent process
    wakeups_per_s: float        # voluntary context switches of every thread, per second
    load: float                 # 1-minute load average at the end
    per_thread: list[tuple[str, int, int]]   # (name, ticks, voluntary switches) over the window


def measure(pid: int, seconds: float) -> Idle:
    """Counters of ``pid``'s threads (and its workers') over ``seconds`` of wall time."""
    before, t0 = tasks(pid), time.monotonic()
    time.sleep(seconds)
    after, elapsed = tasks(pid), time.monotonic() - t0
    rows: list[tuple[str, int, int]] = []
    for key, a in after.items():
        b = before.get(key, Task(a.name, 0, 0, 0))
        rows.append((a.name, a.ticks - b.ticks, a.voluntary - b.voluntary))
    ticks = sum(r[1] for r in rows)
    wakes = sum(r[2] for r in rows)
    threads = len(os.listdir(f"/proc/{pid}/task"))
    rows.sort(key=lambda r: (-r[2], -r[1], r[0]))
    return Idle(elapsed, 100.0 * ticks / TICK / elapsed, rss_mb(pid), threads, wakes / elapsed,
                os.getloadavg()[0], rows)
