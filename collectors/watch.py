"""Watchdog (inotify) observers on directory trees, turned into plain operations.

Watchdog tells *what* happened to *which* path but not who did it. This
module only translates its events into :class:`FsOp` values and hands them
to a callback; joining them with fanotify's pid happens in ``files``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

log = logging.getLogger(__name__)

CREATED, MODIFIED, CLOSED, DELETED, MOVED = "created", "modified", "closed", "deleted", "moved"
_KINDS = {CREATED, MODIFIED, CLOSED, DELETED, MOVED}


@dataclass(frozen=True, slots=True)
class FsOp:
    """One filesystem change as inotify saw it; ``dest`` only for moves."""

    what: str  # created | modified | closed (after writing) | deleted | moved
    path: str
    is_dir: bool
    dest: str | None = None


class _Handler(FileSystemEventHandler):
    def __init__(self, sink: Callable[[FsOp], None]) -> None:
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        # Synthetic events re-describe a directory move or a tree walk-in;
        # the one real event already stands for the operation.
        if event.is_synthetic or event.event_type not in _KINDS:
            return
        if event.is_directory and event.event_type in (MODIFIED, CLOSED):
            return
        dest = _text(event.dest_path) if event.event_type == MOVED else None
        self._sink(FsOp(event.event_type, _text(event.src_path), event.is_directory, dest))


def _text(p: bytes | str) -> str:
    return p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else p


class TreeWatcher:
    """Recursive inotify watches on a changing set of roots, one observer thread."""

    def __init__(self, sink: Callable[[FsOp], None], on_error: Callable[[str], None]) -> None:
        self._handler = _Handler(sink)
        self._on_error = on_error
        self._observer = Observer()
        self._watches: dict[str, ObservedWatch] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the observer thread."""
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        """Stop and join the observer thread."""
        self._observer.stop()
        self._observer.join(timeout=2.0)

    def add(self, root: str) -> bool:
        """Watch ``root`` and everything below it; False (and reported) when it cannot."""
        with self._lock:
            if root in self._watches:
                return True
            try:
                self._watches[root] = self._observer.schedule(self._handler, root, recursive=True)
            except OSError as exc:
                log.warning("cannot watch %s: %s", root, exc)
                self._on_error(root)
                return False
            return True

    def remove(self, root: str) -> None:
        """Stop watching ``root`` (for instance when its medium was unmounted)."""
        with self._lock:
            watch = self._watches.pop(root, None)
            if watch is None:
                return
            try:
                self._observer.unschedule(watch)
            except (KeyError, OSError) as exc:
                log.debug("unwatch %s: %s", root, exc)

    def roots(self) -> tuple[str, ...]:
        """The roots watched now."""
        with self._lock:
            return tuple(self._watches)
