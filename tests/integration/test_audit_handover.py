"""The daemon role handed to an auditd that starts while the agent holds it: no record produced around it is lost.

Programs run without a pause from before auditd starts until after it holds the
role; every one of them must be reported by the agent exactly once. Two ways
auditd comes: under its own name (the agent sees its exec and makes room before
auditd asks), and under a name the agent does not know (auditd asks first, is
refused once as a running daemon would refuse it, the agent makes room at the
kernel's request, and auditd started again, as systemd's ``Restart=on-failure``
does, gets the role and keeps it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditkit import AUDITD, TRUE_C, as_person, programs, running, status, stop_auditd, wait_for_no_daemon

from collectors.audit import AuditCollector

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def quick() -> Iterator[Path]:
    with programs("handover", {"quick": TRUE_C}) as d:
        yield d / "quick"


class Execs:
    """Run ``prog`` as the test person again and again on a thread (bounded: 4000 runs, 60 s) until stopped."""

    def __init__(self, prog: Path) -> None:
        self.prog = prog
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + 60
        while not self._stop.is_set() and len(self.pids) < 4000 and time.monotonic() < end:
            p = subprocess.Popen([str(self.prog)], preexec_fn=as_person())
            p.wait()
            self.pids.append(p.pid)

    def __enter__(self) -> Execs:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _registered(pid_was: int = 0, timeout: float = 15.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = int(status().get("pid", "0"))
        if pid and pid != pid_was:
            return pid
        time.sleep(0.02)
    return 0


def _check_every_exec_once(c: AuditCollector, run: object, execs: Execs) -> None:
    from auditkit import Run
    assert isinstance(run, Run)
    pids = set(execs.pids)
    assert len(pids) > 50, f"only {len(pids)} execs ran around the hand-over"
    run.where(lambda e: e.kind == "process.exec" and e.process.pid in pids, count=len(pids), deadline=30)
    seen = Counter(e.process.pid for e in list(run.events) if e.kind == "process.exec" and e.process.pid in pids)
    lost = sorted(pids - set(seen))
    twice = sorted(p for p, n in seen.items() if n > 1)
    assert not lost, f"{len(lost)} of {len(pids)} execs never reported (drops {c.health.drops}): {lost[:10]}"
    assert not twice, f"{len(twice)} execs reported more than once: {twice[:10]}"


@pytest.mark.parametrize("name", ["auditd", "secaudit"])
def test_an_audit_daemon_starting_gets_the_role_and_no_exec_around_the_hand_over_is_lost(
        quick: Path, tmp_path: Path, name: str) -> None:
    """``auditd``: the agent sees its exec and usually makes room before it asks; ``secaudit`` (auditd under a
    name the agent does not know): it asks first, is refused, the agent makes room at the kernel's request and
    keeps out of the role while the daemon is started again, as its service manager does on failure."""
    wait_for_no_daemon()
    Path("/var/log/audit").mkdir(parents=True, exist_ok=True)
    daemon_exe = tmp_path / name
    shutil.copy2(AUDITD, daemon_exe)
    c = AuditCollector({})
    tries = 0
    try:
        with running(c) as run:
            assert c.health.mode == "daemon"
            with Execs(quick) as execs:
                time.sleep(1.0)
                daemon = 0
                while not daemon and tries < 2:
                    tries += 1
                    subprocess.run([str(daemon_exe)], timeout=30, capture_output=True)
                    daemon = _registered(os.getpid(), 2.0)
                    time.sleep(0.1)  # auditd.service: Restart=on-failure, RestartSec 100 ms
                assert daemon and daemon != os.getpid(), f"the audit daemon never got the role ({tries} starts)"
                time.sleep(3.0)  # past the agent's next status check: it must not take the role back
            assert int(status()["pid"]) == daemon, "the audit daemon lost the role again"
            assert c.health.mode == "multicast"
            _check_every_exec_once(c, run, execs)
    finally:
        stop_auditd_named(name)
    # secaudit takes two starts on a machine of its own (the agent cannot know it before it asks); on a shared
    # one another agent's start may have made the agent step aside first, so the count is not asserted.


def stop_auditd_named(name: str) -> None:
    """Stop the registered daemon if it is ours (by the kernel's pid and its name)."""
    pid = int(status().get("pid", "0"))
    if not pid:
        return
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() not in (name, "auditd"):
                return
    except OSError:
        return
    stop_auditd() if name == "auditd" else os.kill(pid, 15)
    end = time.monotonic() + 15
    while time.monotonic() < end and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)
