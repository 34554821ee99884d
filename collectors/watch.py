"""Recursive inotify watches on directory trees, read by the caller's thread, turned into plain operations.

Inotify tells *what* happened to *which* path but not who did it. This module only
translates its records into :class:`FsOp` values and hands them to a callback; joining
them with fanotify's pid happens in ``files``.

The kernel interface is watchdog's ctypes binding (``watchdog.observers.inotify_c``):
``inotify_init``, ``inotify_add_watch``, ``inotify_rm_watch`` and its constants. Watchdog's
observer is not used: it reads the descriptor on a thread of its own and hands every
record through an emitter thread per tree and a dispatcher thread, three queues and four
thread switches for one file operation. Here the descriptor is non-blocking and read by
whoever polls ``fileno()`` (the files collector's joining thread): no thread of its own.

What it keeps from watchdog's inotify emitter, so the operations are the same:

- one watch per directory of each tree; a directory created in (or moved into) a tree is
  watched at once, and what was created in it before its watch took hold is reported as
  created (``mkdir -p a/b && touch a/b/f``), once (watchdog reported such an entry twice
  when both the listing and the new watch saw it: two events for one operation);
- a move's two halves (``IN_MOVED_FROM``, ``IN_MOVED_TO``) are paired by their cookie into
  one ``moved``; a first half is held ``MOVE_DELAY`` for its second, and what came after it
  waits behind it, so the order of operations is kept; unpaired it is a ``deleted`` (a move
  out of the trees), an unpaired second half a ``created`` (a move in);
- a directory moved within the trees keeps its watches under its new path.

Only what the files collector uses is asked of the kernel (create, modify, close after
writing, moves, deletes): reading a file in a watched tree wakes no one, where watchdog
asked for every open and read-only close as well. A directory moved out of the trees has
its watches removed (watchdog kept them and named later operations in it by the old path).
``IN_Q_OVERFLOW`` (the kernel's queue was full, operations are lost) goes to ``on_overflow``
and the trees are walked for directories that lost their watch meanwhile.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watchdog.observers.inotify_c import InotifyConstants as _In
from watchdog.observers.inotify_c import inotify_add_watch, inotify_init, inotify_rm_watch

if TYPE_CHECKING:
    from watchdog.observers.inotify_c import WatchDescriptor  # watchdog 7's name for an int; older ones have none

log = logging.getLogger(__name__)

CREATED, MODIFIED, CLOSED, DELETED, MOVED = "created", "modified", "closed", "deleted", "moved"
MOVE_DELAY = 0.5  # how long a move's first half waits for its second (watchdog's delay)
SAME_CREATE = 1.0  # a create of a path already reported as created this recently is the same one, seen twice
MASK = (_In.IN_CREATE | _In.IN_MODIFY | _In.IN_CLOSE_WRITE | _In.IN_MOVED_FROM | _In.IN_MOVED_TO | _In.IN_DELETE
        | _In.IN_DELETE_SELF | _In.IN_DONT_FOLLOW | _In.IN_ONLYDIR)
READ_SIZE = 64 * 1024
MAX_READS = 32  # reads per call before the caller gets its turn (a flood must not hold it forever)
_HEAD = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


@dataclass(frozen=True, slots=True)
class FsOp:
    """One filesystem change as inotify saw it; ``dest`` only for moves."""

    what: str  # created | modified | closed (after writing) | deleted | moved
    path: str
    is_dir: bool
    dest: str | None = None


@dataclass(slots=True)
class _From:
    """A move's first half, waiting for its second until ``until`` (monotonic)."""

    cookie: int
    path: str
    is_dir: bool
    until: float


