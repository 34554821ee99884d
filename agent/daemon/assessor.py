"""The agent's configuration assessment and inventory: at start, on a schedule, and when a file a check read changes.

Each run is ``dutywatch assess --format json --inventory`` in a child process
at low priority (nice 10, idle I/O class), bounded in time and output, so a
slow or hostile host cannot stall the agent and the memory of a run is given
back when it ends. The results are compared with the last run's: a check whose
result changed becomes an ``assess.check`` event, and inventory changes become
``inventory.*`` events, both judged by the rules like any other event; every run
also journals one ``assess.snapshot`` record with all results for the reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.assess.evaluate import CheckResult
from agent.assess.inventory import diff, load_snapshot, save_snapshot
from agent.assess.state import changes, load_state, result_map, save_state
from agent.events import Assess, Event

_log = logging.getLogger("dutywatch.assess")
RUN_TIMEOUT = 600.0
MAX_OUTPUT = 64 * 1024 * 1024
WATCH_EVERY = 10.0
MIN_GAP = 5.0  # between runs started by file changes
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "armv7l": 314, "ppc64le": 273, "s390x": 282,
               "riscv64": 30, "loongarch64": 30, "mips64": 5273}


def low_priority() -> None:
    """This process to nice 10 and the idle I/O class (ioprio_set has no libc wrapper).

    Called by the child itself (``assess --low-priority``): a preexec function in
    a threaded agent could deadlock between fork and exec.
    """
    with contextlib.suppress(OSError):
        os.nice(10)
    nr = _IOPRIO_SET.get(platform.machine())
    if nr is not None:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).syscall(nr, 1, 0, 3 << 13)  # WHO_PROCESS, self, CLASS_IDLE


def snapshot_record(host: str, now: float, why: str, doc: dict[str, Any], results: list[CheckResult],
                    unit: str | None, department: str | None) -> dict[str, Any]:
    """The journal record of one run: every result with up to three lines of evidence."""
    return {"type": "lifecycle", "time": now, "host": host, "kind": "assess.snapshot",
            "detail": {"why": why, "family": doc.get("family"), "seconds": doc.get("seconds"),
                       "unit": unit, "department": department,
                       "policies": doc.get("policies"), "not_provable": doc.get("not_provable"),
                       "results": [{"check": r.check, "policy": r.policy, "result": r.result,
                                    "items": list(r.items), "clause": r.clause,
                                    "title": {"zh": r.title_zh, "en": r.title_en},
                                    "evidence": list(r.evidence[:3])} for r in results]}}


class Assessor:
    """Runs assessments in the background and hands their events and records to the agent."""

    def __init__(self, *, state_dir: Path, host: str, every: float, policies: tuple[Path, ...] | None,
                 emit: Callable[[Event], object], record: Callable[[dict[str, Any]], object],
                 on_counts: Callable[[dict[tuple[str, str], int], float], object],
                 clock: Callable[[], float] = time.time, root: str = "/", unit: str | None = None,
                 department: str | None = None) -> None:
        self.state_dir = state_dir
        self.host = host
        self.every = every
        self.policies = policies
        self.emit = emit
        self.record = record
        self.on_counts = on_counts
        self.clock = clock
        self.root = root
        self.unit = unit
        self.department = department
        self.runs = 0
        self.failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: dict[str, tuple[float, int] | None] = {}

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Run once now, then on the schedule and on changes, in a thread."""
        self._thread = threading.Thread(target=self._loop, name="assess", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (a running child is killed)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def request(self) -> None:
        """Run again soon (a reload, a signal)."""
        self._wake.set()

    def _loop(self) -> None:
        last = -1e18
        while not self._stop.is_set():
            now = time.monotonic()
            due = now - last >= self.every
            changed = now - last >= MIN_GAP and self._changed()
            if due or changed or self._wake.is_set():
                self._wake.clear()
                last = time.monotonic()
                why = ("start" if self.runs == 0 and self.failures == 0 else "schedule") if due else \
                    ("files changed" if changed else "requested")
                try:
                    self.run_once(why)
                except Exception:  # a bad run must not end the agent's assessments
                    self.failures += 1
                    _log.exception("assessment run failed")
            self._wake.wait(WATCH_EVERY)

    # -- one run ---------------------------------------------------------------
    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "agent", "assess", "--format", "json", "--inventory", "--low-priority",
                "--root", self.root]
        if self.policies is not None:
            argv += ["--policy", *map(str, self.policies)]
        return argv

    def _child(self) -> dict[str, Any] | None:
        with subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, close_fds=True) as proc:
            try:
                out, err = proc.communicate(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                _log.error("assessment did not finish within %.0f s; killed", RUN_TIMEOUT)
                return None
            if self._stop.is_set():
                return None
        if proc.returncode not in (0, 1) or len(out) > MAX_OUTPUT:
            _log.error("assessment failed (exit %s): %s", proc.returncode, err.decode("utf-8", "replace")[-2000:])
            return None
        try:
            doc = json.loads(out)
        except ValueError:
            _log.error("assessment printed no JSON")
            return None
        return doc if isinstance(doc, dict) else None

    def run_once(self, why: str = "requested") -> bool:
        """One assessment and inventory; False when it could not run (logged, counted)."""
        doc = self._child()
        if doc is None:
            self.failures += 1
            return False
        now = self.clock()
        results = [CheckResult(r["check"], r["policy"], r["result"], tuple(r["evidence"]), tuple(r["items"]),
                               r["clause"], r["title"]["zh"], r["title"]["en"]) for r in doc.get("results", [])]
        state_path = self.state_dir / "assess-state.json"
        for ch in changes(load_state(state_path), results):
            r = ch.result
            self.emit(Event("assess.check", now, "assess", detail=" | ".join(r.evidence[:3])[:1000],
                            assess=Assess(r.check, r.policy, r.result, ",".join(r.items), ch.previous)))
        counts: dict[tuple[str, str], int] = {}
        for r in results:
            counts[(r.policy, r.result)] = counts.get((r.policy, r.result), 0) + 1
        self.record(snapshot_record(self.host, now, why, doc, results, self.unit, self.department))
        save_state(state_path, result_map(results), now)
        inv = doc.get("inventory")
        if isinstance(inv, dict):
            inv_path = self.state_dir / "inventory.json"
            for e in diff(load_snapshot(inv_path), inv, now):
                self.emit(e)
            save_snapshot(inv_path, inv)
        self.on_counts(counts, now)
        self._watch([str(p) for p in doc.get("read_paths", [])])
        self.runs += 1
        _log.info("assessment (%s): %d checks, %d fail, in %.2f s", why, len(results),
                  sum(r.result == "fail" for r in results), float(doc.get("seconds") or 0))
        return True

    # -- change watching -------------------------------------------------------
    def _sig(self, path: str) -> tuple[float, int] | None:
        try:
            st = os.stat(os.path.join(self.root, path.lstrip("/")))
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def _watch(self, paths: list[str]) -> None:
        self._watched = {p: self._sig(p) for p in paths[:5000]}

    def _changed(self) -> bool:
        return any(self._sig(p) != sig for p, sig in self._watched.items())
