"""DNS messages of sniffed packets parsed in a separate, confined process.

The network collector holds CAP_NET_RAW (and runs in the agent that holds
CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH); the DNS message inside a packet to
port 53 is content any local user, or a program they run, shapes freely.
So the collector walks the IP and transport headers itself (bounded
fixed-offset arithmetic, see ``collectors.sniff``) and hands only the DNS
message bytes, each cut to :data:`MAX_MESSAGE` bytes, to this worker, in
batches over a SOCK_SEQPACKET socket pair. The worker runs
:func:`collectors.sniff.dns_query` under the same confinement as the marking
worker (:func:`collectors.sandbox.confine`: ``nobody``, no capabilities,
no_new_privs, an empty network namespace where permitted, resource limits, a
seccomp filter) and answers, per message, the name, type and header flags,
or why it is no standard query.

A worker that dies, answers nonsense or does not answer within
:data:`BATCH_TIMEOUT` is killed and replaced; :meth:`DnsWorker.parse` then
raises :class:`DnsWorkerError` and the caller reports every message of that
batch as unparsed traffic (fail closed: the packet is never lost).

Request: ``!H`` count, then per message ``!H`` length and the bytes. Answer:
JSON, a list of ``[name, qtype, flags, error]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

MAX_MESSAGE = 4096  # bytes of a DNS message the worker sees; a question's name and pointers lie well within
MAX_BATCH = 32  # messages per request (the request stays within a socket buffer)
BATCH_TIMEOUT = 2.0  # a batch unanswered after this long: the worker is killed
START_TIMEOUT = 20.0
START_BACKOFF = 5.0  # after a failed start, batches fail at once until then
MEMORY = 256 * 1024 * 1024  # RLIMIT_AS of the worker
CPU_SECONDS = 3600  # RLIMIT_CPU hard limit; the worker retires well before it
_MAX_ANSWER = 1 << 20
# Set only by tests: the worker then crashes on a message starting with CRASH_PROBE and spins on HANG_PROBE.
TEST_HOOK = "DUTYWATCH_DNS_WORKER_TEST_HOOK"
CRASH_PROBE = b"\xff\xfedutywatch-test-crash"
HANG_PROBE = b"\xff\xfedutywatch-test-hang"


class DnsAnswer(NamedTuple):
    """The worker's word on one message: the query's name, type and flags, or the reason it is none."""

    name: str | None
    qtype: int | None = None
    flags: int | None = None
    error: str | None = None


class DnsWorkerError(Exception):
    """The worker died, hung or could not start; the batch it held is unparsed."""


def encode_batch(messages: list[bytes]) -> bytes:
    """The request for ``messages`` (each cut to MAX_MESSAGE bytes)."""
    parts = [struct.pack("!H", len(messages))]
    for m in messages:
        m = m[:MAX_MESSAGE]
        parts.append(struct.pack("!H", len(m)))
        parts.append(m)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[bytes]:
    """The messages of a request; ValueError when it is not one."""
    try:
        (count,), pos, out = struct.unpack_from("!H", data), 2, []
        for _ in range(count):
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
            if n > MAX_MESSAGE or pos + n > len(data):
                raise ValueError("message runs past the request")
            out.append(data[pos:pos + n])
            pos += n
    except struct.error as e:
        raise ValueError(str(e)) from e
    if pos != len(data):
        raise ValueError("bytes after the last message")
    return out


class DnsWorker:
    """The parent's handle on one DNS worker; one caller at a time (the collector's DNS thread).

    ``confine=False`` runs it without the sandbox (benchmarks only).
    """

    def __init__(self, *, timeout: float = BATCH_TIMEOUT, memory: int = MEMORY, confine: bool = True) -> None:
        self.timeout = timeout
        self.memory = memory
        self.confine = confine
        self.restarts = 0  # workers replaced after a death, a hang or retirement
        self.killed = 0  # workers killed for not answering in time
        self.confinement: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._start_error = ""

    @property
    def pid(self) -> int | None:
        """The running worker's pid, if one runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the worker now (``parse`` also starts it when needed); OSError if it cannot start."""
        self._ensure()

    def close(self) -> None:
        """Stop the worker."""
        self._stop()

    def kill(self) -> None:
        """Kill the worker process from any thread: a ``parse`` in progress fails at once; the next starts anew."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()

    def parse(self, messages: list[bytes]) -> list[DnsAnswer]:
        """One answer per message (at most MAX_BATCH); DnsWorkerError when the worker failed on the batch."""
        if not messages:
            return []
        if len(messages) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} messages per batch")
        if time.monotonic() < self._retry_at:
            raise DnsWorkerError(f"DNS worker unavailable: {self._start_error}")
        try:
            self._ensure()
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self._start_error = str(e)
            self._retry_at = time.monotonic() + START_BACKOFF
            log.error("DNS worker cannot start (DNS goes out unparsed for %.0f s): %s", START_BACKOFF, e)
            raise DnsWorkerError(f"DNS worker unavailable: {e}") from e
        assert self._sock is not None
        try:
            self._sock.send(encode_batch(messages))
        except OSError as e:
            raise self._lost(f"DNS worker gone: {e}") from e
        ready, _, _ = select.select([self._sock], [], [], self.timeout)
        if not ready:
            self.killed += 1
            raise self._lost(f"DNS worker gave no answer within {self.timeout:g}s: it was stopped")
        try:
            data = self._sock.recv(_MAX_ANSWER)
        except OSError as e:
            raise self._lost(f"DNS worker gone: {e}") from e
        if not data:
            raise self._lost(self._death())
        try:
            answer = json.loads(data)
            results = [DnsAnswer(str(a[0]) if a[0] is not None else None, a[1], a[2], a[3])
                       for a in answer["results"]]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise self._lost(f"DNS worker answered nonsense: {e}") from e
        if len(results) != len(messages):
            raise self._lost("DNS worker answered for another number of messages")
        if answer.get("retire"):
            self._stop()
            self.restarts += 1
        return results

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = str(Path(__file__).resolve().parent.parent)
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONPATH": root, "PYTHONDONTWRITEBYTECODE": "1"}
        if os.environ.get(TEST_HOOK) == "1":
            env[TEST_HOOK] = "1"
        argv = [sys.executable, "-m", "collectors.dns_worker", str(child.fileno()), str(self.memory),
                "1" if self.confine else "0"]
        from collectors.sandbox import spawn_without_capabilities
        try:
            proc = spawn_without_capabilities(argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, env=env, cwd="/")
        finally:
            child.close()
        ready, _, _ = select.select([parent], [], [], START_TIMEOUT)
        hello = parent.recv(_MAX_ANSWER) if ready else b""
        report: object = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            report = json.loads(hello)["confinement"] if hello else None
        if not isinstance(report, dict):
            proc.kill()
            proc.wait()
            parent.close()
            raise OSError(f"the DNS worker did not start (exit status {proc.returncode})")
        self.confinement = report
        if self.confine and report.get("problems") and not self.restarts:
            log.warning("DNS worker runs with less confinement than intended: %s", "; ".join(report["problems"]))
        self._proc, self._sock = proc, parent

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
            return "DNS worker stopped answering"
        if code < 0:
            try:
                return f"DNS worker died ({signal.Signals(-code).name})"
            except ValueError:
                return f"DNS worker died (signal {-code})"
        return f"DNS worker exited with status {code}"

    def _lost(self, reason: str) -> DnsWorkerError:
        """The worker is gone or useless: replace it for the next batch; this one is unparsed."""
        self._stop()
        self.restarts += 1
        return DnsWorkerError(reason)


# -- the worker's side ---------------------------------------------------------------------------------------------


def _answer(message: bytes, hook: bool) -> list[Any]:
    from collectors.sniff import DecodeError, dns_query
    if hook:
        if message.startswith(CRASH_PROBE):
            os.abort()
        if message.startswith(HANG_PROBE):
            while True:
                pass
    try:
        q = dns_query(message)
    except DecodeError as e:
        return [None, None, None, str(e)]
    return [q.name, q.qtype, q.flags, None]


def serve(sock: socket.socket, memory: int, confine: bool) -> None:
    """Answer batches on ``sock`` until it closes."""
    import collectors.sniff  # noqa: F401  (imported before confinement: no module is opened afterwards)
    from collectors.sandbox import confine as apply_confinement
    hook = os.environ.get(TEST_HOOK) == "1"
    report: dict[str, Any] = {}
    if confine:
        c = apply_confinement(memory=memory, cpu_seconds=CPU_SECONDS, files=8)
        report = {"uid": c.uid, "network": c.network, "capabilities": c.capabilities,
                  "no_new_privs": c.no_new_privs, "seccomp": c.seccomp, "limits": c.limits,
                  "problems": c.problems()}
    sock.send(json.dumps({"ready": True, "confinement": report}).encode())
    while True:
        try:
            msg = sock.recv(4 + MAX_BATCH * (2 + MAX_MESSAGE))
        except OSError:
            return
        if not msg:
            return
        try:
            results = [_answer(m, hook) for m in decode_batch(msg)]
        except ValueError:
            return  # not a request the parent would send: stop, the parent replaces this worker
        t = os.times()
        retire = t.user + t.system > CPU_SECONDS / 2
        sock.send(json.dumps({"results": results, "retire": retire}).encode())
        if retire:
            return


def _main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    serve(sock, int(argv[1]), argv[2] == "1")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
