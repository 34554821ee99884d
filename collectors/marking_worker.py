"""The marking scan in a separate, confined process.

Parsing documents means running PDF, zip, OLE2 and RTF readers over content
an attacker may have written; a bug in any of them must not hand over the
agent's capabilities. So the collector, which holds them, never parses: it
opens the file (checking it is a regular file under a watched root) and
passes the descriptor over a Unix socket (SCM_RIGHTS) to a worker that runs
:func:`collectors.marking.scan_fd` under :func:`collectors.sandbox.confine`
(no capabilities, no network, a seccomp filter, resource limits).

The worker also makes the time cap hold *inside* a file: the scan's own cap
is checked between chunks, parts and pages, but a parser stuck in one page
(a crafted PDF content stream, say) never reaches the next check. The
parent waits for the answer up to the cap plus a grace period; past that it
kills the worker, starts a new one for the next file, and reports the file
``unscanned``. A worker that dies (a crash, a resource limit) is restarted
the same way and the file reported ``unscanned``.

The protocol is one request and one answer at a time on a SOCK_SEQPACKET
socket pair: a JSON request with the descriptor attached, a JSON result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from collectors.marking import DEFAULT_MAX_BYTES, DEFAULT_MAX_SECONDS, MarkingResult, Position, scan_fd

log = logging.getLogger(__name__)

GRACE = 1.0  # how long past the scan's own time cap the parent waits before it kills the worker
START_TIMEOUT = 20.0
START_BACKOFF = 10.0  # after a failed start, the next attempt waits this long
MEMORY = 1024 * 1024 * 1024  # RLIMIT_AS of the worker
CPU_SECONDS = 3600  # RLIMIT_CPU hard limit; the worker retires well before it
_MAX_MESSAGE = 64 * 1024


def _result_to_json(r: MarkingResult) -> dict[str, Any]:
    pos = r.position
    return {"status": r.status, "level": int(r.level) if r.level is not None else None, "period": r.period,
            "position": [pos.offset, pos.part, pos.page] if pos is not None else None, "reason": r.reason,
            "text": r.text}


def _result_from_json(d: dict[str, Any]) -> MarkingResult:
    from agent.levels import Level
    pos = d.get("position")
    return MarkingResult(
        d["status"], Level(d["level"]) if d.get("level") is not None else None, d.get("period"),
        Position(pos[0], pos[1], pos[2]) if pos else None, d.get("reason") or "", d.get("text"),
    )


class MarkingWorker:
    """The parent's handle on one worker process; ``scan`` is safe to call from any thread.

    ``confine=False`` runs the worker without the sandbox (for comparison in
    benchmarks; never used by the agent).
    """

    def __init__(self, *, max_seconds: float = DEFAULT_MAX_SECONDS, max_bytes: int = DEFAULT_MAX_BYTES,
                 grace: float = GRACE, memory: int = MEMORY, confine: bool = True) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.grace = grace
        self.memory = memory
        self.confine = confine
        self.restarts = 0  # workers replaced after a death, a hang or retirement
        self.killed = 0  # workers killed for passing the time cap
        self.confinement: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._started_once = False
        self._retry_at = 0.0  # after a failed start, files go out unscanned until then
        self._start_error = ""

    @property
    def pid(self) -> int | None:
        """The running worker's pid, if one runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the worker now (``scan`` also starts it when needed); raises OSError if it cannot start."""
        with self._lock:
            self._ensure()

    def close(self) -> None:
        """Stop the worker."""
        with self._lock:
            self._stop()

    def scan(self, fd: int, name: str) -> MarkingResult:
        """Scan the open file ``fd`` in the worker; ``name`` gives its type. Never raises."""
        with self._lock:
            if time.monotonic() < self._retry_at:
                return MarkingResult("unscanned", reason=f"marking worker unavailable: {self._start_error}")
            try:
                self._ensure()
            except (OSError, ValueError, subprocess.SubprocessError) as e:
                self._start_error = str(e)
                self._retry_at = time.monotonic() + START_BACKOFF
                log.error("marking worker cannot start (files go out unscanned for %.0f s): %s", START_BACKOFF, e)
                return MarkingResult("unscanned", reason=f"marking worker unavailable: {e}")
            assert self._sock is not None
            request = json.dumps({"name": name, "max_bytes": self.max_bytes,
                                  "max_seconds": self.max_seconds}).encode()
            try:
                socket.send_fds(self._sock, [request], [fd])
            except OSError as e:
                return self._lost(f"marking worker gone: {e}")
            deadline = time.monotonic() + self.max_seconds + self.grace
            while True:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self._sock], [], [], max(left, 0.0))
                if ready:
                    break
                if left <= 0:
                    self.killed += 1
                    return self._lost(f"time limit of {self.max_seconds:g}s reached: the parser was stopped")
            try:
                data = self._sock.recv(_MAX_MESSAGE)
            except OSError as e:
                return self._lost(f"marking worker gone: {e}")
            if not data:
                return self._lost(self._death())
            try:
                answer = json.loads(data)
                result = _result_from_json(answer["result"])
            except (ValueError, KeyError, TypeError, IndexError) as e:
                return self._lost(f"marking worker answered nonsense: {e}")
            if answer.get("retire"):
                self._stop()
                self.restarts += 1
            return result

    # -- the process -----------------------------------------------------------------------------------------------

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = str(Path(__file__).resolve().parent.parent)
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [sys.executable, "-m", "collectors.marking_worker", str(child.fileno()),
                str(self.memory), "1" if self.confine else "0"]
        try:
            proc = _spawn(argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          env=env, cwd="/")
        finally:
            child.close()
        ready, _, _ = select.select([parent], [], [], START_TIMEOUT)
        hello = parent.recv(_MAX_MESSAGE) if ready else b""
        report: object = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            report = json.loads(hello)["confinement"] if hello else None
        if not isinstance(report, dict):
            proc.kill()
            proc.wait()
            parent.close()
            raise OSError(f"the marking worker did not start (exit status {proc.returncode})")
        self.confinement = report
        if self.confine and self.confinement.get("problems") and not self._started_once:
            log.warning("marking worker runs with less confinement than intended: %s",
                        "; ".join(self.confinement["problems"]))
        self._proc, self._sock = proc, parent
        self._started_once = True

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _death(self) -> str:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "marking worker stopped answering"
        if code < 0:
            try:
                return f"marking worker died ({signal.Signals(-code).name})"
            except ValueError:
                return f"marking worker died (signal {-code})"
        return f"marking worker exited with status {code}"

    def _lost(self, reason: str) -> MarkingResult:
        """The worker is gone or useless: replace it for the next file; this one is unscanned."""
        self._stop()
        self.restarts += 1
        return MarkingResult("unscanned", reason=reason)


