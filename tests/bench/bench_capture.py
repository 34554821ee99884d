"""Process collector figures: exec-storm capture, exec-to-event latency, idle CPU; the whole agent idle.

Run as root for netlink mode: ``python tests/bench/bench_capture.py [--idle-seconds 10]``.
``--agent-only`` prints only the whole-agent idle line: every collector on, measured over
``--agent-seconds`` after a settle, several runs, medians (CPU share of one core, RSS, threads,
wake-ups a second, with the load average beside it). Prints one human-readable line per
figure; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.events import Event
from collectors.process import ProcessCollector
from tests.bench.idle_agent import ALL_ON, Idle, host_forks, measure
from tests.bench.spawner import spawn
from tests.integration.agent_harness import AgentProcess


class Session:
    """A collector running on a thread, recording the exec events it emits."""

    def __init__(self, collector: ProcessCollector) -> None:
        self.collector = collector
        self.execs: dict[int, Event] = {}
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=collector.run, args=(self._emit, self._stop), daemon=True)

    def _emit(self, event: Event) -> bool:
        self.count += 1
        if event.kind == "process.exec" and event.process.pid is not None:
            self.execs.setdefault(event.process.pid, event)
        return True

    def __enter__(self) -> Session:
        self._thread.start()
        end = time.monotonic() + 10
        while not self.collector.health.up and time.monotonic() < end:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def settle(seen: Callable[[], int], target: int, deadline: float = 15.0) -> None:
    """Wait until ``seen()`` reaches ``target`` or stops growing."""
    end, last = time.monotonic() + deadline, -1
    while time.monotonic() < end:
        now = seen()
        if now >= target or now == last:
            return
        last = now
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def storm(mode: str, count: int, interval: float) -> None:
    """Capture ratio (and, in netlink mode, latency) for ``count`` execs of /bin/true."""
    collector = ProcessCollector({"mode": mode}, poll_interval=interval)
    with Session(collector) as s:
        spawned = spawn(count, 64, "/bin/true")
        settle(lambda: sum(1 for p in spawned if p in s.execs), count)
    caught = [s.execs[p] for p in spawned if p in s.execs]
    with_exe = sum(1 for e in caught if e.process.exe)
    label = mode if mode == "netlink" else f"poll (every {interval:g} s)"
    print(f"process {label} capture: {len(caught)}/{count} ({100 * len(caught) / count:.1f}%), "
          f"exe read for {with_exe}, drops {dict(collector.health.drops)}")
    if mode == "netlink" and caught:
        lat = [(e.time or 0.0) - spawned[e.process.pid or 0] for e in caught]
        print(f"process netlink latency (storm): p50 {1000 * percentile(lat, 50):.2f} ms, "
              f"p99 {1000 * percentile(lat, 99):.2f} ms")


def paced_latency(count: int, pace: float) -> None:
    """Exec-to-event latency when execs arrive one at a time, as on a normal host."""
    collector = ProcessCollector({"mode": "netlink"})
    with Session(collector) as s:
        spawned = spawn(count, 8, "/bin/true", pace=pace)
        settle(lambda: sum(1 for p in spawned if p in s.execs), count)
    lat = [(s.execs[p].time or 0.0) - t for p, t in spawned.items() if p in s.execs]
    if lat:
        print(f"process netlink latency (paced, {count} execs {1000 * pace:g} ms apart): "
              f"p50 {1000 * percentile(lat, 50):.2f} ms, p99 {1000 * percentile(lat, 99):.2f} ms")


def idle_cpu(mode: str, seconds: float, interval: float) -> None:
    """CPU the collector uses on a host doing what it does anyway (no load from us)."""
    collector = ProcessCollector({"mode": mode}, poll_interval=interval)
    with Session(collector) as s:
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(seconds)
        after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    label = mode if mode == "netlink" else f"poll (every {interval:g} s)"
    print(f"process {label} idle CPU: {100 * cpu / elapsed:.2f}% of one core over {elapsed:.0f} s "
          f"({s.count} events from the host), peak RSS {after.ru_maxrss / 1024:.0f} MB")


def _events(agent: AgentProcess) -> float:
    return agent.metric("dutywatch_events_total") + agent.metric("dutywatch_events_own_total")


def agent_idle(runs: int, seconds: float, settle_s: float, audit: bool) -> None:
    """The whole agent on a quiet host: every collector on, nothing happening."""
    names = ALL_ON + (("audit",) if audit else ())
    cfg = "".join(f"  {n}: {{enabled: {'true' if n in names else 'false'}}}\n" for n in (*ALL_ON, "audit"))
    results: list[Idle] = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="dw-idle-") as tmp:
            agent = AgentProcess(Path(tmp), collectors=cfg, module="tests.bench.named_agent")
            agent.start(timeout=120)
            try:
                time.sleep(settle_s)
                assert agent.proc is not None
                events, forks = _events(agent), host_forks()
                r = measure(agent.proc.pid, seconds)
                events, forks = _events(agent) - events, host_forks() - forks
            finally:
                agent.stop()
        results.append(r)
        top = ", ".join(f"{n} {w / r.seconds:.1f}/s {t}t" for n, t, w in r.per_thread if w or t)
        print(f"  run {i + 1}: CPU {r.cpu_percent:.2f}% of one core, RSS {r.rss_mb:.0f} MB, {r.threads} threads, "
              f"{r.wakeups_per_s:.1f} wake-ups/s, load {r.load:.1f}; the host meanwhile: "
              f"{forks / r.seconds:.1f} processes started/s, {events / r.seconds:.1f} events/s reached the agent; "
              f"per thread (wake-ups, ticks): {top}")

    def med(f: Callable[[Idle], float]) -> float:
        return statistics.median(f(r) for r in results)

    print(f"agent idle ({'+'.join(names)}; {seconds:g} s after a {settle_s:g} s settle, median of {runs}): "
          f"CPU {med(lambda r: r.cpu_percent):.2f}% of one core (target <= 0.3), "
          f"RSS {med(lambda r: r.rss_mb):.0f} MB (target <= 60), threads {med(lambda r: r.threads):.0f}, "
          f"wake-ups {med(lambda r: r.wakeups_per_s):.1f}/s (target <= 10); "
          f"load average {med(lambda r: r.load):.1f}")


def main(argv: list[str] | None = None) -> int:
    """Run the figures chosen on the command line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=2000, help="execs per storm (default 2000)")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle CPU period per mode (default 60)")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="poll mode period (default 1 s)")
    ap.add_argument("--paced", type=int, default=300, help="execs for the paced latency figure (default 300)")
    ap.add_argument("--agent-runs", type=int, default=3, help="whole-agent idle runs (default 3)")
    ap.add_argument("--agent-seconds", type=float, default=60.0, help="whole-agent idle window (default 60)")
    ap.add_argument("--agent-settle", type=float, default=20.0, help="settle before the window (default 20)")
    ap.add_argument("--audit", action="store_true", help="the audit collector on too (takes the audit daemon role)")
    ap.add_argument("--agent-only", action="store_true", help="only the whole-agent idle line")
    args = ap.parse_args(argv)
    if args.agent_runs > 0:
        agent_idle(args.agent_runs, args.agent_seconds, args.agent_settle, args.audit)
    if args.agent_only:
        return 0
    logging.basicConfig(level=logging.WARNING, format="  (%(message)s)")
    netlink = ProcessCollector({"mode": "netlink"}).available()
    if netlink.mode is None:
        print(f"process netlink: skipped ({netlink.reason})")
    else:
        storm("netlink", args.count, args.poll_interval)
        paced_latency(args.paced, 0.005)
    storm("poll", args.count, args.poll_interval)
    if args.idle_seconds > 0:
        if netlink.mode is not None:
            idle_cpu("netlink", args.idle_seconds, args.poll_interval)
        idle_cpu("poll", args.idle_seconds, args.poll_interval)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
