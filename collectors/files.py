"""File events on watched trees: what changed (inotify) joined with who did it (fanotify).

Inotify says which path was created, written, renamed or deleted; fanotify
says which process opened, wrote, created, renamed or deleted it. Each
operation is held for a short window keyed by its path, then joined with
the latest fanotify record of the matching kind and sent as one event.
Writes are coalesced until the writer closes the file (or the file goes
quiet), and a file created and written in one go is one ``file.create``.
``file.open`` comes from fanotify alone and is dropped when
the same path was being created or written at the time.

Registered assets are known by (device, inode) as well as by name
(``collectors.assets``): each asset file carries its own fanotify inode mark,
so an open or write through a hard link, a bind mount, another mount
namespace or ``/proc/PID/root`` is reported, with ``file.source_path``
naming the asset. A move out of (or into) a watched tree, which inotify sees
as a delete (or a create), is one ``file.rename`` with both paths when the
kernel reports renames (Linux 5.17+). ``file.open`` is limited per process,
never for an asset, and whatever is not reported is journaled as an
``agent.degraded`` event with its counts.

Without CAP_SYS_ADMIN the collector runs in ``inotify`` mode: the same
events, without the process group.

With a marker, files created, written and opened are scanned for their
密级标志 off the event path; the result is the event's ``file.marking`` and
``file.marking_status``. A file that could not be scanned (time cap, the
marking queue full, a worker that died) goes out ``unscanned`` and is counted
in ``marking_skipped``. Results are cached by (device, inode, size, mtime,
ctime), so reading a document again costs no scan. After a monitoring gap
(``rescan_after``), the watched trees are walked once for files changed
during it, which go out as ``file.write`` without a process.

Threads, each blocked with no fixed timeout: the joining thread (the supervisor's) polls the
inotify descriptor, its bell (an eventfd rung when a record or a wake-up was queued for it
while it slept) and the stop descriptor, until the next real deadline (an operation's join
window, a write's quiet time, a move's first half waiting for its second, the periodic asset
re-index, a report of losses). It reads inotify itself (``collectors.watch``: watchdog's
binding, no observer), because what it reads it joins at once and nothing else waits on it.
The fanotify reader is a thread of its own because each record's process is read from /proc
at once, while the process lives, whatever the joining thread is doing (a catch-up scan of a
medium). The marking thread waits on its queue; it is one because a scan is a blocking round
trip to the marking worker. When the process collector does not read the kernel's process
events, the pid ledger reads them on a thread of its own (``files-pids``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import select
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.events import Event, File, Media, Process
from agent.levels import Level
from agent.packages import PackageOwners
from collectors import fanotify as fan
from collectors.assets import AssetIndex, device_name
from collectors.base import STOP_POLL, Availability, CollectorError, Emit, Health, Sources, section, stop_fd
from collectors.openlimit import REPORT_EVERY, OpenLimiter
from collectors.pidledger import PidLedger
from collectors.procfs import read_unit
from collectors.provenance import Provenance
from collectors.watch import CLOSED, CREATED, DELETED, MODIFIED, MOVE_DELAY, MOVED, FsOp, TreeWatcher

if TYPE_CHECKING:
    from collectors.marking import MarkingResult

log = logging.getLogger(__name__)

# Called with the file's real path (for its type) and a descriptor already opened
# with O_NOFOLLOW and checked: read through the descriptor, never reopen the path.
# A marker may also have ``many(list of (path, fd)) -> list of results`` for a batch.
Marker = Callable[[str, int], "MarkingResult"]
MARK_QUEUE = 256  # files waiting for their scan; past that they go out unscanned
MARK_BATCH = 16  # files handed to the marker at once (the marking worker's batch)
MARK_CACHE = 4096  # scan results kept by (device, inode, size, mtime, ctime)
RESCAN_MAX = 200_000  # files looked at by one rescan after a gap
WINDOW = 0.3  # how long an operation waits for its fanotify record
# Then it waits on in double windows while fanotify's stream is behind (its records of operations before this
# one are not all read yet), at most this many (about 18 s): a busy machine delays the record, never loses it.
MAX_WAITS = 30
QUIET = 1.0  # a write with no close is reported after this much silence...
HOLD_MAX = 5.0  # ...or after this long at most
CATCH_UP_SLACK = 1.0  # a file changed this long before the mount was seen still counts as written after it
ASSET_REFRESH = 600.0  # seconds between walks of the asset trees that re-check the index
MAX_MARKS = 100_000  # fanotify marks: directories of the watched trees and asset files
_NS_ROOT = re.compile(r"/proc/\d+/root(?=/)")
_WANT = {
    # A create or delete that inotify saw may be one side of a move across the tree's edge.
    "file.create": (fan.FAN_CREATE | fan.FAN_MOVED_TO, fan.FAN_OPEN | fan.FAN_CLOSE_WRITE),
    "file.write": (fan.FAN_CLOSE_WRITE, fan.FAN_OPEN),
    "file.delete": (fan.FAN_DELETE | fan.FAN_MOVED_FROM, 0),
    "file.rename": (fan.FAN_MOVED_FROM, fan.FAN_MOVED_TO),
}


class RemovableMounts(Protocol):
    """What the files collector needs from the media collector."""

    def removable_mounts(self) -> tuple[Media, ...]:
        """The removable media mounted now."""
        ...

    def removable_mount_for(self, path: str) -> Media | None:
        """The removable medium holding ``path``, or None."""
        ...


@dataclass(slots=True)
class _Op:
    kind: str
    path: str
    dest: str | None
    is_dir: bool
    t0: float
    wall: float
    deadline: float
    read_path: str | None = None
    waits: int = 0  # extra windows spent waiting for fanotify's record
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) when fanotify gave it
    last: float = 0.0  # the latest inotify event folded into it (a write's close), monotonic
    # It happened after this (monotonic): the start of the inotify read before the one that found it. Its
    # fanotify record was read after it too, however long the joining thread was held up meanwhile.
    after: float | None = None


@dataclass(frozen=True, slots=True)
class _Who:
    t: float
    mask: int
    process: Process
    peer: str | None = None  # a rename's other path
    ident: tuple[int, int] | None = None


@dataclass(slots=True)
class _Proc:
    """A minimal /proc reader for who-data; ``collectors.procfs.ProcReader`` replaces it."""

    root: Path
    owners: PackageOwners = field(default_factory=PackageOwners)
    exe_ids: OrderedDict[int, tuple[int, int]] = field(default_factory=OrderedDict)  # pid -> its exe's (dev, ino)
    cache: OrderedDict[int, tuple[float, Process]] = field(default_factory=OrderedDict)
    boot: float | None = None
    sids: OrderedDict[int, int] = field(default_factory=OrderedDict)  # pid -> session, as read with the rest

    def read(self, pid: int, now: float) -> Process:
        hit = self.cache.get(pid)
        if hit is not None and now - hit[0] < 5.0:
            return hit[1]
        p = self._read(pid)
        self.cache[pid] = (now, p)
        if len(self.cache) > 512:
            self.cache.popitem(last=False)
        return p

    def forget(self, pid: int) -> None:
        """``pid`` began a new life (fork or exec): what was read of it describes another program."""
        self.cache.pop(pid, None)

    def _read(self, pid: int) -> Process:
        base = self.root / str(pid)
        out: dict[str, Any] = {"pid": pid}
        try:
            for line in (base / "status").read_text().splitlines():
                if line.startswith("Name:"):
                    out["name"] = line[5:].strip()
                elif line.startswith("Uid:"):
                    out["uid"] = int(line.split()[2])  # effective: the id the kernel checked
            out["exe"] = os.readlink(base / "exe").removesuffix(" (deleted)")
            # Which file it runs, read while it runs (one stat): its package is looked up later, off this thread.
            running = self.owners.running(pid)
            if running is not None:
                self.exe_ids[pid] = running
                if len(self.exe_ids) > 512:
                    self.exe_ids.popitem(last=False)
        except (OSError, ValueError, IndexError):
            pass
        try:
            raw = (base / "cmdline").read_bytes()
            out["cmdline"] = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace") or None
            luid = int((base / "loginuid").read_text())
            out["loginuid"] = None if luid == 0xFFFFFFFF else luid
            if out["loginuid"] is None:
                out["unit"] = read_unit(str(base))
            fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
            out["ppid"] = int(fields[1])
            self.sids[pid] = int(fields[3])
            if len(self.sids) > 512:
                self.sids.popitem(last=False)
            out["start_time"] = self._boot() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        return Process(**out)

    def _boot(self) -> float:
        if self.boot is None:
            for line in (self.root / "stat").read_text().splitlines():
                if line.startswith("btime "):
                    self.boot = float(line.split()[1])
        return self.boot or 0.0


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class FilesCollector:
    """file.create / write / delete / rename / open on the watched paths, with who did it."""

    name = "files"

    def __init__(self, config: Mapping[str, Any] | None, sources: Sources | None = None, *,
                 extra_paths: Iterable[str] = (), media: RemovableMounts | None = None,
                 marker: Marker | None = None, assets: Iterable[str] = (), audit: Any = None,
                 processes: Any = None) -> None:
        self.assets = AssetIndex(assets)
        paths = [*section(config, "paths", []), *extra_paths, *self.assets.roots()]
        self.paths = tuple(dict.fromkeys(os.path.realpath(p) for p in paths))
        self._src = sources = sources or Sources()
        self._media = media
        self._media_subscribed = False  # told by the media collector when mounts change (else looked at often)
        self._marker = marker
        self.health = Health()
        # While the audit collector's watch covers an asset path it reports the operations there, with
        # the kernel's word on who did them; this collector keeps to the rest (one operation, one event).
        self._audit = audit
        self._mark_cache: OrderedDict[tuple[int, ...], tuple[Level | None, str]] = OrderedDict()
        self._rescan_since: float | None = None
        self._proc = _Proc(sources.proc_root, PackageOwners(proc_root=sources.proc_root))
        # Who a process was after it is gone: a file event read after its process exited is named from it.
        self._ledger: PidLedger | None = None
        self._processes = processes  # the process collector, whose ledger is used when it reads process events
        self._gone: dict[int, float] = {}  # pid -> when a record of it found /proc empty (monotonic)
        self.ledger_problem = ""
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=65536)
        self._roots: tuple[str, ...] = ()
        self._media_roots: dict[str, Media] = {}
        self._fan: fan.FanotifyWatcher | None = None
        self._pending: dict[tuple[str, str], _Op] = {}
        self._ready: list[_Op] = []
        self._next_expire = 0.0
        self._recent: dict[str, list[_Who]] = {}
        self._changed: dict[str, float] = {}
        self._opens: dict[tuple[str, int], tuple[float, float, Process, tuple[int, int] | None]] = {}
        self._opened: dict[tuple[str, int], float] = {}
        self.limiter = OpenLimiter()
        self.provenance = Provenance(self.assets)
        self._globs_wanted: tuple[str, ...] | None = None
        self._reindexing: threading.Thread | None = None
        self._next_reindex = 0.0
        self._caught: dict[str, _Op] = {}  # files found by a catch-up scan, held briefly
        self._ns_roots: dict[int, str] = {}  # st_dev of a medium in another mount namespace -> /proc/PID/root
        self._next_report = 0.0
        self._fan_synced = 0.0  # fanotify's records of every operation before this time are in the inbox
        self._missing: list[str] = []  # roots to watch as soon as they exist
        self._ops_after: float | None = None  # what inotify gives now happened after this (monotonic)
        self._asleep = False  # the joining thread waits in poll: a producer rings the bell
        self._bell = -1  # an eventfd the joining thread polls, written when something was queued for it
        self._bell_lock = threading.Lock()

    def available(self) -> Availability:
        """``fanotify`` with who-data when permitted, else ``inotify`` without it."""
        try:
            fan.FanotifyGroup(names=False).close()
        except (CollectorError, OSError) as exc:
            return Availability("inotify", f"no process data for file events: {exc}")
        return Availability("fanotify")

    def watched_roots(self) -> tuple[str, ...]:
        """The directory trees watched now, removable mounts included."""
        return self._roots

    # -- running ---------------------------------------------------------------------------------------------------

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Watch, join and emit until ``stop`` is set; pending operations are sent on the way out."""
        self._open_fanotify()
        self._load_assets()
        marks: queue.Queue[tuple[Event, str] | None] = queue.Queue(maxsize=MARK_QUEUE)
        watcher = TreeWatcher(self._inotify_op, lambda _root: self._lose("watch_error"), on_lost=self._root_lost,
                              on_overflow=lambda: self._lose("inotify_overflow"))
        flushed = threading.Event()  # set after the last flush: the marking worker may then finish
        threads = [threading.Thread(target=self._mark_loop, args=(marks, emit, flushed), name="files-marking",
                                    daemon=True)]
        subscribe = getattr(self._media, "subscribe", None)
        if callable(subscribe) and not self._media_subscribed:
            subscribe(self._wake)  # a stick mounted or gone: follow it at once
            self._media_subscribed = True
        if self._fan is not None:
            threads.append(threading.Thread(target=self._fan.run, args=(stop,), name="files-fanotify", daemon=True))
            ledger = self._open_ledger()
            if ledger is not None:
                threads.append(threading.Thread(target=ledger.run, args=(stop,), name="files-pids", daemon=True))
        bell = self._open_bell()
        poller = select.poll()
        for fd in (watcher.fileno(), bell, stop_fd(stop)):
            if fd is not None:
                poller.register(fd, select.POLLIN)
        for t in threads:
            t.start()
        self.health.up = True
        self._missing = list(self.paths)
        next_retry = 0.0
        read_at = time.monotonic()  # before any watch: whatever inotify reports first happened after it
        self._next_reindex = time.monotonic() + ASSET_REFRESH
        since, self._rescan_since = self._rescan_since, None
        try:
            while not stop.is_set():
                now = time.monotonic()
                for root in self._reindex_due(now):
                    if root not in self._roots and root not in self._missing:
                        self._missing.append(root)
                if self._missing and now >= next_retry:
                    self._missing = [p for p in self._missing if not self._add_root(watcher, p, None)]
                    next_retry = now + 2.0
                self._follow_media(watcher)
                if since is not None and self._marker is not None:
                    threading.Thread(target=self._rescan, args=(since, marks, emit, stop), daemon=True).start()
                    since = None
                # Until an operation, a record or a wake-up comes, or the next deadline.
                due = self._next_due(now)
                held = watcher.due()
                if held is not None:
                    due = min(due, held)
                if self._missing:
                    due = min(due, next_retry)
                wait = max(0.0, due - time.monotonic())
                if stop_fd(stop) is None or (self._media is not None and not self._media_subscribed):
                    wait = min(wait, STOP_POLL)
                inotify = True  # when the inbox has something, no wait and the descriptor is read anyway
                self._asleep = True
                if self._inbox.empty():
                    ready = poller.poll(math.ceil(wait * 1000))
                    inotify = any(fd == watcher.fileno() for fd, _ev in ready)
                self._asleep = False
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(bell)
                # Read before the inbox is drained: the records it vouches for were queued before it was set.
                self._fan_synced = self._fan.synced_at() if self._fan is not None else 0.0
                if inotify:
                    self._ops_after, read_at = read_at, time.monotonic()
                    watcher.read()
                watcher.release()
                while not self._inbox.empty():
                    self._take(self._inbox.get_nowait())
                self._flush(time.monotonic(), emit, marks)
            self._flush(float("inf"), emit, marks)
            self._report_lost(float("inf"), emit)
        finally:
            self._rescan_since = self._src.clock()  # a restart after a failure rescans from here
            self.health.up = False
            watcher.close()
            flushed.set()
            with contextlib.suppress(queue.Full):
                marks.put(None, timeout=5.0)  # ends the marking thread's wait once the queue is worked off
            for t in threads:
                t.join(timeout=0.4)
            if self._fan is not None:
                self._fan.close()
            self._close_bell()

    def _open_fanotify(self) -> None:
        try:
            self._fan = fan.FanotifyWatcher(self._fan_record, self._lose, max_marks=MAX_MARKS)
        except CollectorError as exc:
            log.warning("files: inotify mode, file events carry no process: %s", exc)
            self.health.mode = "inotify"
            return
        self.health.mode = "fanotify"
        if self._fan.names_missing:
            log.warning("files: create/delete/rename carry no process (needs Linux 5.9): %s", self._fan.names_missing)

    def _open_ledger(self) -> PidLedger | None:
        """The ledger of process lives: the process collector's when it reads the kernel's process events
        (one reader of them), else one of its own, whose reader thread is returned."""
        shared = getattr(self._processes, "ledger", None)
        if isinstance(shared, PidLedger) and getattr(self._processes, "health", Health()).mode == "netlink":
            shared.on_new.append(self._proc.forget)
            self._ledger = shared
            return None
        ledger = PidLedger(str(self._src.proc_root), on_new=self._proc.forget)
        problem = ledger.open()
        if problem:
            self.ledger_problem = problem
            log.warning("files: no process events (%s): an operation whose process is gone before it is read "
                        "has no operator", problem)
            return None
        self._ledger = ledger
        return ledger

    def _load_assets(self) -> None:
        """Index every asset file and mark its inode: any name of it is then seen."""
        fan_ = self._fan
        n = self.assets.load(None if fan_ is None else lambda f: fan_.mark_file(f.path))
        if self.assets.overflow:
            self._lose("asset_index_full", "", self.assets.overflow)
        log.info("files: %d asset files indexed by inode", n)

    def set_assets(self, globs: Iterable[str]) -> None:
        """The registry's asset globs changed (a reload): they are indexed anew in the background."""
        self._globs_wanted = tuple(globs)
        self._wake()

    def _wake(self) -> None:
        """End the joining thread's wait now (a reload, a mount): it looks at what changed."""
        self._post(("wake",))

    def _post(self, item: tuple[Any, ...]) -> bool:
        """Queue ``item`` for the joining thread, and ring its bell when it sleeps; False when the inbox is full."""
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            return False
        if self._asleep:
            self._asleep = False
            with self._bell_lock:
                if self._bell >= 0:
                    os.eventfd_write(self._bell, 1)
        return True

    def _open_bell(self) -> int:
        with self._bell_lock:
            self._bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return self._bell

    def _close_bell(self) -> None:
        with self._bell_lock:  # a producer never writes to a closed (or reused) descriptor number
            if self._bell >= 0:
                os.close(self._bell)
            self._bell = -1

    def _root_lost(self, root: str) -> None:
        """A root's watch went away (it was deleted, or its filesystem unmounted): watched again when it is back."""
        if root in self._media_roots:
            return  # the media collector says when it is gone; following it drops the root
        self._roots = tuple(r for r in self._roots if r != root)
        if self._fan is not None:
            self._fan.forget_under(root)
        if root not in self._missing:
            self._missing.append(root)

    def _next_due(self, now: float) -> float:
        """The monotonic time of the joining thread's next deadline (the periodic re-index at the latest)."""
        due = [self._next_reindex]
        due += [op.deadline for op in self._caught.values()]
        due += [op.deadline for op in self._pending.values()]
        if self._ready:  # waiting for a record, or behind an operation on the same path that is
            due.append(min((op.deadline for op in self._ready if op.deadline > now), default=now + WINDOW))
        # An open whose process's life the ledger has yet to read is looked at again shortly.
        due += [t + WINDOW if t + WINDOW > now else now + 0.05 for t, _wall, _proc, _ident in self._opens.values()]
        if self._recent or self._changed or self._opened:
            due.append(self._next_expire)
        if self.limiter.pending():
            due.append(self._next_report)
        return min(due)

    def _reindex_due(self, now: float) -> tuple[str, ...]:
        """Start a background re-index when the globs changed or the periodic one is due; new roots to watch."""
        globs = self._globs_wanted
        if globs is None and now < self._next_reindex:
            return ()
        if self._reindexing is not None and self._reindexing.is_alive():
            return ()
        self._globs_wanted, self._next_reindex = None, now + ASSET_REFRESH
        self._reindexing = threading.Thread(target=self._reindex, args=(globs or self.assets.globs,),
                                            name="files-reindex", daemon=True)
        self._reindexing.start()
        return tuple(os.path.realpath(r) for r in AssetIndex(globs).roots()) if globs is not None else ()

    def _reindex(self, globs: tuple[str, ...]) -> None:
        """Walk the asset trees again into a new index and swap it in: files the operations missed
        (an inotify overflow, a registry change) are known by inode again, and marked."""
        old, fan_ = self.assets, self._fan
        new = AssetIndex(globs, old.max_files)
        new.load(None if fan_ is None else lambda f: old.lookup(f.dev, f.ino) is None and fan_.mark_file(f.path))
        self.assets = self.provenance.assets = new
        if fan_ is not None:
            for f in old.files():
                if new.lookup(f.dev, f.ino) is None and _ident(f.path) == (f.dev, f.ino):
                    fan_.unmark_file(f.path)
        if new.overflow:
            self._lose("asset_index_full", "", new.overflow)
        log.info("files: asset index refreshed, %d files", len(new))

    def _asset_changed(self, path: str) -> None:
        """A create, write or move on ``path``: keep the index (and the inode marks) current."""
        before = self.assets.at(path)
        f = self.assets.refresh(path)
        if f is not None and self._fan is not None and (before is None or (before.dev, before.ino) != (f.dev, f.ino)):
            self._fan.mark_file(path)

    def _lose(self, reason: str, who: str = "", n: int = 1) -> None:
        """Operations not reported: counted in the metric and kept for the next ``agent.degraded``."""
        self.health.drop(reason, n)
        self.limiter.lost(reason, who, n)

    def _report_lost(self, now: float, emit: Emit) -> None:
        if now < self._next_report or not self.limiter.pending():
            return
        self._next_report = now + REPORT_EVERY
        detail = self.limiter.report()
        if detail is not None:
            log.warning("files: %s", detail)
            self._send(Event("agent.degraded", self._src.clock(), self.name, detail=detail), emit)

    def _add_root(self, watcher: TreeWatcher, root: str, media: Media | None) -> bool:
        if not os.path.isdir(root) or not watcher.add(root):
            return False
        if self._fan is not None:
            self._fan.mark_tree(root, whole_mount=media is not None)
        self._roots = (*self._roots, root)
        return True

    def _follow_media(self, watcher: TreeWatcher) -> None:
        if self._media is None:
            return
        now = {m.mount: m for m in self._media.removable_mounts() if m.mount}
        for mount in [m for m in self._media_roots if m not in now]:
            del self._media_roots[mount]
            watcher.remove(mount)
            self._roots = tuple(r for r in self._roots if r != mount)
            self._ns_roots = {d: r for d, r in self._ns_roots.items() if not mount.startswith(r + "/")}
            if self._fan is not None:
                self._fan.forget_under(mount)
        for mount, media in now.items():
            if mount not in self._media_roots and self._add_root(watcher, mount, media):
                self._media_roots[mount] = media
                ns_root = _NS_ROOT.match(mount)
                if ns_root is not None:
                    with contextlib.suppress(OSError):
                        self._ns_roots[os.stat(mount).st_dev] = ns_root.group(0)
                since = getattr(self._media, "mounted_since", lambda _m: None)(mount)
                n = self.catch_up(mount, since if since is not None else self._src.clock() - CATCH_UP_SLACK)
                if n:
                    log.info("files: %d files written on %s before it was watched", n, mount)

    # -- the two streams -------------------------------------------------------------------------------------------

    def _inotify_op(self, op: FsOp) -> None:
        """An operation the watcher read (on this, the joining thread)."""
        self._fs_op(op, time.monotonic(), self._src.clock())

    def _fan_record(self, r: fan.FanRecord, _names: bool) -> None:
        if r.path is None:
            return
        if r.dev is not None and r.dev in self._ns_roots:
            # A medium mounted in another mount namespace: fanotify names the file as that namespace does.
            root = self._ns_roots[r.dev]
            if not r.path.startswith(root + "/"):
                r = fan.FanRecord(r.mask, r.pid, root + r.path, r.dest, r.dev, r.ino, r.pidfd)
        now, me = time.monotonic(), os.getpid()
        # Our own records stay: they tell the joiner to drop our own operations.
        if r.pid == me:
            proc = Process(pid=me)
        elif r.reaped:  # /proc/PID is gone, or another process's by now: only the ledger knows who it was
            proc = self._settle(Process(pid=r.pid), now)
        else:
            proc = self._settle(self._proc.read(r.pid, now), now)
        who = _Who(now, r.mask, proc, r.dest, (r.dev, r.ino) if r.dev is not None and r.ino is not None else None)
        if not self._post(("fan", r.path, who, self._src.clock())):
            self._lose("backlog", _proc_label(who.process))

    def _settle(self, p: Process, seen: float | None = None) -> Process:
        """``p`` as the kernel's process events knew it, when /proc no longer had it (it exited and was reaped).

        A zombie still shows its ids but not its program; those come from the ledger too.
        """
        if p.pid is None or (p.exe is not None and (p.uid is not None or p.loginuid is not None)):
            return p
        if seen is None:
            seen = self._gone.get(p.pid)
            if seen is None:
                return p
        elif p.uid is None and p.loginuid is None:
            self._gone[p.pid] = seen
            if self._ledger is not None and self._ledger.synced_at() <= seen:
                # The ledger may know only the fork of it yet (the parent's program and ids), not the exec and
                # the change of user that followed: asked again once it has read up to ``seen``.
                return p
        known = self._ledger.who(p.pid, seen) if self._ledger is not None else None
        if known is None:
            return p
        if p.uid is None and p.loginuid is None:
            return known._replace(ppid=p.ppid or known.ppid)
        return p._replace(exe=known.exe, name=p.name or known.name)

    def _take(self, item: tuple[Any, ...]) -> None:
        if item[0] == "wake":
            return
        if item[0] == "fan":
            _, path, who, wall = item
            if who.mask & fan.FAN_RENAME:
                self._take_rename(path, who)
                return
            self._recent.setdefault(path, []).append(who)
            mine = who.process.pid == os.getpid()
            if who.mask & fan.FAN_OPEN and not who.mask & fan.FAN_CLOSE_WRITE and not mine:
                self._opens.setdefault((path, who.process.pid), (who.t, wall, who.process, who.ident))
                read = self.assets.lookup(*who.ident) if who.ident is not None else None
                if read is not None:  # what this process, and its session, write to a stick soon comes from it
                    pid = who.process.pid
                    self.provenance.read(pid, self._proc.sids.get(pid or 0), read.path, who.t)
            elif who.mask & fan.FAN_CLOSE_WRITE and not mine and who.ident is not None \
                    and self.assets.lookup(*who.ident) is not None and not any(_under(path, r) for r in self._roots):
                # An asset written through a name inotify does not watch (a hard link, another mount
                # namespace): fanotify's record is all there is.
                self._ready.append(_Op("file.write", path, None, False, who.t, wall, who.t + WINDOW, ident=who.ident))
            return
        _, op, now, wall = item
        self._fs_op(op, now, wall)

    def _take_rename(self, path: str | None, who: _Who) -> None:
        """One rename record, filed under both paths: either side may be outside the watched trees."""
        if path is None or who.peer is None:
            return
        self._recent.setdefault(path, []).append(_Who(who.t, fan.FAN_RENAME | fan.FAN_MOVED_FROM, who.process,
                                                      who.peer))
        self._recent.setdefault(who.peer, []).append(_Who(who.t, fan.FAN_RENAME | fan.FAN_MOVED_TO, who.process,
                                                          path))

    def _fs_op(self, op: FsOp, now: float, wall: float) -> None:
        path, pend = op.path, self._pending
        after = None if self._ops_after is None else min(now, self._ops_after)
        self._caught.pop(path, None)
        if not op.is_dir:
            if op.what in (CREATED, CLOSED):
                self._asset_changed(path)
            elif op.what == MOVED and op.dest:
                before = self.assets.at(op.dest)
                f = self.assets.moved(path, op.dest)
                if f is not None and before is None and f.path == op.dest and self._fan is not None:
                    self._fan.mark_file(op.dest)  # moved in from elsewhere in the watched trees
        if op.what in (MODIFIED, CLOSED):
            self._changed[path] = now
            cur = pend.get(("cw", path))
            if cur is None:
                cur = pend[("cw", path)] = _Op("file.write", path, None, False, now, wall, now, after=after)
            cur.deadline = now + WINDOW if op.what == CLOSED else min(now + QUIET, cur.t0 + HOLD_MAX)
            cur.last = now
            return
        if op.what == MOVED and ("cw", path) in pend:
            pend[("cw", path)].read_path = op.dest  # the content is now found under the new name
        self._due(path)
        if op.what == CREATED:
            self._changed[path] = now
            pend[("cw", path)] = _Op("file.create", path, None, op.is_dir, now, wall,
                                     now + (WINDOW if op.is_dir else QUIET), after=after)
            if op.is_dir and self._fan is not None and self._fan.names is None:
                self._fan.mark_tree(path)
        elif op.what == DELETED:
            pend[("del", path)] = _Op("file.delete", path, None, op.is_dir, now, wall, now + WINDOW, after=after)
        elif op.what == MOVED:
            pend[("mv", path)] = _Op("file.rename", path, op.dest, op.is_dir, now, wall, now + WINDOW, after=after)
            if op.is_dir and op.dest and self._fan is not None:
                self._fan.forget_under(path)
                self._fan.mark_tree(op.dest)

    def _due(self, path: str) -> None:
        """A new operation on ``path``: what was pending for it goes out first, in order."""
        for key in (("cw", path), ("del", path), ("mv", path)):
            op = self._pending.pop(key, None)
            if op is not None:
                op.deadline = 0.0  # due now, however long it meant to wait for more writes
                self._ready.append(op)

    # -- joining and sending ---------------------------------------------------------------------------------------

    def _await_who(self, op: _Op, now: float) -> bool:
        """Whether ``op`` should wait longer for fanotify's record (and it now does).

        A busy machine can hold the record back. Without it the operation has
        no process, and one of the agent's own would be reported.
        """
        if self._fan is None or op.waits >= MAX_WAITS or now == float("inf"):
            return False
        who = self._join(op)
        if who is not None:
            if not self._ledger_behind(who):
                return False
        elif self._fan_synced > max(op.t0, op.last) and op.waits:
            return False  # every record of what happened before it is in: its record will not come
        op.waits, op.deadline = op.waits + 1, now + 2 * WINDOW
        return True

    def _has_who(self, op: _Op) -> bool:
        who = self._join(op)
        return who is not None and not self._ledger_behind(who)

    def _ledger_behind(self, who: Process) -> bool:
        """``who`` was gone from /proc and the ledger has not yet read the process events up to then."""
        if who.uid is not None or who.loginuid is not None or who.pid is None or self._ledger is None:
            return False
        seen = self._gone.get(who.pid)
        return seen is not None and self._ledger.synced_at() <= seen

    def _flush(self, now: float, emit: Emit, marks: queue.Queue[tuple[Event, str] | None]) -> None:
        # Operations that a later one on their path made due wait for their record like the rest; a path's
        # later operations wait behind them, so that they still go out in order.
        held: set[str] = set()
        for path, op in list(self._caught.items()):
            if op.deadline <= now:
                del self._caught[path]
                op.deadline = 0.0
                self._ready.append(op)
        ready, self._ready = self._ready, []
        due = []
        for op in sorted(ready, key=lambda o: o.t0):
            # Waiting ends when the record comes, or when the waits run out.
            waiting = not self._has_who(op) if op.deadline > now else self._await_who(op, now)
            if waiting or op.path in held:
                held.add(op.path)
                self._ready.append(op)
            else:
                due.append(op)
        for op in [op for op in self._pending.values() if op.deadline <= now]:
            if self._await_who(op, now) or op.path in held:
                continue
            del self._pending[(_slot(op.kind), op.path)]
            due.append(op)
        due.sort(key=lambda o: o.t0)
        me = os.getpid()
        for op in due:
            who = self._join(op)
            if who is not None and who.pid == me:
                continue
            kind, path, dest = op.kind, op.path, op.dest
            crossing = self._crossing(op) if kind in ("file.create", "file.delete") else None
            if crossing is not None:
                kind, (path, dest) = "file.rename", crossing
                self.assets.moved(path, dest)
            elif kind == "file.delete" and not op.is_dir:
                self.assets.forget(path)
            event = self._build(kind, path, dest, op.wall, who, op.ident)
            if event.file.on_removable and kind in ("file.create", "file.write") and not op.is_dir:
                event = self._trace(event, op.read_path or path, now)
            if self._marker is not None and op.kind in ("file.create", "file.write") and not op.is_dir:
                self._to_mark(event, op.read_path or op.path, marks, emit)
                continue
            if self._marker is not None and kind == "file.rename" and dest and not op.is_dir:
                self._to_mark(event, dest, marks, emit)  # the document under its new name (a move out of place)
                continue
            self._send(event, emit)
        self._flush_opens(now, emit, marks)
        self._report_lost(now, emit)
        if now >= self._next_expire:
            self._expire(now)
            self._next_expire = now + 1.0

    def _flush_opens(self, now: float, emit: Emit, marks: queue.Queue[tuple[Event, str] | None]) -> None:
        for key, (t, wall, proc, ident) in list(self._opens.items()):
            if t + WINDOW > now or (t + HOLD_MAX > now and self._ledger_behind(proc)):
                continue
            del self._opens[key]
            path = key[0]
            if self._changed.get(path, -1e9) >= t - WINDOW or self._opened.get(key, -1e9) > t - HOLD_MAX:
                continue  # part of a create or write, or the same process reopening
            self._opened[key] = t
            # The limit is per process, and never holds back an asset: a flood elsewhere blinds nothing.
            asset = (ident is not None and self.assets.lookup(*ident) is not None) or self.assets.covers(path)
            if not asset and not self.limiter.allow(proc.pid, t):
                self._lose("open_rate", _proc_label(proc))
                continue
            event = self._build("file.open", path, None, wall, proc, ident)
            if self._marker is not None:
                self._to_mark(event, path, marks, emit)  # a marked document read above a clearance
            else:
                self._send(event, emit)

    def _trace(self, event: Event, path: str, now: float) -> Event:
        """A write to removable media, with the asset it came from: what its writer read, else its content."""
        pid = event.process.pid
        source = self.provenance.recent(pid, self._proc.sids.get(pid or 0), min(now, time.monotonic()))
        digest = None
        if source is None:
            digest, source = self.provenance.content(path)
        if source is None and digest is None:
            return event
        return event._replace(file=event.file._replace(source_path=source or event.file.source_path, sha256=digest))

    def catch_up(self, mount: str, since: float) -> int:
        """Files on a just-mounted medium changed at or after ``since`` (wall clock): written before the
        watches were in place (a copy made the instant ``mount`` returned). Each goes out as a
        ``file.create`` with no process, through the same content checks; how many were found."""
        found = 0
        for entry in _files_under(mount):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            changed = max(st.st_mtime, st.st_ctime)
            if changed < since - CATCH_UP_SLACK or entry.path in self._changed or ("cw", entry.path) in self._pending:
                continue
            found += 1
            # Held for a moment: a file the new watches saw being written goes out from there, with its writer.
            t0 = time.monotonic()
            self._caught[entry.path] = _Op("file.create", entry.path, None, False, t0, changed, t0 + 2 * WINDOW,
                                           waits=MAX_WAITS, ident=(st.st_dev, st.st_ino))
        return found

    def _crossing(self, op: _Op) -> tuple[str, str] | None:
        """(old, new) when a delete (create) inotify saw was a move out of (into) the watched trees."""
        want = fan.FAN_MOVED_FROM if op.kind == "file.delete" else fan.FAN_MOVED_TO
        for w in reversed(self._recent.get(op.path, ())):
            if w.mask & fan.FAN_RENAME and w.mask & want and w.peer and w.t >= op.t0 - WINDOW - MOVE_DELAY:
                return (op.path, w.peer) if op.kind == "file.delete" else (w.peer, op.path)
        return None

    def _join(self, op: _Op) -> Process | None:
        primary, fallback = _WANT[op.kind]
        back = WINDOW + MOVE_DELAY if op.kind == "file.delete" else WINDOW
        # Held up (a busy machine), this thread took the operation long after the fanotify reader took its record.
        wide = back if op.after is None else max(back, op.t0 - op.after)
        who = self._who(op.path, primary, op.t0, wide)
        if who is None and op.dest:
            who = self._who(op.dest, fallback, op.t0, wide)
        if who is None and fallback and not op.dest:
            who = self._who(op.path, fallback, op.t0, wide)
        return who

    def _who(self, path: str, mask: int, t0: float, back: float = WINDOW) -> Process | None:
        for w in reversed(self._recent.get(path, ())):
            if w.mask & mask and w.t >= t0 - back:
                return w.process
        return None

    def _build(self, kind: str, path: str, dest: str | None, wall: float, who: Process | None,
               ident: tuple[int, int] | None = None) -> Event:
        if who is not None and who.exe is not None and who.package is None and kind != "file.open":
            # What the writer's program is, for the package manager's exemption: the file it ran (read by
            # the fanotify reader while it ran) looked up here, on the joining thread: a first search of the
            # package database takes tens of ms, and the fanotify reader must not wait for it.
            running = self._proc.exe_ids.get(who.pid) if who.pid is not None else None
            who = who._replace(package=self._proc.owners.of(who.exe, running))
        media = self._media.removable_mount_for(dest or path) if self._media is not None else None
        on_removable = None if self._media is None else media is not None
        if ident is None and kind != "file.delete":
            try:
                st = os.stat(dest or path, follow_symlinks=False)
                ident = (st.st_dev, st.st_ino)
            except OSError:
                pass
        asset = self.assets.lookup(*ident) if ident is not None else None
        # Reached by another name than the registered one: say which asset it is.
        source = asset.path if asset is not None and asset.path not in (path, dest) else None
        f = File(path=path, dest_path=dest, on_removable=on_removable, source_path=source,
                 device=device_name(ident[0]) if ident is not None else None,
                 inode=ident[1] if ident is not None else None)
        if who is not None and who.uid is None and who.loginuid is None:
            who = self._settle(who)
        return Event(kind, wall, self.name, process=who or Process(), file=f, media=media or Media(),
                     detail=self._unknown_why(who))

    def _unknown_why(self, who: Process | None) -> str | None:
        """Why an operation names no one (its operator is then unknown, never silently missing), or None."""
        if who is not None and (who.uid is not None or who.loginuid is not None):
            return None
        if self._fan is None:
            return "operator unknown: no process data for file events (inotify mode)"
        if who is None or who.pid is None:
            return "operator unknown: the kernel's record of the process did not come in time"
        why = f"operator unknown: process {who.pid} was gone before it could be read"
        if self._ledger is None:
            return f"{why}, and the kernel's process events are not available ({self.ledger_problem or 'off'})"
        return f"{why}, and the kernel's process events had no record of it"


    def _send(self, event: Event, emit: Emit) -> None:
        if self._audit is not None and event.file.source_path is None and self._audit.covers_path(event.file.path) \
                and (event.file.dest_path is None or self._audit.covers_path(event.file.dest_path)):
            return
        self.health.saw(event.time or 0.0)
        emit(event)

    def _expire(self, now: float) -> None:
        horizon = now - HOLD_MAX - 2 * WINDOW
        for path, whos in list(self._recent.items()):
            kept = [w for w in whos if w.t >= horizon]
            if kept:
                self._recent[path] = kept[-8:]
            else:
                del self._recent[path]
        self._changed = {k: t for k, t in self._changed.items() if t >= horizon}
        self._gone = {k: t for k, t in self._gone.items() if t >= horizon}
        self._opened = {k: t for k, t in self._opened.items() if t >= horizon}

    # -- marking, off the event path -------------------------------------------------------------------------------

    def rescan_after(self, since: float) -> None:
        """Monitoring was down since ``since`` (epoch s): the next run walks the watched trees for changes."""
        self._rescan_since = since

    def _to_mark(self, event: Event, path: str, marks: queue.Queue[tuple[Event, str] | None], emit: Emit) -> None:
        try:
            marks.put_nowait((event, path))
        except queue.Full:
            self.health.skip_marking("queue_full")
            self._send(event._replace(file=event.file._replace(marking_status="unscanned")), emit)

    def _mark_loop(self, marks: queue.Queue[tuple[Event, str] | None], emit: Emit, flushed: threading.Event) -> None:
        while True:
            item = marks.get()  # None: the collector stopped and this is the end of the queue
            if item is None:
                return
            batch, end = [item], False
            while len(batch) < MARK_BATCH:  # a burst goes to the worker together: one hand-over, not one per file
                try:
                    more = marks.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    end = True
                    break
                batch.append(more)
            for (event, _path), (level, status) in zip(batch, self._safe_mark([p for _, p in batch]), strict=True):
                self._send(event._replace(file=event.file._replace(marking=level, marking_status=status)), emit)
            if end:
                return

    def _safe_mark(self, paths: list[str]) -> list[tuple[Level | None, str | None]]:
        """Mark regular files only where they really are under a watched root (no symlink escapes).

        The files of one call that need a scan are opened first and go to
        the marker together (its ``many``, where it has one)."""
        assert self._marker is not None
        out: list[tuple[Level | None, str | None]] = [(None, None)] * len(paths)
        todo: list[tuple[int, int, str, tuple[int, int, int, int, int]]] = []  # (index, fd, real path, cache key)
        try:
            for i, path in enumerate(paths):
                opened = self._open_to_mark(path)
                if opened is None:
                    continue
                fd, real, key = opened
                hit = self._mark_cache.get(key)
                if hit is not None:
                    os.close(fd)
                    self._mark_cache.move_to_end(key)
                    out[i] = hit
                    continue
                todo.append((i, fd, real, key))
            if not todo:
                return out
            # The scan reads these descriptors: a path cannot be swapped under it.
            many = getattr(self._marker, "many", None)
            try:
                if many is not None:
                    results = list(many([(real, fd) for _, fd, real, _ in todo]))
                else:
                    results = [self._marker(real, fd) for _, fd, real, _ in todo]
            except Exception:  # a bad document must not stop the collector
                log.exception("files: marking %s failed", ", ".join(real for _, _, real, _ in todo))
                for i, *_ in todo:
                    out[i] = (None, "unscanned")
                return out
            for (i, _fd, real, key), result in zip(todo, results, strict=True):
                if result.status == "unscanned":
                    self.health.skip_marking("timeout" if "time limit" in result.reason else "worker")
                    log.warning("files: %s sent unscanned: %s", real, result.reason)
                self._mark_cache[key] = (result.level, result.status)
                if len(self._mark_cache) > MARK_CACHE:
                    self._mark_cache.popitem(last=False)
                out[i] = (result.level, result.status)
            return out
        finally:
            for _, fd, _, _ in todo:
                os.close(fd)

    def _open_to_mark(self, path: str) -> tuple[int, str, tuple[int, int, int, int, int]] | None:
        """(descriptor, real path, cache key) of a regular file under a watched root, else None."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                real = os.readlink(f"/proc/self/fd/{fd}")
                if any(_under(real, r) for r in self._roots):
                    # ctime too: a user can set mtime back after changing the content, never ctime.
                    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    return fd, real, key
        except OSError:
            pass
        os.close(fd)
        return None

    def _rescan(self, since: float, marks: queue.Queue[tuple[Event, str] | None], emit: Emit,
                stop: threading.Event) -> None:
        """Send every file under the watched roots changed since ``since`` through the marking scan."""
        seen = found = 0
        stack = list(self._roots)
        detail = f"changed while monitoring was down (since {since:.0f})"
        while stack and not stop.is_set() and seen < RESCAN_MAX:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                seen += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if max(st.st_mtime, st.st_ctime) < since:
                    continue
                found += 1
                event = self._build("file.write", entry.path, None, self._src.clock(), None)._replace(detail=detail)
                while not stop.is_set():
                    try:
                        marks.put((event, entry.path), timeout=0.5)  # a rescan waits for room; it is no hurry
                        break
                    except queue.Full:
                        continue
        if seen >= RESCAN_MAX:
            log.warning("files: rescan after the gap stopped at %d entries", seen)
        log.info("files: rescan after the gap: %d of %d entries changed since %.0f", found, seen, since)


def _ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _files_under(top: str) -> Iterable[os.DirEntry[str]]:
    """Every regular file below ``top``, not following symlinks (one filesystem: a medium)."""
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        yield e
        except OSError:
            continue


def _proc_label(p: Process) -> str:
    return f"pid {p.pid} ({p.name or '?'})"


def _slot(kind: str) -> str:
    return {"file.delete": "del", "file.rename": "mv"}.get(kind, "cw")