class TreeWatcher:
    """Recursive inotify watches on a changing set of roots, on one non-blocking descriptor.

    ``read()`` when ``fileno()`` is readable, and ``release()`` at ``due()``: each hands the
    operations that are ready to ``sink`` in order. ``on_error(root)`` when a root cannot be
    watched; ``on_lost(root)`` when a root's watch went away (the root was deleted, or its
    filesystem unmounted); ``on_overflow()`` when the kernel dropped records. Not thread-safe:
    one thread calls everything.
    """

    def __init__(self, sink: Callable[[FsOp], None], on_error: Callable[[str], None],
                 on_lost: Callable[[str], None] | None = None, on_overflow: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._on_error = on_error
        self._on_lost = on_lost or (lambda _root: None)
        self._on_overflow = on_overflow or (lambda: None)
        self._clock = clock
        fd = inotify_init()
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init: {os.strerror(err)}")
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self._fd = fd
        self._roots: list[str] = []
        self._paths: dict[int, list[str]] = {}  # wd -> the directory's paths (one inode may sit in two trees)
        self._wds: dict[str, WatchDescriptor] = {}  # directory path -> wd
        self._queue: deque[FsOp | _From] = deque()  # operations in order, behind a move's first half
        self._made: dict[str, float] = {}  # path -> when it was reported created (monotonic), until deleted or moved
        self._next_sweep = 0.0

    # -- the descriptor ------------------------------------------------------------------------------------------

    def fileno(self) -> int:
        """The inotify descriptor, to poll for reading."""
        return self._fd

    def close(self) -> None:
        """Release the descriptor and every watch with it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._paths.clear()
        self._wds.clear()
        self._roots.clear()
        self._queue.clear()
        self._made.clear()

    def read(self) -> int:
        """Read what the kernel has (never blocks), hand what is ready to the sink; records read."""
        n = 0
        for _ in range(MAX_READS):
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            for wd, mask, cookie, name in _records(data):
                n += 1
                self._record(wd, mask, cookie, name)
            if len(data) < READ_SIZE // 2:
                break  # drained, most likely: spare the read that would only say so
        now = self._clock()
        if self._made and now >= self._next_sweep:
            self._made = {p: t for p, t in self._made.items() if now - t < SAME_CREATE}
            self._next_sweep = now + SAME_CREATE
        self.release()
        return n

    def due(self) -> float | None:
        """When a held move's first half becomes a delete (monotonic), or None."""
        head = self._queue[0] if self._queue else None
        return head.until if isinstance(head, _From) else None

    def release(self) -> None:
        """Hand the sink every operation no longer held behind a move's first half."""
        now = self._clock()
        q = self._queue
        while q:
            head = q[0]
            if isinstance(head, _From):
                if head.until > now:
                    return
                q.popleft()
                if head.is_dir:
                    self._unwatch_under(head.path)  # moved out of the trees: what happens there is not ours
                self._made.pop(head.path, None)
                self._sink(FsOp(DELETED, head.path, head.is_dir))
            else:
                q.popleft()
                self._sink(head)

    # -- roots -----------------------------------------------------------------------------------------------------

    def add(self, root: str) -> bool:
        """Watch ``root`` and everything below it; False (and reported) when it cannot."""
        if root in self._roots:
            return True
        try:
            self._watch(root)
        except OSError as exc:
            log.warning("cannot watch %s: %s", root, exc)
            self._on_error(root)
            return False
        self._roots.append(root)
        self._watch_tree(root, report=False)
        return True

    def remove(self, root: str) -> None:
        """Stop watching ``root`` (for instance when its medium was unmounted)."""
        if root not in self._roots:
            return
        self._roots.remove(root)
        self._unwatch_under(root, covered=True)

    def roots(self) -> tuple[str, ...]:
        """The roots watched now."""
        return tuple(self._roots)

    def watches(self) -> int:
        """Directories watched now."""
        return len(self._wds)

    # -- records ---------------------------------------------------------------------------------------------------

    def _record(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        if mask & _In.IN_Q_OVERFLOW:
            log.warning("inotify: the kernel's queue overflowed; operations were lost")
            self._on_overflow()
            self._made.clear()  # the deletes that would clear it may be among the lost
            for root in list(self._roots):  # directories made meanwhile were never reported: watch them now
                self._watch_tree(root, report=False, again=True)
            return
        if mask & _In.IN_IGNORED:
            self._forget(wd)
            return
        where = self._paths.get(wd)
        if not where:
            return
        is_dir = bool(mask & _In.IN_ISDIR)
        if mask & _In.IN_DELETE_SELF:
            for p in where:
                if p in self._roots and os.path.dirname(p) not in self._wds:
                    self._queue.append(FsOp(DELETED, p, True))
            return
        text = os.fsdecode(name)
        for base in list(where):
            path = os.path.join(base, text) if text else base
            self._one(mask, cookie, path, is_dir)

    def _one(self, mask: int, cookie: int, path: str, is_dir: bool) -> None:
        q = self._queue
        if mask & _In.IN_MOVED_FROM:
            q.append(_From(cookie, path, is_dir, self._clock() + MOVE_DELAY))
        elif mask & _In.IN_MOVED_TO:
            src = self._take_from(cookie)
            if src is None:
                if is_dir:
                    self._watch_tree(path, report=False)
                self._made.pop(path, None)
                q.append(FsOp(CREATED, path, is_dir))
                return
            if is_dir:
                self._rename_under(src.path, path)
            self._made.pop(src.path, None)
            self._made.pop(path, None)
            q.append(FsOp(MOVED, src.path, is_dir, path))
        elif mask & _In.IN_CREATE:
            self._created(path, is_dir)
            if is_dir:
                self._watch_tree(path, report=True)
        elif mask & _In.IN_DELETE:
            self._made.pop(path, None)
            q.append(FsOp(DELETED, path, is_dir))
        elif is_dir:
            return
        elif mask & _In.IN_CLOSE_WRITE:
            q.append(FsOp(CLOSED, path, False))
        elif mask & _In.IN_MODIFY:
            q.append(FsOp(MODIFIED, path, False))

    def _created(self, path: str, is_dir: bool) -> None:
        """Report ``path`` created, once: a new directory's listing and its watch may both see an entry."""
        now = self._clock()
        seen = self._made.get(path)
        if seen is not None and now - seen < SAME_CREATE:
            return
        self._made[path] = now
        self._queue.append(FsOp(CREATED, path, is_dir))

    def _take_from(self, cookie: int) -> _From | None:
        for i, entry in enumerate(self._queue):
            if isinstance(entry, _From) and entry.cookie == cookie:
                del self._queue[i]
                return entry
        return None

    # -- the watch table -------------------------------------------------------------------------------------------

    def _watch(self, path: str) -> WatchDescriptor:
        wd = inotify_add_watch(self._fd, os.fsencode(path), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        old = self._wds.get(path)
        if old is not None and old != wd:  # the path names another directory than it did
            self._drop_path(old, path)
        paths = self._paths.setdefault(wd, [])
        if path not in paths:
            paths.append(path)
        self._wds[path] = wd
        return wd

    def _drop_path(self, wd: int, path: str) -> None:
        paths = self._paths.get(wd, [])
        if path in paths:
            paths.remove(path)
        if not paths:
            self._paths.pop(wd, None)

    def _watch_tree(self, top: str, *, report: bool, again: bool = False) -> None:
        """Watch every directory below ``top`` (``top`` too, when it is not yet); with ``report``, what is
        found in them is reported as created: it was made before the watch could see it. With ``again``,
        directories already in the table are watched anew (after an overflow the table may name ones
        that were deleted and made again meanwhile)."""
        stack = [top]
        while stack:
            here = stack.pop()
            if again or here not in self._wds:
                try:
                    self._watch(here)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        log.warning("inotify: watch limit reached at %s", here)
                        self._on_error(here)
                    continue  # gone already, or not a directory any more
            # Listed after it is watched: an entry made meanwhile is listed here or reported by the watch.
            try:
                with os.scandir(here) as entries:
                    found = list(entries)
            except OSError:
                continue
            for e in found:
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    stack.append(e.path)
                if report:
                    self._created(e.path, is_dir)

    def _rename_under(self, old: str, new: str) -> None:
        """A directory moved within the trees: its watches (and its subdirectories') now name ``new``."""
        prefix = old + "/"
        for path in [p for p in self._wds if p == old or p.startswith(prefix)]:
            wd = self._wds.pop(path)
            moved = new + path[len(old):]
            self._wds[moved] = wd
            paths = self._paths.get(wd, [])
            self._paths[wd] = [moved if p == path else p for p in paths]

    def _unwatch_under(self, top: str, *, covered: bool = False) -> None:
        """Drop the watches of ``top`` and below; with ``covered``, not those another root still covers."""
        prefix = top + "/"
        for path in [p for p in self._wds if p == top or p.startswith(prefix)]:
            if covered and any(_under(path, r) for r in self._roots):
                continue
            wd = self._wds.pop(path)
            self._drop_path(wd, path)
            if wd not in self._paths:
                inotify_rm_watch(self._fd, wd)  # its IN_IGNORED then finds nothing to forget

    def _forget(self, wd: int) -> None:
        """The kernel dropped ``wd`` (its directory is gone, or its filesystem unmounted)."""
        for path in self._paths.pop(wd, []):
            if self._wds.get(path) == wd:
                del self._wds[path]
            if path in self._roots:
                self._roots.remove(path)
                self._on_lost(path)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _records(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    i, end = 0, len(data)
    while i + _HEAD.size <= end:
        wd, mask, cookie, length = _HEAD.unpack_from(data, i)
        i += _HEAD.size
        yield wd, mask, cookie, data[i:i + length].rstrip(b"\0")
        i += length
