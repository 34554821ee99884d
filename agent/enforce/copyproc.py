"""The copy guard in a process of its own: the kernel's questions answered by a process that contends with nothing.

In the agent, a thread answering permission events shares the interpreter lock with the
pipeline, the collectors and the exporter, so a busy agent would make a classified open wait
for its turn (the lock changes hands every 5 ms). The agent therefore runs the guard as
``python -m agent.enforce.copyproc``: that process holds the fanotify group, the marks and the
tables and does nothing else. The agent hands it what it judges by (the registry, pickled on
the child's standard input: parent and child are the same program) and reads its denials, one
JSON line each, from its standard output.

If the agent dies, the child reads the end of its input and exits; the kernel then answers what
was waiting (allow), as it would for the agent itself. If the child dies, the agent logs it,
counts it as a failed copy enforcement, and starts another a second later.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from agent.enforce.copyguard import CopyGuard, Decision, Stick, describe, operator_of, removable_sticks
from agent.levels import parse_level

_log = logging.getLogger("dutywatch.enforce.copy")
START_TIMEOUT = 60.0


def _decision(d: dict[str, Any]) -> Decision:
    s = d.get("stick")
    stick = Stick(s["mount"], s["device"], s["registered"], parse_level(s["level"]) if s.get("level") else None,
                  s.get("dev", -1)) if s else None
    return Decision(True, int(d["pid"]), str(d["path"]), d.get("asset"),
                    parse_level(d["asset_level"]) if d.get("asset_level") not in (None, "None") else None,
                    stick, str(d.get("why", "")))


class CopyGuardProcess:
    """The agent's side: start the guard's process, pass its denials to ``report(decision, operator)``."""

    def __init__(self, registry: Any, roots: Iterable[str], sys_root: Path,
                 report: Callable[[Decision, str | None], None], *, dryrun: bool = False,
                 restart_after: float = 1.0, realtime: bool = True) -> None:
        self.registry = registry
        self.roots = list(roots)
        self.sys_root = sys_root
        self.report = report
        self.dryrun = dryrun
        self.restart_after = restart_after
        self.realtime = realtime  # the answering thread at the lowest real-time priority, where allowed
        self.proc: subprocess.Popen[bytes] | None = None
        self.lost = 0  # guard processes that died while the agent ran
        self.on_lost: Callable[[], None] = lambda: None
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None
        self._stats: list[dict[str, Any]] = []
        self._stats_ready = threading.Condition()

    @property
    def fd(self) -> int:
        """0 while the guard runs, -1 otherwise (as ``CopyGuard.fd``: the enforcer asks it to know)."""
        return 0 if self.proc is not None and self.proc.poll() is None else -1

    def start(self) -> None:
        """Start the guard's process; returns once it answers the kernel (raises OSError if it cannot)."""
        self._stopping.clear()
        self._spawn()
        self._reader = threading.Thread(target=self._read, name="copy-guard-reader", daemon=True)
        self._reader.start()

    def _spawn(self) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "agent.enforce.copyproc"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(pickle.dumps((self.registry, self.roots, self.sys_root, self.dryrun, self.realtime)))
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
            first = json.loads(proc.stdout.readline() or b"{}") if ready else {"error": "no answer in time"}
        except (OSError, ValueError) as exc:
            first = {"error": str(exc)}
        if not first.get("ready"):
            proc.kill()
            proc.wait(10)
            raise OSError(f"the copy guard's process did not start: {first.get('error', 'it exited')}")
        self.proc = proc

    def _read(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None and proc.stdout is not None
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "denied" in msg:
                    try:
                        self.report(_decision(msg["denied"]), msg.get("operator"))
                    except Exception:
                        _log.exception("copy guard: reporting a denial failed")
                elif "stats" in msg:
                    with self._stats_ready:
                        self._stats.append(msg["stats"])
                        self._stats_ready.notify_all()
            proc.wait()
            if self._stopping.is_set():
                return
            self.lost += 1
            _log.error("the copy guard's process ended (exit %s); the kernel allows opens until another starts",
                       proc.returncode)
            self.on_lost()
            while not self._stopping.wait(self.restart_after):
                try:
                    self._spawn()
                    break
                except OSError as exc:
                    _log.error("%s", exc)

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The guard's counters (decided, denied, seen, gaps, armed)."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        with self._stats_ready:
            self._stats.clear()
            proc.stdin.write(b"stats\n")
            proc.stdin.flush()
            self._stats_ready.wait_for(lambda: bool(self._stats), timeout)
            return self._stats[-1] if self._stats else {}

    def stop(self) -> None:
        """End the guard's process (its input closed; killed if it does not go) and the reader."""
        self._stopping.set()
        proc = self.proc
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        self.proc = None


def _send(out: IO[bytes], lock: threading.Lock, msg: dict[str, Any]) -> None:
    with lock:
        out.write(json.dumps(msg, ensure_ascii=False).encode() + b"\n")
        out.flush()


def _median_us(timings: Iterable[float]) -> float | None:
    got = sorted(timings)
    return round(got[len(got) // 2] * 1e6, 1) if got else None


def main() -> int:
    """The child: read what to judge by, guard, answer ``stats`` lines, stop at the end of the input."""
    logging.basicConfig(level=logging.WARNING, format="copy guard: %(message)s")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    lock = threading.Lock()
    try:
        # Only the agent that started this process writes its input (a pipe no one else holds).
        registry, roots, sys_root, dryrun, realtime = pickle.load(stdin)  # noqa: S301
    except Exception as exc:  # told to the agent, which then does without this guard
        _send(stdout, lock, {"error": f"bad start-up data: {exc}"})
        return 2

    def report(d: Decision) -> None:
        denied = describe(d)
        if d.stick is not None:
            denied["stick"]["dev"] = d.stick.dev
        _send(stdout, lock, {"denied": denied, "operator": operator_of(d.pid, registry, ids=d.ids)})

    guard = CopyGuard(registry.assets, removable_sticks(registry, roots, sys_root), report, dryrun=dryrun,
                      realtime=realtime)
    try:
        guard.start()
    except OSError as exc:
        _send(stdout, lock, {"error": str(exc)})
        return 1
    _send(stdout, lock, {"ready": True, "pid": os.getpid()})
    try:
        for line in stdin:
            if line.strip() == b"stats":
                _send(stdout, lock, {"stats": {"decided": guard.decided, "denied": guard.denied, "seen": guard.seen,
                                               "gaps": guard.gaps, "armed": guard.armed, "time": time.time(),
                                               "priority": guard.priority,
                                               "decision_us": _median_us(guard.timings)}})
    finally:
        guard.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
