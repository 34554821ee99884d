"""One event loop for collectors that only wait on descriptors and timers.

A collector that reads a descriptor and does little per event (the host collector's rtnetlink
socket) needs no thread of its own: it ``attach``-es to a :class:`Loop`, which registers its
descriptors and timers, and ``detach``-es when stopped or restarted. The supervisor runs one loop
thread for all such collectors; a collector's ``run(emit, stop)`` (tests, one-off tools) runs a
private loop on the calling thread, so its contract is the same either way.

The loop blocks in ``epoll_wait`` with no timeout, or until the earliest timer: a quiet host wakes
it only when a descriptor turns ready or a deadline is due. ``call_soon`` may be used from any
thread (an eventfd wakes the loop); everything else runs on the loop's thread only.

Every registration and timer belongs to a *group* (the collector); when a callback raises, the
loop drops everything of that group and hands the error to the group's handler (the supervisor
restarts the collector after a backoff), or, with no handler, raises it out of ``run``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Protocol

from collectors.base import STOP_POLL, Emit, Health, stop_fd

Callback = Callable[[], None]
OnError = Callable[[BaseException], None]


class Timer:
    """A callback due at a monotonic time; ``cancel()`` before it runs to drop it."""

    __slots__ = ("callback", "cancelled", "group", "when")

    def __init__(self, when: float, callback: Callback, group: object) -> None:
        self.when, self.callback, self.group, self.cancelled = when, callback, group, False

    def cancel(self) -> None:
        """Do not run this timer."""
        self.cancelled = True


class Loop:
    """Descriptors and timers served by one thread."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake, select.EPOLLIN)
        self._fds: dict[int, tuple[Callback, object]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._soon: list[tuple[Callback, object]] = []
        self._lock = threading.Lock()
        self._handlers: dict[object, OnError] = {}

    def register(self, fd: int, callback: Callback, group: object, events: int = select.EPOLLIN) -> None:
        """Call ``callback`` whenever ``fd`` reports ``events`` (level-triggered)."""
        self._ep.register(fd, events)
        self._fds[fd] = (callback, group)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (nothing if it is not watched)."""
        if self._fds.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    def call_at(self, when: float, callback: Callback, group: object) -> Timer:
        """Run ``callback`` once at monotonic time ``when``."""
        t = Timer(when, callback, group)
        heapq.heappush(self._timers, (when, next(self._seq), t))
        return t

    def call_later(self, delay: float, callback: Callback, group: object) -> Timer:
        """Run ``callback`` once ``delay`` seconds from now."""
        return self.call_at(time.monotonic() + delay, callback, group)

    def call_soon(self, callback: Callback, group: object) -> None:
        """Run ``callback`` on the loop's thread at its next turn; safe from any thread."""
        with self._lock:
            self._soon.append((callback, group))
        os.eventfd_write(self._wake, 1)

    def on_error(self, group: object, handler: OnError | None) -> None:
        """Hand an error raised by a callback of ``group`` to ``handler`` (None: raise it out of ``run``)."""
        if handler is None:
            self._handlers.pop(group, None)
        else:
            self._handlers[group] = handler

    def forget(self, group: object) -> None:
        """Drop every descriptor and timer of ``group``."""
        for fd in [fd for fd, (_cb, g) in self._fds.items() if g is group]:
            self.unregister(fd)
        for _w, _s, t in self._timers:
            if t.group is group:
                t.cancel()

    def _call(self, callback: Callback, group: object) -> None:
        try:
            callback()
        except Exception as exc:
            self.forget(group)
            handler = self._handlers.get(group)
            if handler is None:
                raise
            handler(exc)

    def _timeout(self, stop: threading.Event) -> float:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        due = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else -1.0
        if stop_fd(stop) is None:  # a plain Event has no descriptor: look at it now and then
            due = STOP_POLL if due < 0 else min(due, STOP_POLL)
        return due

    def run(self, stop: threading.Event) -> None:
        """Serve descriptors and timers until ``stop`` is set."""
        sfd = stop_fd(stop)
        if sfd is not None:
            self._ep.register(sfd, select.EPOLLIN)
        try:
            while not stop.is_set():
                with self._lock:
                    soon, self._soon = self._soon, []
                for cb, group in soon:
                    self._call(cb, group)
                if soon:
                    continue
                for fd, _ev in self._ep.poll(self._timeout(stop)):
                    if fd == self._wake:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._wake)
                        continue
                    entry = self._fds.get(fd)
                    if entry is not None and not stop.is_set():
                        self._call(*entry)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now and not stop.is_set():
                    _w, _s, t = heapq.heappop(self._timers)
                    if not t.cancelled:
                        self._call(t.callback, t.group)
        finally:
            if sfd is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._ep.unregister(sfd)

    def close(self) -> None:
        """Release the loop's descriptors."""
        self._ep.close()
        with contextlib.suppress(OSError):
            os.close(self._wake)


class LoopCollector(Protocol):
    """A collector that can share a :class:`Loop` instead of owning a thread."""

    name: str
    health: Health

    def attach(self, loop: Loop, emit: Emit) -> None:
        """Open the sources and register them with ``loop`` (called on the loop's thread)."""
        ...

    def detach(self) -> None:
        """Close the sources; the loop has already dropped or will drop the registrations."""
        ...


def run_alone(c: LoopCollector, emit: Emit, stop: threading.Event) -> None:
    """``run(emit, stop)`` for a loop collector: a private loop on the calling thread until ``stop``."""
    loop = Loop()
    try:
        c.attach(loop, emit)
        loop.run(stop)
    finally:
        try:
            c.detach()
        finally:
            loop.forget(c)
            loop.close()


class Served:
    """One descriptor served by a private :class:`Loop` on a thread of its own.

    For readers that must not share a thread with anything (the media gate judges a stick the
    moment it is announced; a burst of NFLOG messages must not queue in front of that): the loop,
    its stop descriptor and the thread, started and stopped in one place.
    """

    def __init__(self, fd: int, callback: Callback, name: str) -> None:
        from collectors.base import StopEvent

        self._loop = Loop()
        self._stop = StopEvent()
        self._loop.register(fd, callback, self)
        self._thread = threading.Thread(target=self._loop.run, args=(self._stop,), name=name, daemon=True)

    @property
    def alive(self) -> bool:
        """Whether the thread serves the descriptor."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release the loop (the descriptor itself stays the caller's)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        self._loop.close()
