"""``python -m tests.bench.named_agent run ...``: the agent, each thread named in the kernel.

Python gives its threads names only inside Python; this sets the kernel's name (what
``/proc/PID/task/TID/comm`` and ``top -H`` show) from the Python one as each thread starts,
so a measurement can tell the threads apart. Nothing else about the agent changes.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import Any

_PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)
_start = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _named(self: threading.Thread, *args: Any) -> Any:
    _libc.prctl(_PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
    return _start(self, *args)


threading.Thread._bootstrap_inner = _named  # type: ignore[attr-defined]

if __name__ == "__main__":
    from agent.cli import main

    sys.argv[0] = "dutywatch"
    sys.exit(main())
