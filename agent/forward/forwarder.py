"""The syslog forwarder: a bounded retry buffer and one sending thread.

``submit`` never blocks and never does I/O: it appends to a bounded deque
and wakes the worker. The worker formats each record, (re)connects with
exponential backoff and sends in submission order; a message that failed is
kept and sent again after the reconnect, so order holds across outages.
When the buffer is full the oldest waiting record is discarded and counted
as dropped: the journal keeps every record, and the ``seq`` in each
forwarded message lets the SIEM see the gap.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.forward.rfc5424 import format_record
from agent.forward.target import Connection, SyslogTarget

_log = logging.getLogger(__name__)


class ForwardStats(Protocol):
    """Where the forwarder reports trouble; ``agent.metrics.Metrics`` is one."""

    def forward_error(self, target: str) -> None:
        """Count one connect or send error."""

    def forward_drop(self, target: str, n: int = 1) -> None:
        """Count records discarded from a full buffer."""


class SyslogForwarder:
    """Forwards findings and checkpoint heads to one syslog target."""

    def __init__(self, target: SyslogTarget, *, hostname: str | None = None,
                 stats: ForwardStats | None = None, clock: Callable[[], float] = time.time,
                 backoff: tuple[float, float] = (0.5, 30.0), timeout: float = 10.0) -> None:
        self.target = target
        self.hostname = hostname or socket.gethostname()
        self.stats = stats
        self.clock = clock
        self.backoff = backoff
        self.timeout = timeout
        self.sent = 0
        self.errors = 0
        self.dropped = 0
        self._procid = os.getpid()
        self._buffer: deque[Mapping[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the caller's side ---------------------------------------------------

    def submit(self, record: Mapping[str, Any]) -> bool:
        """Queue one record; False when the buffer was full and the oldest was discarded."""
        with self._cond:
            if self._closing:
                full = True
            else:
                full = len(self._buffer) >= self.target.buffer
                if full:
                    self._buffer.popleft()
                self._buffer.append(record)
                self._cond.notify()
        if full:
            self._drop(1)
        return not full

    def submit_checkpoint(self, head: Mapping[str, Any]) -> bool:
        """Queue a journal checkpoint head ``{seq, hash, signature, pubkey_fingerprint}``."""
        return self.submit({"type": "checkpoint", **head})

    def pending(self) -> int:
        """Records waiting to be sent."""
        with self._cond:
            return len(self._buffer)

    def start(self) -> None:
        """Start the sending thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"forward {self.target.label}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is buffered for up to ``timeout`` seconds, then stop; the rest count as dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._abort.set()
            with self._cond:
                self._cond.notify_all()
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            left = len(self._buffer)
            self._buffer.clear()
        if left:
            self._drop(left)

    # -- the worker ----------------------------------------------------------

    def _drop(self, n: int) -> None:
        with self._cond:
            self.dropped += n
        if self.stats is not None:
            self.stats.forward_drop(self.target.label, n)

    def _error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self.stats is not None:
            self.stats.forward_error(self.target.label)
        level = logging.WARNING if self.errors == 1 or self.errors % 100 == 0 else logging.DEBUG
        _log.log(level, "syslog %s: %s failed: %s (%d errors so far)", self.target.label, what, exc,
                 self.errors)

    def _next(self) -> Mapping[str, Any] | None:
        with self._cond:
            while not self._buffer and not self._closing and not self._abort.is_set():
                self._cond.wait()
            if self._abort.is_set() or not self._buffer:
                return None
            return self._buffer.popleft()

    def _format(self, record: Mapping[str, Any]) -> bytes | None:
        try:
            return format_record(record, hostname=self.hostname, app_name=self.target.app_name,
                                 procid=self._procid, facility=self.target.facility, now=self.clock(),
                                 max_bytes=self.target.max_message_bytes)
        except Exception as exc:  # one odd record must not stop forwarding
            self._error("formatting a record", exc)
            self._drop(1)
            return None

    def _run(self) -> None:
        conn: Connection | None = None
        delay = self.backoff[0]
        message: bytes | None = None
        failing = False
        try:
            while not self._abort.is_set():
                if message is None:
                    record = self._next()
                    if record is None:
                        return
                    message = self._format(record)
                    if message is None:
                        continue
                try:
                    if conn is None:
                        conn = Connection(self.target, self.timeout)
                    conn.send(message)
                except OSError as exc:
                    self._error("connect" if conn is None else "send", exc)
                    if conn is not None:
                        conn.close()
                        conn = None
                    failing = True
                    if self._abort.wait(delay):
                        break
                    delay = min(delay * 2, self.backoff[1])
                    continue
                self.sent += 1
                message = None
                delay = self.backoff[0]
                if failing:
                    failing = False
                    _log.info("syslog %s: delivering again", self.target.label)
        finally:
            if message is not None:
                self._drop(1)
            if conn is not None:
                conn.close()