def _spawn(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    """Start the worker with no ambient capability (see :func:`collectors.sandbox.spawn_without_capabilities`)."""
    from collectors.sandbox import spawn_without_capabilities
    return spawn_without_capabilities(argv, **kw)


# -- the worker's side ---------------------------------------------------------------------------------------------


_CODECS = ("ascii", "latin-1", "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
           "utf-32-be", "gb18030", "gbk", "gb2312", "big5", "cp950", "cp932", "cp949", "cp437", "cp850",
           *(f"cp{n}" for n in range(1250, 1259)), "mac-roman")


def _preload() -> None:
    """Import every parser and codec before confinement, so no scan needs to open a module.

    Once confined, the worker may not read the interpreter's library at all
    (it runs as ``nobody``): a module first imported later would fail that scan.
    """
    import codecs
    import importlib
    import pkgutil

    for name in _CODECS:
        codecs.lookup(name)
    import olefile  # noqa: F401
    import pypdf

    for mod in pkgutil.walk_packages(pypdf.__path__, "pypdf."):
        with contextlib.suppress(ImportError):  # an optional part whose library is not installed
            importlib.import_module(mod.name)


def _cpu_used() -> float:
    t = os.times()
    return t.user + t.system


def serve(sock: socket.socket, memory: int, confine: bool) -> None:
    """Answer scan requests on ``sock`` until it closes."""
    import resource

    from collectors.sandbox import confine as apply_confinement
    _preload()
    report: dict[str, Any] = {}
    if confine:
        c = apply_confinement(memory=memory, cpu_seconds=CPU_SECONDS)
        report = {"uid": c.uid, "network": c.network, "capabilities": c.capabilities,
                  "no_new_privs": c.no_new_privs, "seccomp": c.seccomp, "limits": c.limits,
                  "problems": c.problems()}
    sock.send(json.dumps({"ready": True, "confinement": report}).encode())
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 4)
        except OSError:
            return
        if not msg:
            return
        fd = fds[0] if fds else -1
        for extra in fds[1:]:
            os.close(extra)
        retire = False
        try:
            req = json.loads(msg)
            max_seconds = float(req["max_seconds"])
            if confine:  # this file's CPU budget: a stuck parser dies by SIGXCPU if the parent is slow to kill it
                used = _cpu_used()
                soft = min(CPU_SECONDS, int(used + max_seconds) + 2)
                resource.setrlimit(resource.RLIMIT_CPU, (soft, CPU_SECONDS))
                retire = used > CPU_SECONDS / 2
            if fd < 0:
                result = MarkingResult("unscanned", reason="no descriptor passed")
            else:
                result = scan_fd(fd, str(req["name"]), max_bytes=int(req["max_bytes"]), max_seconds=max_seconds)
        except MemoryError:
            result = MarkingResult("unscanned", reason=f"memory limit of {memory} bytes reached")
            retire = True
        except Exception as e:  # answer something rather than die on a bad request
            result = MarkingResult("unscanned", reason=f"scan failed: {type(e).__name__}: {e}")
        finally:
            if fd >= 0:
                os.close(fd)
        sock.send(json.dumps({"result": _result_to_json(result), "retire": retire}).encode())
        if retire:
            return


def _main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    serve(sock, int(argv[1]), argv[2] == "1")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
