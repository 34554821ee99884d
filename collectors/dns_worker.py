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

import json
import logging
import os
import socket
import struct
import sys
import time
from typing import Any, NamedTuple

from collectors.sandbox import WorkerLost, WorkerProcess, WorkerUnavailable, worker_hello

log = logging.getLogger(__name__)

MAX_MESSAGE = 4096  # bytes of a DNS message the worker sees; a question's name and pointers lie well within
MAX_BATCH = 32  # messages per request (the request stays within a socket buffer)
BATCH_TIMEOUT = 2.0  # a batch unanswered after this long: the worker is killed
START_BACKOFF = 5.0  # after a failed start, batches fail at once until then
MEMORY = 256 * 1024 * 1024  # RLIMIT_AS of the worker (its resident bound where setrlimit is refused)
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

    The process itself (start, replacement, why it died, back-off) is a
    :class:`collectors.sandbox.WorkerProcess`. ``confine=False`` runs it
    without the sandbox (benchmarks only).
    """

    def __init__(self, *, timeout: float = BATCH_TIMEOUT, memory: int = MEMORY, confine: bool = True) -> None:
        self.timeout = timeout
        env = {TEST_HOOK: "1"} if os.environ.get(TEST_HOOK) == "1" else {}
        self._worker = WorkerProcess("DNS worker", "collectors.dns_worker", memory=memory, confine=confine,
                                     backoff=START_BACKOFF, env=env, max_answer=_MAX_ANSWER)

    @property
    def pid(self) -> int | None:
        """The running worker's pid, if one runs."""
        return self._worker.pid

    @property
    def restarts(self) -> int:
        """Workers replaced after a death, a hang or retirement."""
        return self._worker.restarts

    @property
    def killed(self) -> int:
        """Workers killed for not answering in time (or passing their memory bound)."""
        return self._worker.killed

    @property
    def confinement(self) -> dict[str, Any]:
        """The running worker's confinement report."""
        return self._worker.confinement

    def start(self) -> None:
        """Start the worker now (``parse`` also starts it when needed); OSError if it cannot start."""
        self._worker.start()

    def close(self) -> None:
        """Stop the worker."""
        self._worker.stop()

    def kill(self) -> None:
        """Kill the worker process from any thread: a ``parse`` in progress fails at once; the next starts anew."""
        self._worker.kill()

    def parse(self, messages: list[bytes]) -> list[DnsAnswer]:
        """One answer per message (at most MAX_BATCH); DnsWorkerError when the worker failed on the batch."""
        if not messages:
            return []
        if len(messages) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} messages per batch")
        w = self._worker
        try:
            w.send(encode_batch(messages))
            answer = w.receive(time.monotonic() + self.timeout,
                               f"DNS worker gave no answer within {self.timeout:g}s: it was stopped")
        except (WorkerLost, WorkerUnavailable) as e:
            raise DnsWorkerError(str(e)) from e
        try:
            results = [DnsAnswer(str(a[0]) if a[0] is not None else None, a[1], a[2], a[3])
                       for a in answer["results"]]
        except (KeyError, TypeError, IndexError) as e:
            raise DnsWorkerError(str(w.lost(f"DNS worker answered nonsense: {e}"))) from e
        if len(results) != len(messages):
            raise DnsWorkerError(str(w.lost("DNS worker answered for another number of messages")))
        if answer.get("retire"):
            w.retire()
        return results


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
    hook = os.environ.get(TEST_HOOK) == "1"
    worker_hello(sock, memory=memory, cpu_seconds=CPU_SECONDS, files=8, confine_it=confine)
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
