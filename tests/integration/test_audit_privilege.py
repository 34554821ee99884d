"""Without the audit capabilities the audit collector says what it can do and leaves the rest to the others.

Real kernel: the collector runs in a root process whose capability bounding set
lacks CAP_AUDIT_CONTROL (no own rules, no daemon role) and, in the second case,
CAP_AUDIT_READ too (no multicast group either). It must not fail the agent, must
say why, and must not claim to cover execs (so the process collector keeps
reporting them). Nothing of the kernel's audit configuration is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
needs = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not os.path.exists("/proc/self/loginuid"),
    reason="needs root, setpriv and a kernel with audit")

SCRIPT = """
import json, threading, time
from collectors.audit import AuditCollector
c = AuditCollector({})
a = c.available()
stop = threading.Event()
t = threading.Thread(target=c.run, args=(lambda e: True, stop), daemon=True)
t.start()
time.sleep(1.5)
state = {"mode": c.health.mode, "up": c.health.up, "execs": c.covers("process.exec"), "rules": len(c.rules_installed)}
stop.set()
t.join(15)
print(json.dumps({"available": [a.mode, a.reason], "ran": state, "stopped": not t.is_alive()}))
"""


def _run_without(*caps: str) -> dict[str, Any]:
    drop = ",".join(f"-{c}" for c in caps)
    out = subprocess.run(["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", sys.executable, "-c",
                          SCRIPT], capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.root
@needs
def test_without_audit_control_it_reads_the_multicast_group_and_covers_nothing() -> None:
    got = _run_without("audit_control")
    mode, reason = got["available"]
    assert mode == "multicast" and "without own rules" in reason
    # No rule of its own was added, and it does not claim execs: the process collector keeps reporting them.
    assert got["ran"] == {"mode": "multicast", "up": True, "execs": False, "rules": 0}
    assert got["stopped"]


@pytest.mark.root
@needs
def test_without_any_audit_capability_it_is_off_and_says_why() -> None:
    got = _run_without("audit_control", "audit_read")
    mode, reason = got["available"]
    assert mode == "off" and "the other collectors report alone" in reason
    assert got["ran"] == {"mode": "off", "up": False, "execs": False, "rules": 0}
    assert got["stopped"]
