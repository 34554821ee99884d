"""The collector protocol: every event source has the same small face.

A collector is built from its config section and its sources (proc root,
sys root, clock), says whether and how it can run here (``available``), and
then ``run(emit, stop)`` blocks on a thread, handing events to ``emit``
until ``stop`` is set. ``emit`` returns False when the pipeline dropped the
event (queue full); the pipeline counts those drops itself. A collector
counts its own losses (kernel overflow, unreadable /proc entries) in
``health`` so the exporter can show them as ``events_dropped_total``.

A quiet host must cost nothing, so a collector blocks on its source with no
timeout, or with one computed from its next real deadline. To hear ``stop``
while it blocks, it waits on ``stop_fd(stop)`` beside its descriptors: the
agent hands collectors a :class:`StopEvent`, whose descriptor turns readable
when it is set. A plain ``threading.Event`` (tests, one-off tools) has none;
then the collector looks at it every ``STOP_POLL`` seconds instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.events import Event

Emit = Callable[[Event], bool]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a collector reads the system from; tests point these at fixtures."""

    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    clock: Clock = time.time


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a collector can run here, in which mode, and why not the best one."""

    mode: str | None  # e.g. "netlink", "fanotify", "sniff", "poll"; None: cannot run
    reason: str = ""


@dataclass
class Health:
    """Live counters a collector keeps; read by the exporter without locks."""

    mode: str = "off"
    up: bool = False
    events: int = 0
    last_event_time: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)
    partials: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    marking_skipped: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events lost for ``reason`` (a short, bounded label)."""
        with self._lock:
            self.drops[reason] = self.drops.get(reason, 0) + n

    def partial(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events that went out with only part of their data (``proc_gone``): not lost."""
        with self._lock:
            self.partials[reason] = self.partials.get(reason, 0) + n

    def skip_marking(self, reason: str, n: int = 1) -> None:
        """Count ``n`` files sent on unscanned for ``reason`` (timeout, queue_full, worker)."""
        with self._lock:
            self.marking_skipped[reason] = self.marking_skipped.get(reason, 0) + n

    def saw(self, now: float) -> None:
        """Note one event produced at ``now``."""
        self.events += 1
        self.last_event_time = now


class Collector(Protocol):
    """What every event source provides."""

    name: str
    health: Health

    def available(self) -> Availability:
        """Whether this collector can run here and in which mode."""
        ...

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Produce events until ``stop`` is set; return when it is."""
        ...


STOP_POLL = 0.25  # how often a collector looks at a stop that has no descriptor (never in the agent)


class StopEvent(threading.Event):
    """A ``threading.Event`` that can also be waited on with select/poll: ``fileno()`` turns readable on set.

    The descriptor is a pipe written once by ``set()`` and never drained while
    set, so every selector that includes it wakes, however many there are.
    """

    def __init__(self) -> None:
        super().__init__()
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._wakers: list[Callable[[], None]] = []

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when the event is set: for a loop that waits on a queue, not a descriptor.

        Adding the same callable again (a collector restarted by its supervisor) adds nothing.
        """
        if wake not in self._wakers:
            self._wakers.append(wake)

    def fileno(self) -> int:
        """The descriptor that is readable while the event is set."""
        return self._r

    def set(self) -> None:
        """Set the event and wake every thread waiting on its descriptor."""
        super().set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"x")
        for wake in list(self._wakers):
            wake()

    def clear(self) -> None:
        """Clear the event and its descriptor."""
        super().clear()
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def __del__(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


WakeEvent = StopEvent  # the same thing used to wake a loop for another reason (a hint from another source)


def stop_fd(stop: threading.Event) -> int | None:
    """The descriptor that wakes a select when ``stop`` is set, or None for a plain Event."""
    return stop.fileno() if isinstance(stop, StopEvent) else None


def stop_timeout(stop: threading.Event, deadline: float | None) -> float | None:
    """How long a select may block: until ``deadline`` seconds from now (None: no deadline).

    Without a stop descriptor the wait is cut to ``STOP_POLL`` so that ``stop`` is still seen.
    """
    if stop_fd(stop) is None:
        return STOP_POLL if deadline is None else max(0.0, min(deadline, STOP_POLL))
    return None if deadline is None else max(0.0, deadline)


class CollectorError(Exception):
    """A collector could not do its job; the message says why in plain words."""


_ERRNO_WORDS = {
    errno.EPERM: "not permitted (missing capability)",
    errno.EACCES: "permission denied",
    errno.ENOENT: "not present on this system",
    errno.EPROTONOSUPPORT: "protocol not supported by this kernel",
    errno.ENOSYS: "system call not available",
    errno.EINVAL: "not supported by this kernel",
    errno.EMFILE: "too many open files",
    errno.ENOBUFS: "kernel buffer overflow",
}


def translate_os_error(what: str, exc: OSError) -> CollectorError:
    """Turn a raw OS error into a collector error with a plain reason (one place)."""
    words = _ERRNO_WORDS.get(exc.errno or 0, exc.strerror or str(exc))
    return CollectorError(f"{what}: {words}")


def section(config: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    """A value from a collector's config section, or ``default``."""
    if not config:
        return default
    return config.get(key, default)
