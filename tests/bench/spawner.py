"""Exec storms for the process collector's tests and benchmark, from a separate interpreter.

The spawner runs in its own process, so that the collector thread under
test and the spawner do not share a GIL.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Spawns N copies of a program (at most C alive at once, optionally PACE seconds
# apart) and prints [[pid, time_before_spawn], ...].
SPAWNER = r"""
import json, os, sys, time
n, most, pace, argv = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
out, live = [], 0
for _ in range(n):
    t = time.time()
    out.append((os.posix_spawn(argv[0], argv, {}), t))
    live += 1
    if live >= most:
        os.wait()
        live -= 1
    if pace:
        time.sleep(pace)
while live:
    os.wait()
    live -= 1
json.dump(out, sys.stdout)
"""


def spawn(n: int, most: int, *argv: str, pace: float = 0.0, timeout: float = 600) -> dict[int, float]:
    """pid -> time just before its spawn, for ``n`` spawns of ``argv`` (``pace`` seconds apart)."""
    done = subprocess.run([sys.executable, "-c", SPAWNER, str(n), str(most), str(pace), *argv],
                          capture_output=True, text=True, check=True, timeout=timeout)
    return {pid: t for pid, t in json.loads(done.stdout)}
