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

The protocol runs on a SOCK_SEQPACKET socket pair: a JSON request naming up
to :data:`MAX_BATCH` files (their types) with their descriptors attached, then
one JSON answer per file, in order, held back while files go quickly and
sent together (see :class:`_Answers`). A burst of small files thus costs one
hand-over and one wake-up on each side, and the worker stays warm between
them; each file keeps its own time cap (the parent's deadline runs per answer).
The worker's life (start, replacement, why it died) is
:class:`collectors.sandbox.WorkerProcess`, shared with the DNS worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from agent.levels import Level
from collectors.marking import DEFAULT_MAX_BYTES, DEFAULT_MAX_SECONDS, MarkingResult, Position, scan_fd
from collectors.sandbox import WorkerLost, WorkerProcess, WorkerUnavailable, worker_hello

log = logging.getLogger(__name__)

GRACE = 1.0  # how long past the scan's own time cap the parent waits before it kills the worker
START_BACKOFF = 10.0  # after a failed start, the next attempt waits this long
MEMORY = 1024 * 1024 * 1024  # RLIMIT_AS of the worker (its resident bound where setrlimit is refused)
CPU_SECONDS = 3600  # RLIMIT_CPU hard limit; the worker retires well before it
MAX_BATCH = 16  # descriptors per request
FLUSH_AFTER = 0.05  # a file scanned longer than this: the answers held before it go out at once
FILES = 32  # RLIMIT_NOFILE of the worker: its socket, stdio and a whole batch fit
_MAX_MESSAGE = 64 * 1024
_MAX_REQUEST = 256 * 1024


def _result_to_json(r: MarkingResult) -> dict[str, Any]:
    pos = r.position
    return {"status": r.status, "level": int(r.level) if r.level is not None else None, "period": r.period,
            "position": [pos.offset, pos.part, pos.page] if pos is not None else None, "reason": r.reason,
            "text": r.text}


def _result_from_json(d: dict[str, Any]) -> MarkingResult:
    pos = d.get("position")
    return MarkingResult(
        d["status"], Level(d["level"]) if d.get("level") is not None else None, d.get("period"),
        Position(pos[0], pos[1], pos[2]) if pos else None, d.get("reason") or "", d.get("text"),
    )


class MarkingWorker:
    """The parent's handle on one worker; ``scan`` and ``scan_many`` are safe to call from any thread.

    The process itself (start, replacement, why it died, back-off) is a
    :class:`collectors.sandbox.WorkerProcess`. ``confine=False`` runs the
    worker without the sandbox (for comparison in benchmarks; never used by the agent).
    """

    def __init__(self, *, max_seconds: float = DEFAULT_MAX_SECONDS, max_bytes: int = DEFAULT_MAX_BYTES,
                 grace: float = GRACE, memory: int = MEMORY, confine: bool = True) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.grace = grace
        self._lock = threading.Lock()
        self._worker = WorkerProcess("marking worker", "collectors.marking_worker", memory=memory,
                                     confine=confine, backoff=START_BACKOFF, max_answer=_MAX_MESSAGE)

    @property
    def pid(self) -> int | None:
        """The running worker's pid, if one runs."""
        return self._worker.pid

    @property
    def restarts(self) -> int:
        """Workers replaced after a death, a hang, a memory overrun or retirement."""
        return self._worker.restarts

    @property
    def killed(self) -> int:
        """Workers killed for passing the time cap (or their memory bound)."""
        return self._worker.killed

    @property
    def confinement(self) -> dict[str, Any]:
        """The running worker's confinement report."""
        return self._worker.confinement

    def start(self) -> None:
        """Start the worker now (``scan`` also starts it when needed); raises OSError if it cannot start."""
        with self._lock:
            self._worker.start()

    def close(self) -> None:
        """Stop the worker."""
        with self._lock:
            self._worker.stop()

    def scan(self, fd: int, name: str) -> MarkingResult:
        """Scan the open file ``fd`` in the worker; ``name`` gives its type. Never raises."""
        return self.scan_many([(fd, name)])[0]

    def scan_many(self, files: Sequence[tuple[int, str]]) -> list[MarkingResult]:
        """Scan open files in the worker, one result per file, in order. Never raises.

        Up to MAX_BATCH descriptors go over in one request and the worker
        answers file by file, so a burst of small files costs one hand-over, not
        one per file; each file still has its own time cap. Files a worker did
        not get to (it died, hung or retired on an earlier one) go to its successor.
        """
        results: list[MarkingResult] = []
        rest = list(files)
        with self._lock:
            while rest:
                done = self._batch(rest[:MAX_BATCH])
                results += done
                rest = rest[len(done):]
        return results

    def _batch(self, batch: list[tuple[int, str]]) -> list[MarkingResult]:
        """Results for a prefix of ``batch`` (at least its first file)."""
        w = self._worker
        request = json.dumps({"names": [os.path.basename(n)[-255:] for _, n in batch], "max_bytes": self.max_bytes,
                              "max_seconds": self.max_seconds}).encode()
        try:
            w.send(request, [fd for fd, _ in batch])
        except WorkerUnavailable as e:
            return [MarkingResult("unscanned", reason=str(e)) for _ in batch]
        except WorkerLost as e:
            return [MarkingResult("unscanned", reason=str(e))]
        out: list[MarkingResult] = []
        late = f"time limit of {self.max_seconds:g}s reached: the parser was stopped"
        ready: list[Any] = []  # answers that came in one message, not yet taken
        for i in range(len(batch)):
            try:
                if not ready:
                    ready = list(w.receive(time.monotonic() + self.max_seconds + self.grace, late)["answers"])
                answer = ready.pop(0)
                if answer["i"] != i:
                    raise ValueError(f"answer for file {answer['i']} where {i} was due")
                out.append(_result_from_json(answer["result"]))
            except WorkerLost as e:
                out.append(MarkingResult("unscanned", reason=str(e)))
                return out
            except (ValueError, KeyError, TypeError, IndexError) as e:
                out.append(MarkingResult("unscanned", reason=str(w.lost(f"marking worker answered nonsense: {e}"))))
                return out
            if answer.get("retire"):
                w.retire()
                return out
        return out


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


class _Answers:
    """The worker's answers to one request, held back while its files go quickly and sent together.

    The parent then wakes once per batch, not once per file (on a busy
    machine each wake-up costs more than a small file's scan): held answers
    go out as one message. A file that runs longer than FLUSH_AFTER sends
    what is held from a timer signal, so when a file keeps the parser busy
    the parent has every answer before it and its time cap lands on that
    file. (A parser stuck in C code that holds the interpreter lock delays
    the signal too: the parent's cap then lands on the first held file,
    which is reported unscanned, and the rest go to the next worker.)
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._held: list[dict[str, Any]] = []
        self._armed = False
        signal.signal(signal.SIGALRM, self._late)

    def begin(self) -> None:
        """A file's scan starts: if answers are held, they go out should it run long.

        The timer is armed once per batch, repeating every FLUSH_AFTER: a file
        that runs longer than that sees it fire at least once, and the files
        before it cost no timer call each (a system call costs several
        microseconds on a busy virtual machine, a 1 KiB document a few hundred).
        """
        if self._held and not self._armed:
            signal.setitimer(signal.ITIMER_REAL, FLUSH_AFTER, FLUSH_AFTER)
            self._armed = True

    def add(self, answer: dict[str, Any]) -> None:
        """A file's answer; held until :meth:`flush` or the timer sends it."""
        self._held.append(answer)

    def flush(self) -> None:
        """The batch's last answer is in: send what is held and stop the timer."""
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed = False
        self._send()

    def _send(self) -> None:
        if self._held:
            held, self._held = self._held, []
            data = json.dumps({"answers": held}).encode()
            if len(data) <= _MAX_MESSAGE:
                self._sock.send(data)
            else:  # long reasons or markings: one message each
                for answer in held:
                    self._sock.send(json.dumps({"answers": [answer]}).encode()[:_MAX_MESSAGE])

    def _late(self, _signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):  # the parent went away: the main loop sees it too
            self._send()


def serve(sock: socket.socket, memory: int, confine: bool) -> None:
    """Answer scan requests on ``sock`` until it closes: one answer per file, in order."""
    import resource

    _preload()
    import gc
    gc.collect()
    gc.freeze()  # the preloaded parsers' objects: never scanned again by the collector (a scan does not pay for them)
    c = worker_hello(sock, memory=memory, cpu_seconds=CPU_SECONDS, files=FILES, confine_it=confine)
    cpu_limit = c is not None and "RLIMIT_CPU" in c.limits  # else the parent's time cap alone stops a stuck file
    answers = _Answers(sock)
    budget = -1  # the CPU soft limit last set; a file whose budget rounds to the same second needs no call
    known_cpu, known_at = 0.0, float("-inf")  # the last exact reading of the CPU time used, and when (monotonic)
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, MAX_BATCH)
        except OSError:
            return
        if not msg:
            return
        try:
            req = json.loads(msg)
            names = [str(n) for n in req["names"]]
            max_seconds, max_bytes = float(req["max_seconds"]), int(req["max_bytes"])
        except (ValueError, KeyError, TypeError):
            return  # not a request the parent would send: stop, the parent replaces this worker
        for extra in fds[len(names):]:
            os.close(extra)
        for i, name in enumerate(names):
            fd = fds[i] if i < len(fds) else -1
            answers.begin()
            # One thread uses no more CPU time than the clock advances: while that bound shows the limit
            # already set leaves this file its whole budget (and retirement far off), no system call at all.
            used = known_cpu + (time.monotonic() - known_at)
            exact = used > CPU_SECONDS / 2 or (cpu_limit and used + max_seconds + 1 > budget)
            if exact:
                used = known_cpu = _cpu_used()
                known_at = time.monotonic()
            retire = used > CPU_SECONDS / 2
            try:
                if cpu_limit and exact:  # this file's CPU budget: a stuck parser dies by SIGXCPU if the parent is slow
                    soft = min(CPU_SECONDS, int(used + max_seconds) + 2)
                    if soft != budget:
                        resource.setrlimit(resource.RLIMIT_CPU, (soft, CPU_SECONDS))
                        budget = soft
                if fd < 0:
                    result = MarkingResult("unscanned", reason="no descriptor passed")
                else:
                    result = scan_fd(fd, name, max_bytes=max_bytes, max_seconds=max_seconds)
            except MemoryError:
                result = MarkingResult("unscanned", reason=f"memory limit of {memory} bytes reached")
                retire = True
            except Exception as e:  # answer something rather than die on a bad file
                result = MarkingResult("unscanned", reason=f"scan failed: {type(e).__name__}: {e}")
            finally:
                if fd >= 0:
                    os.close(fd)
            answers.add({"i": i, "result": _result_to_json(result), "retire": retire})
            if retire or i == len(names) - 1:
                answers.flush()
            if retire:  # the parent sends the files left to the next worker
                for left in fds[i + 1:len(names)]:
                    os.close(left)
                return


def _main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    serve(sock, int(argv[1]), argv[2] == "1")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
