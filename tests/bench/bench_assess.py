"""Configuration assessment: a full run of the shipped policy on this host and on a seeded Debian root,
and an inventory diff of 3,000 packages. Targets: under 10 s wall and 2 s CPU a run, flat memory.

Each run is the agent's own child process (``dutywatch assess --format json --inventory``), measured
with wait4: wall time, user+system CPU and peak RSS; five runs, medians printed. The seeded root is
the test suite's (tests/assess: debootstrap cached in /var/cache/dutywatch-test, hardened, then 30
misconfigurations).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "assess"))

RUNS = 5


def child_run(argv: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one child."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {err}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def report(label: str, argv: list[str]) -> None:
    runs = [child_run(argv) for _ in range(RUNS)]
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    rss = [r[2] for r in runs]
    print(f"assess {label}: wall {wall:.2f} s (target < 10), CPU {cpu:.2f} s (target < 2), "
          f"peak RSS {statistics.median(rss):.0f} MB (runs {min(rss):.0f}-{max(rss):.0f} MB), median of {RUNS}")


def seeded_root(tmp: Path) -> Path:
    from debroot import unpack  # tests/assess
    from test_debian_root import harden, seed
    root = unpack(tmp / "root")
    harden(root)
    seed(root)
    return root


def inventory_diff() -> None:
    from agent.assess.hostdata import dpkg_packages
    from agent.assess.inventory import diff
    status = "".join(f"Package: pkg-{i:04d}\nStatus: install ok installed\nArchitecture: amd64\n"
                     f"Version: 1.{i}.0-1\nDescription: package {i}\n\n" for i in range(3000))
    t0 = time.perf_counter()
    before = dpkg_packages(status)
    parse = time.perf_counter() - t0
    after_pk = dict(before)
    for i in range(0, 3000, 60):  # 50 upgrades, 25 removals, 25 installs
        after_pk[f"pkg-{i:04d}"] = f"1.{i}.1-1"
    for i in range(30, 3000, 120):
        del after_pk[f"pkg-{i:04d}"]
    for i in range(25):
        after_pk[f"new-{i}"] = "0.1-1"
    a = {"packages": before, "accounts": {}, "services": {}, "modules": []}
    b = {"packages": after_pk, "accounts": {}, "services": {}, "modules": []}
    times = []
    events = []
    tracemalloc.start()
    for _ in range(200):
        t0 = time.perf_counter()
        events = diff(a, b, 0.0)
        times.append(time.perf_counter() - t0)
        if _ == 9:
            _, peak10 = tracemalloc.get_traced_memory()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"inventory diff of {len(before):,} packages: {len(events)} change events in "
          f"{statistics.median(times) * 1000:.2f} ms (median of 200); dpkg status parsed in {parse * 1000:.1f} ms; "
          f"traced peak after 10 diffs {peak10 / 1e6:.2f} MB, after 200 {peak / 1e6:.2f} MB (flat)")


def main() -> None:
    base = [sys.executable, "-m", "agent", "assess", "--format", "json", "--inventory"]
    report("live host (shipped policy + inventory)", base)
    tarball = Path("/var/cache/dutywatch-test/bookworm-assess.tar")
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        print("assess seeded root: skipped (needs root to build the Debian root)")
    else:
        if not tarball.exists():
            print("assess seeded root: building the cached Debian root first (debootstrap, a few minutes)")
        with tempfile.TemporaryDirectory(prefix="dw-bench-assess-") as tmp:
            root = seeded_root(Path(tmp))
            report("seeded Debian 12 root (shipped policy + inventory)", [*base, "--root", str(root)])
    inventory_diff()
    print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
