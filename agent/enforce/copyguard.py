"""The copy guard: fanotify permission events deny a classified document's way onto a stick it may not go to.

Two opens are judged, each the moment the kernel asks (``FAN_OPEN_PERM``):

- an open of a file on a guarded stick by a process that holds a classified
  asset open (``cp`` opens its source, then its destination), or that opened
  one in the last ``READ_WINDOW`` seconds (read into memory, closed, then written);
- an open of a registered classified asset by a process that holds a file
  open for writing on a guarded stick (the copy's destination already open).

A stick is guarded when it is unregistered, or registered below an asset's
level. Only what needs a decision waits for one. Every open on a guarded
stick's filesystem is asked about. An asset open can only be the second kind
while some file on a guarded stick is open, so the asset directories carry a
plain ``FAN_OPEN`` notification mark (the opener never waits; the guard
learns who read what) and carry the permission mark instead only while files
on a guarded stick are open (then each open's decision tells who read what):
the guard swaps the marks before it lets the first such open go on, counts
the stick's open files by the kernel's open and close events, and swaps them
back a second after the last one closed. With no guarded stick in
use a classified open costs what an unguarded one costs. The plain
notifications come through a second fanotify group that the guard reads in
batches (the kernel merges an opener's repeats meanwhile, so a program that
opens a document a thousand times costs the guard a few wake-ups), and that
it always empties before it judges an open: the order of "read the
document, then open the stick" is kept.

A decision reads only ``/proc`` of the one process (its descriptors, at most
``MAX_FDS``; past that it is allowed and the gap counted); it never waits on a
file the kernel is asked about. If the agent dies, the kernel answers every
waiting and later open itself (allow): the desktop never freezes. Folders
created in an asset tree after start are marked as they appear (inotify).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.enforce import procfds
from agent.levels import Level
from agent.registry import Asset

_log = logging.getLogger("dutywatch.enforce.copy")
FAN_CLASS_NOTIF = 0x0
FAN_CLASS_CONTENT = 0x4
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_FILESYSTEM = 0x100
FAN_CLOSE_WRITE = 0x08
FAN_CLOSE_NOWRITE = 0x10
FAN_OPEN = 0x20
FAN_Q_OVERFLOW = 0x4000
FAN_OPEN_PERM = 0x10000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ALLOW, FAN_DENY = 0x01, 0x02
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE = 0x40, 0x80, 0x100
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR, IN_ISDIR = 0x4000, 0x8000, 0x01000000, 0x40000000
_META = struct.Struct("=IBBHQii")
_RESPONSE = struct.Struct("=iI")
_INOTIFY = struct.Struct("=iIII")
MAX_FDS = procfds.MAX_FDS
READ_WINDOW = 120.0  # as the files collector's provenance: a read this recent makes a write a copy
MAX_READERS = 10000
DISARM_AFTER = 1.0  # seconds with no guarded stick file open before asset opens stop waiting for a decision
RECOUNT_AFTER = 5.0  # seconds without an open on a stick before its open files are counted again from /proc
NOTE_BATCH = 0.05  # plain notifications are read this long after the first: the kernel merges repeats meanwhile
RT_PRIORITY = 1  # SCHED_RR priority of the answering thread: the lowest real-time one (see ``_prioritise``)


@dataclass(frozen=True, slots=True)
class Stick:
    """A mounted removable medium the guard knows: where, which device, and its registered level (None: none)."""

    mount: str
    device: str
    registered: bool
    level: Level | None
    dev: int = -1  # st_dev of its filesystem: the stick however it is reached (bind mount, other namespace)


@dataclass(frozen=True, slots=True)
class Decision:
    """One judged open."""

    deny: bool
    pid: int
    path: str
    asset: str | None = None
    asset_level: Level | None = None
    stick: Stick | None = None
    why: str = ""
    # The opener's login uid and uid, read while it waits for the answer (after it, a denied cp is gone).
    ids: tuple[int | None, int | None] | None = None


class CopyGuard:
    """See the module docstring. ``sticks`` gives the removable mounts now; ``report`` gets each denial."""

    def __init__(self, assets: Iterable[Asset], sticks: Callable[[], list[Stick]],
                 report: Callable[[Decision], None], *, dryrun: bool = False,
                 proc_root: Path = Path("/proc"), hold: float = 0.0, realtime: bool = True) -> None:
        self.assets = tuple(assets)
        self.sticks_now = sticks
        self.report = report
        self.dryrun = dryrun
        self.proc_root = proc_root
        self.hold = hold  # tests only: wait this long before answering an asset open (to kill the agent mid-decision)
        self.realtime = realtime
        self.priority = "normal"  # what the answering thread runs at (stats)
        self._buf = bytearray(64 * 1024)  # permission events are read into this, not into a new buffer each time
        self.fd = -1
        self.nfd = -1  # the notification group: asset opens, stick closes
        self._ino = -1
        self._marked_mounts: set[str] = set()
        self._sticks: list[Stick] = []
        self._guarded: dict[int, Stick] = {}  # st_dev -> a stick some asset may not go to
        self._stop_r, self._stop_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # marks and the open-file counts
        self._dirs: dict[str, int] = {}  # marked asset folder -> its inotify watch
        self._watches: dict[int, str] = {}
        self._open: dict[int, int] = {}  # st_dev of a guarded stick -> its files open now (an upper bound)
        self._last_open: dict[int, float] = {}
        self.armed = False  # the asset folders carry the permission mark
        self._idle_since: float | None = None
        self._mounts = procfds.MountDevs(str(proc_root))
        self._prefixes = tuple(a.prefix for a in self.assets)
        self._levels = tuple(a.level for a in self.assets)
        self.decided = 0
        self.denied = 0
        self.seen = 0  # asset opens learnt from notifications (the opener did not wait)
        self.gaps = 0  # decisions made without reading all of a process's descriptors, or events lost
        self.timings: deque[float] = deque(maxlen=10000)  # seconds per decision (bench)
        # pid -> (process start time, when it last opened an asset, that asset): the recent readers
        self._readers: dict[int, tuple[str, float, str, Level]] = {}
        lib = ctypes.CDLL(None, use_errno=True)
        self._init, self._mark = lib.fanotify_init, lib.fanotify_mark
        self._init.argtypes = (ctypes.c_uint, ctypes.c_uint)
        self._mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p)
        self._ino_init, self._ino_add = lib.inotify_init1, lib.inotify_add_watch
        self._ino_add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)

    # -- marks -------------------------------------------------------------------
    def start(self) -> None:
        """Open the group, mark every asset folder and the sticks, and start answering."""
        fd = self._init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init (permission events): {os.strerror(err)}")
        self.fd = fd
        nfd = self._init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE)
        if nfd < 0:
            err = ctypes.get_errno()
            os.close(fd)
            self.fd = -1
            raise OSError(err, f"fanotify_init (notifications): {os.strerror(err)}")
        self.nfd = nfd
        self._ino = self._ino_init(IN_NONBLOCK | IN_CLOEXEC)
        if self._ino < 0:
            _log.warning("copy guard: no inotify (%s): folders made later in an asset tree are not guarded",
                         os.strerror(ctypes.get_errno()))
        for a in self.assets:
            self._mark_tree(a.prefix if os.path.isdir(a.prefix) else os.path.dirname(a.prefix))
        self.refresh()
        self._threads = [threading.Thread(target=self._run, name="copy-guard", daemon=True),
                         threading.Thread(target=self._watch_mounts, name="copy-guard-mounts", daemon=True)]
        for t in self._threads:
            t.start()

    def _mark_path(self, path: str, flags: int, mask: int, group: int | None = None) -> bool:
        if self._mark(self.fd if group is None else group, flags, mask, -100, os.fsencode(path)) < 0:
            _log.warning("copy guard: cannot mark %s: %s", path, os.strerror(ctypes.get_errno()))
            return False
        return True

    def _mark_tree(self, top: str) -> None:
        """Mark every folder under ``top`` (the asset opens in it reported; asked about while armed)."""
        with self._lock:
            todo = [top]
            while todo:
                d = todo.pop()
                # Armed, the permission mark alone (each open is asked about, so its reader is learnt then);
                # otherwise the plain notification.
                if d in self._dirs or not (
                        self._mark_path(d, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD) if self.armed
                        else self._mark_path(d, FAN_MARK_ADD, FAN_OPEN | FAN_EVENT_ON_CHILD, self.nfd)):
                    continue
                wd = self._ino_add(self._ino, os.fsencode(d), IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_ONLYDIR) \
                    if self._ino >= 0 else -1
                self._dirs[d] = wd
                if wd >= 0:
                    self._watches[wd] = d
                # Listed after the watch is in place: a folder made before it is listed here, one made after
                # it is reported (os.walk listed a folder before it was watched, and lost what came between).
                with contextlib.suppress(OSError), os.scandir(d) as entries:
                    todo.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))

    def _arm(self, on: bool) -> None:
        """Swap every asset folder's mark: the permission mark while armed, the plain notification otherwise.

        The new mark is in place on every folder before the old one goes, so no open is missed
        between; armed, the permission event tells who read what, and the notification of the same
        open would only cost its reading again (an event file, its path, the reader's start time).
        The caller holds the lock.
        """
        if on == self.armed:
            return
        asked, told = (self.fd, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD), (self.nfd, FAN_OPEN | FAN_EVENT_ON_CHILD)
        (new_group, new_mask), (old_group, old_mask) = (asked, told) if on else (told, asked)
        for d in self._dirs:
            self._mark_path(d, FAN_MARK_ADD, new_mask, new_group)
        for d in self._dirs:
            self._mark(old_group, FAN_MARK_REMOVE, old_mask, -100, os.fsencode(d))
        self.armed = on
        self._idle_since = None

    def refresh(self) -> None:
        """Mark new removable media (every one: a registered stick may still be below an asset's level).

        The mark is on the stick's filesystem, not the mount: a bind mount of it, or its mount
        in another mount namespace (``unshare -m``, a container), is the same filesystem. A newly
        marked stick's files already open (opened before its mark) are counted from ``/proc``.
        """
        sticks = self.sticks_now()
        now = {s.mount for s in sticks}
        self._mounts.reset()
        fresh = []
        guarded = {s.dev: s for s in sticks if s.dev >= 0 and any(_below(s, lv) for lv in self._levels)}
        for s in sticks:
            if s.mount not in self._marked_mounts and self._mark_path(
                    s.mount, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_PERM) and self._mark_path(
                    s.mount, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE, self.nfd):
                self._marked_mounts.add(s.mount)
                if s.dev in guarded:
                    fresh.append(s.dev)
        self._marked_mounts &= now  # an unmounted stick's mark went with its mount
        self._sticks = sticks
        self._guarded = guarded
        quiet = [d for d, n in self._open.items()
                 if n > 0 and d in guarded and time.monotonic() - self._last_open.get(d, 0.0) >= RECOUNT_AFTER]
        counted = procfds.count_on(fresh + quiet, self._mounts, str(self.proc_root)) if fresh or quiet else {}
        with self._lock:
            for d in list(self._open):
                if d not in guarded:
                    del self._open[d]
            for d, n in counted.items():
                # a recount only lowers what the events said if nothing was opened there since it began
                if d in fresh or time.monotonic() - self._last_open.get(d, 0.0) >= RECOUNT_AFTER:
                    self._open[d] = n if d not in fresh else self._open.get(d, 0) + n
            if any(self._open.values()):
                self._arm(True)

    def stop(self) -> None:
        """Stop answering and close the group (the kernel allows whatever is still waiting)."""
        self._stopping.set()
        os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join(5)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.nfd >= 0:
            os.close(self.nfd)
            self.nfd = -1
        if self._ino >= 0:
            os.close(self._ino)
            self._ino = -1
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    # -- answering -----------------------------------------------------------------
    def _watch_mounts(self) -> None:
        """Each second: the sticks mounted now (kept off the answering thread: it reads sysfs and mountinfo)."""
        while not self._stopping.wait(1.0):
            try:
                self.refresh()
            except OSError as exc:
                _log.warning("copy guard: cannot read the mounts: %s", exc)

    def _prioritise(self) -> None:
        """Run the answering thread (only it) at the lowest real-time priority, where allowed.

        Every opener that waits, waits on this thread; under load a normal thread waits its turn
        behind every busy process on the machine (milliseconds), a real-time one runs as soon as an
        open is asked about. It is safe because the work is bounded: a decision reads at most
        ``MAX_FDS`` entries of one process's /proc and nothing else, the thread sleeps in poll()
        otherwise, and the kernel's real-time throttling (sched_rt_runtime_us) keeps 5 % of every
        CPU for normal tasks even if it spun. The mount watcher and the rest stay normal. Needs
        CAP_SYS_NICE (or an RLIMIT_RTPRIO of 1); the enforcement drop-in grants it. Without it the
        thread runs normally and the stats say so.
        """
        if not self.realtime:
            return
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_RR, os.sched_param(RT_PRIORITY))
            self.priority = f"rr{RT_PRIORITY}"
        except OSError as exc:
            _log.info("copy guard: answering at normal priority (real-time refused: %s)", exc)

    def _run(self) -> None:
        self._prioritise()
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        poll.register(self.nfd, select.POLLIN)
        poll.register(self._stop_r, select.POLLIN)
        if self._ino >= 0:
            poll.register(self._ino, select.POLLIN)
        notes_due: float | None = None  # when the waiting notifications are read
        while True:
            timeout = 0.25 if self.armed else 1.0
            if notes_due is not None:
                timeout = max(0.0, min(timeout, notes_due - time.monotonic()))
            ready = {fd for fd, _ in poll.poll(timeout * 1000)}
            if self._stop_r in ready:
                return
            if self.nfd in ready and notes_due is None:
                notes_due = time.monotonic() + NOTE_BATCH
                poll.unregister(self.nfd)  # not ready again until read: no spinning meanwhile
            if self.fd in ready:
                self._notes()  # what came before the questions, first: who read what
                self._drain()
            if notes_due is not None and time.monotonic() >= notes_due:
                self._notes()
                notes_due = None
                poll.register(self.nfd, select.POLLIN)
            if self._ino in ready:
                self._folders()
            if self.armed:
                self._maybe_disarm()

    def _notes(self) -> None:
        """Read every waiting notification (asset opens, stick closes)."""
        while True:
            try:
                buf = os.read(self.nfd, 64 * 1024)
            except BlockingIOError:
                return
            self._events(buf)

    def _maybe_disarm(self) -> None:
        with self._lock:
            if any(self._open.values()):
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = time.monotonic()
            elif time.monotonic() - self._idle_since >= DISARM_AFTER:
                self._arm(False)

    def _folders(self) -> None:
        """New folders in an asset tree: mark them (and what was moved in with them)."""
        try:
            buf = os.read(self._ino, 64 * 1024)
        except BlockingIOError:
            return
        off = 0
        while off + _INOTIFY.size <= len(buf):
            wd, mask, _, length = _INOTIFY.unpack_from(buf, off)
            name = buf[off + _INOTIFY.size:off + _INOTIFY.size + length].rstrip(b"\0")
            off += _INOTIFY.size + length
            parent = self._watches.get(wd)
            if mask & IN_Q_OVERFLOW:
                self.gaps += 1
                for a in self.assets:  # a lost event: walk the trees again (marks already made stay)
                    self._mark_tree(a.prefix if os.path.isdir(a.prefix) else os.path.dirname(a.prefix))
            elif mask & IN_IGNORED and parent is not None:
                with self._lock:
                    self._watches.pop(wd, None)
                    if self._dirs.get(parent) == wd:
                        del self._dirs[parent]
            elif parent is not None and mask & IN_ISDIR:
                path = os.path.join(parent, os.fsdecode(name))
                if mask & IN_MOVED_FROM:
                    with self._lock:  # its marks went with it; a new folder of that name is marked anew
                        for d in [d for d in self._dirs if d == path or d.startswith(path + "/")]:
                            self._watches.pop(self._dirs.pop(d), None)
                else:
                    self._mark_tree(path)

    def _drain(self) -> None:
        try:
            n = os.readv(self.fd, [self._buf])
        except BlockingIOError:
            return
        self._events(self._buf, n)

    def _events(self, buf: bytes | bytearray, size: int = -1) -> None:
        off = 0
        end = len(buf) if size < 0 else size
        while off + _META.size <= end:
            length, _, _, _, mask, fd, pid = _META.unpack_from(buf, off)
            off += max(length, _META.size)
            if mask & FAN_Q_OVERFLOW:
                self.gaps += 1  # notifications lost (the kernel's queue was full): recent reads may be missed
            if fd < 0:
                continue
            if mask & FAN_OPEN_PERM:
                self._answer(fd, pid)
                continue
            try:
                self._notified(fd, pid, mask)
            except Exception:
                _log.exception("copy guard: reading an open or close failed")
            finally:
                os.close(fd)

    def _notified(self, fd: int, pid: int, mask: int) -> None:
        """An asset opened (remember the reader) or a stick's file closed (count it)."""
        dev = os.fstat(fd).st_dev
        if dev in self._guarded or mask & (FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE):
            if mask & (FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE):
                with self._lock:
                    if self._open.get(dev, 0) > 0:
                        self._open[dev] -= 1
            return
        if mask & FAN_OPEN:
            path = os.readlink(f"/proc/self/fd/{fd}")
            asset = self._asset(path)
            if asset is not None:
                self.seen += 1
                self._remember(pid, path, asset.level)

    def _answer(self, fd: int, pid: int) -> None:
        t0 = time.perf_counter()
        decision = None
        on_stick = -1
        stick: Stick | None = None
        path = ""
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            dev = os.fstat(fd).st_dev
            stick = self._stick_by_dev(dev) or self._stick_of(path)
            decision = self.decide_open(path, stick, pid)
            if stick is not None and stick.dev in self._guarded:
                on_stick = stick.dev
        except Exception:  # a bug must cost one decision (allowed), never an open left waiting
            _log.exception("copy guard: judging an open failed; allowed")
        if self.hold and on_stick < 0:
            self._hold()
        deny = decision is not None and decision.deny and not self.dryrun
        if decision is not None and decision.deny:
            decision = replace(decision, ids=process_ids(pid))
        self.decided += 1  # counted before the answer: whoever waited sees it counted once it goes on
        try:
            if not deny and on_stick >= 0:
                with self._lock:  # before the open goes on: from now on an asset open waits for a decision
                    self._open[on_stick] = self._open.get(on_stick, 0) + 1
                    self._last_open[on_stick] = time.monotonic()
                    self._arm(True)
            os.write(self.fd, _RESPONSE.pack(fd, FAN_DENY if deny else FAN_ALLOW))
        finally:
            os.close(fd)
        self.timings.append(time.perf_counter() - t0)
        if not deny and stick is None and path:
            # After the answer (the opener goes on meanwhile), before the next event is read: an open of a
            # stick this process makes next is judged knowing this read.
            self._learn(pid, path)
        if decision is not None and decision.deny:
            self.denied += 1
            try:
                self.report(decision)
            except Exception:
                _log.exception("copy guard: reporting a denial failed")

    def _hold(self) -> None:
        """Tests: keep the answer back (the stop pipe ends the wait)."""
        select.select([self._stop_r], [], [], self.hold)

    def decide(self, fd: int, pid: int) -> Decision | None:
        """Judge one open of the file behind ``fd`` by process ``pid``; None when nothing is at stake."""
        path = os.readlink(f"/proc/self/fd/{fd}")
        return self.decide_open(path, self._stick_by_dev(os.fstat(fd).st_dev) or self._stick_of(path), pid)

    def decide_open(self, path: str, stick: Stick | None, pid: int) -> Decision | None:
        """Judge an open of ``path`` (on ``stick``, when it is on one) by process ``pid``."""
        if stick is not None:
            held = procfds.paths_open(pid, self._maybe_asset, str(self.proc_root))
            if held.cut:
                self.gaps += 1
            for p in held.found:
                asset = self._asset(p)
                if asset is not None and _below(stick, asset.level):
                    return Decision(True, pid, path, p, asset.level, stick,
                                    f"the process holds {p} ({asset.level}) open")
            seen = self._readers.get(pid)
            if seen is not None and time.monotonic() - seen[1] < READ_WINDOW and _below(stick, seen[3]) \
                    and seen[0] == procfds.start_time(pid, str(self.proc_root)):
                return Decision(True, pid, path, seen[2], seen[3], stick,
                                f"the process read {seen[2]} ({seen[3]}) {time.monotonic() - seen[1]:.0f} s ago")
            return None
        asset = self._asset(path)
        if asset is None:
            return None
        devs = {d for d, s in self._guarded.items() if _below(s, asset.level)}
        if not devs:
            return None  # no stick it could go to: nothing of the process to read
        held = procfds.writable_on(pid, devs, self._mounts, str(self.proc_root))
        if held.cut:
            self.gaps += 1
        if held.found:
            s = self._guarded_stick(held.found[0], devs)
            return Decision(True, pid, path, path, asset.level, s,
                            f"the process holds {held.found[0]} open for writing")
        return None

    def _guarded_stick(self, path: str, devs: set[int]) -> Stick:
        s = self._stick_of(path)
        return s if s is not None and s.dev in devs else self._guarded[next(iter(devs))]

    def _learn(self, pid: int, path: str) -> None:
        """An asset open the guard let go while armed: its reader is remembered (as a notification would)."""
        asset = self._asset(path)
        if asset is not None:
            self.seen += 1
            self._remember(pid, path, asset.level)

    def _remember(self, pid: int, path: str, level: Level) -> None:
        # The start time is read every time: a process that took an earlier reader's pid must not be
        # remembered with that reader's (it would then not count as a reader itself).
        if len(self._readers) >= MAX_READERS:
            cutoff = time.monotonic() - READ_WINDOW
            self._readers = {k: v for k, v in self._readers.items() if v[1] >= cutoff}
            if len(self._readers) >= MAX_READERS:
                self._readers.pop(next(iter(self._readers)))
        self._readers[pid] = (procfds.start_time(pid, str(self.proc_root)), time.monotonic(), path, level)

    def _stick_by_dev(self, dev: int) -> Stick | None:
        for s in self._sticks:
            if s.dev == dev:
                return s
        return None

    def _stick_of(self, path: str) -> Stick | None:
        for s in self._sticks:
            if path == s.mount or path.startswith(s.mount.rstrip("/") + "/"):
                return s
        return None

    def _maybe_asset(self, path: str) -> bool:
        return path.startswith(self._prefixes)

    def _asset(self, path: str) -> Asset | None:
        best = None
        for a in self.assets:
            if a.pattern.match(path) and (best is None or a.level > best.level):
                best = a
        return best


def _below(stick: Stick, level: Level) -> bool:
    """Whether a document of ``level`` may not go to ``stick`` (unregistered, or registered lower)."""
    return not stick.registered or stick.level is None or stick.level < level


def describe(d: Decision) -> dict[str, Any]:
    """A denial as journal detail."""
    s = d.stick
    return {"pid": d.pid, "path": d.path, "asset": d.asset, "asset_level": str(d.asset_level),
            "stick": {"mount": s.mount, "device": s.device, "registered": s.registered,
                      "level": str(s.level) if s and s.level is not None else None} if s else None,
            "why": d.why}


def removable_sticks(registry: Any, roots: Iterable[str], sys_root: Path = Path("/sys"),
                     mountinfo: Path = Path("/proc/self/mountinfo")) -> Callable[[], list[Stick]]:
    """The mounted removable media now, judged against the registry (what ``CopyGuard`` calls each second)."""
    from agent.mediaid import identify
    from collectors.base import Sources
    from collectors.media import MediaCollector, parse_mountinfo

    media = MediaCollector({"roots": list(roots)}, Sources(Path("/proc"), sys_root))

    def now() -> list[Stick]:
        out = []
        for m in parse_mountinfo(mountinfo.read_text(encoding="utf-8", errors="surrogateescape")):
            got = media.removable(m)
            if got is None or got.mount is None:
                continue
            entry, _ = identify(got, registry.media)
            try:
                dev = os.stat(got.mount).st_dev
            except OSError:
                dev = -1
            out.append(Stick(got.mount, got.device or "", entry is not None,
                             entry.level if entry is not None else None, dev))
        return out
    return now


def process_ids(pid: int, proc_root: Path = Path("/proc")) -> tuple[int | None, int | None]:
    """A process's login uid (None when unset or unreadable) and uid (None when it is gone)."""
    loginuid = uid = None
    with contextlib.suppress(OSError, ValueError):
        loginuid = int((proc_root / str(pid) / "loginuid").read_text().strip())
    with contextlib.suppress(OSError):
        uid = os.stat(proc_root / str(pid)).st_uid
    return (None if loginuid == 4294967295 else loginuid), uid


def operator_of(pid: int, registry: Any, proc_root: Path = Path("/proc"),
                ids: tuple[int | None, int | None] | None = None) -> str | None:
    """The person behind a process: its login uid, else its uid, by the registry's people.

    ``ids`` are the process's ids read earlier (a denied opener is read while it waits for the answer,
    since it may be gone by the time the denial is reported); without them /proc is read now.
    """
    loginuid, uid = ids if ids is not None else process_ids(pid, proc_root)
    if loginuid is not None:
        uid = loginuid
    if uid is None:
        return None
    for p in registry.people:
        if p.uid == uid:
            return str(p.name)
    return f"uid {uid}"
