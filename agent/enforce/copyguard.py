"""The copy guard: fanotify permission events deny a classified document's way onto a stick it may not go to.

Two opens are judged, each the moment the kernel asks (``FAN_OPEN_PERM``):

- an open of a registered classified asset by a process that holds a file
  open for writing on a guarded stick (the copy's destination already open);
- an open of a file on a guarded stick by a process that holds a classified
  asset open (``cp`` opens its source, then its destination), or that opened
  one in the last ``READ_WINDOW`` seconds (read into memory, closed, then written).

A stick is guarded when it is unregistered, or registered below the asset's
level. Everything else is allowed at once. A decision reads only ``/proc`` of
the one process (its descriptors, at most ``MAX_FDS``; past that it is allowed
and the gap counted); it never waits on a file the kernel is asked about. If the
agent dies, the kernel answers every waiting and later open itself (allow):
the desktop never freezes.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.levels import Level
from agent.registry import Asset

_log = logging.getLogger("dutywatch.enforce.copy")
FAN_CLASS_CONTENT = 0x4
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_FILESYSTEM = 0x100
FAN_OPEN_PERM = 0x10000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ALLOW, FAN_DENY = 0x01, 0x02
_META = struct.Struct("=IBBHQii")
_RESPONSE = struct.Struct("=iI")
MAX_FDS = 4096
READ_WINDOW = 120.0  # as the files collector's provenance: a read this recent makes a write a copy
MAX_READERS = 10000


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


class CopyGuard:
    """See the module docstring. ``sticks`` gives the removable mounts now; ``report`` gets each denial."""

    def __init__(self, assets: Iterable[Asset], sticks: Callable[[], list[Stick]],
                 report: Callable[[Decision], None], *, dryrun: bool = False,
                 proc_root: Path = Path("/proc"), hold: float = 0.0) -> None:
        self.assets = tuple(assets)
        self.sticks_now = sticks
        self.report = report
        self.dryrun = dryrun
        self.proc_root = proc_root
        self.hold = hold  # tests only: wait this long before answering (to kill the agent mid-decision)
        self.fd = -1
        self._marked_mounts: set[str] = set()
        self._sticks: list[Stick] = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.decided = 0
        self.denied = 0
        self.gaps = 0  # decisions made without reading all of a process's descriptors
        self.timings: list[float] = []  # seconds per decision (bench)
        # pid -> (process start time, when it last opened an asset, that asset): the recent readers
        self._readers: dict[int, tuple[str, float, str, Level]] = {}
        lib = ctypes.CDLL(None, use_errno=True)
        self._init, self._mark = lib.fanotify_init, lib.fanotify_mark
        self._init.argtypes = (ctypes.c_uint, ctypes.c_uint)
        self._mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p)

    # -- marks -------------------------------------------------------------------
    def start(self) -> None:
        """Open the group, mark every asset directory and the guarded sticks, and start answering."""
        fd = self._init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init (permission events): {os.strerror(err)}")
        self.fd = fd
        for a in self.assets:
            top = a.prefix if os.path.isdir(a.prefix) else os.path.dirname(a.prefix)
            for d, _, _ in os.walk(top):
                self._mark_path(d, FAN_MARK_ADD)
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="copy-guard", daemon=True)
        self._thread.start()

    def _mark_path(self, path: str, flags: int) -> bool:
        mask = FAN_OPEN_PERM | (0 if flags & FAN_MARK_FILESYSTEM else FAN_EVENT_ON_CHILD)
        if self._mark(self.fd, flags, mask, -100, os.fsencode(path)) < 0:
            _log.warning("copy guard: cannot mark %s: %s", path, os.strerror(ctypes.get_errno()))
            return False
        return True

    def refresh(self) -> None:
        """Mark new removable media (every one: a registered stick may still be below an asset's level).

        The mark is on the stick's filesystem, not the mount: a bind mount of it, or its mount
        in another mount namespace (``unshare -m``, a container), is the same filesystem.
        """
        sticks = self.sticks_now()
        now = {s.mount for s in sticks}
        for s in sticks:
            if s.mount not in self._marked_mounts and self._mark_path(s.mount, FAN_MARK_ADD | FAN_MARK_FILESYSTEM):
                self._marked_mounts.add(s.mount)
        self._marked_mounts &= now  # an unmounted stick's mark went with its mount
        self._sticks = sticks

    def stop(self) -> None:
        """Stop answering and close the group (the kernel allows whatever is still waiting)."""
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    # -- answering -----------------------------------------------------------------
    def _run(self) -> None:
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        poll.register(self._stop_r, select.POLLIN)
        last = time.monotonic()
        while True:
            ready = {fd for fd, _ in poll.poll(1000)}
            if self._stop_r in ready:
                return
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                try:
                    self.refresh()
                except OSError as exc:
                    _log.warning("copy guard: cannot read the mounts: %s", exc)
            if self.fd in ready:
                self._drain()

    def _drain(self) -> None:
        try:
            buf = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        off = 0
        while off + _META.size <= len(buf):
            length, _, _, _, mask, fd, pid = _META.unpack_from(buf, off)
            off += max(length, _META.size)
            if fd < 0:
                continue
            t0 = time.perf_counter()
            try:
                decision = self.decide(fd, pid) if mask & FAN_OPEN_PERM else None
            except Exception:  # a bug must cost one decision (allowed), never an open left waiting
                _log.exception("copy guard: judging an open failed; allowed")
                decision = None
            if self.hold:
                time.sleep(self.hold)
            deny = decision is not None and decision.deny and not self.dryrun
            try:
                os.write(self.fd, _RESPONSE.pack(fd, FAN_DENY if deny else FAN_ALLOW))
            finally:
                os.close(fd)
            self.timings.append(time.perf_counter() - t0)
            self.decided += 1
            if decision is not None and decision.deny:
                self.denied += 1
                try:
                    self.report(decision)
                except Exception:
                    _log.exception("copy guard: reporting a denial failed")

    def decide(self, fd: int, pid: int) -> Decision | None:
        """Judge one open of the file behind ``fd`` by process ``pid``; None when nothing is at stake."""
        path = os.readlink(f"/proc/self/fd/{fd}")
        dev = os.fstat(fd).st_dev
        stick = next((s for s in self._sticks if s.dev == dev), None) or self._stick_of(path)
        if stick is not None:
            held = self._held(pid, want_write=False)
            for p in held:
                asset = self._asset(p)
                if asset is not None and _below(stick, asset.level):
                    return Decision(True, pid, path, p, asset.level, stick,
                                    f"the process holds {p} ({asset.level}) open")
            seen = self._readers.get(pid)
            if seen is not None and seen[0] == self._start(pid) and time.monotonic() - seen[1] < READ_WINDOW \
                    and _below(stick, seen[3]):
                return Decision(True, pid, path, seen[2], seen[3], stick,
                                f"the process read {seen[2]} ({seen[3]}) {time.monotonic() - seen[1]:.0f} s ago")
            return None
        asset = self._asset(path)
        if asset is None:
            return None
        self._remember(pid, path, asset.level)
        if not any(_below(s, asset.level) for s in self._sticks):
            return None  # no stick it could go to: nothing of the process to read
        for p in self._held(pid, want_write=True, keep=self._stick_of):
            s = self._stick_of(p)
            if s is not None and _below(s, asset.level):
                return Decision(True, pid, path, path, asset.level, s, f"the process holds {p} open for writing")
        return None

    def _start(self, pid: int) -> str:
        """A process's start time (field 22 of stat): a pid reused by another process is not the reader."""
        try:
            return (self.proc_root / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return ""

    def _remember(self, pid: int, path: str, level: Level) -> None:
        if len(self._readers) >= MAX_READERS:
            cutoff = time.monotonic() - READ_WINDOW
            self._readers = {k: v for k, v in self._readers.items() if v[1] >= cutoff}
            if len(self._readers) >= MAX_READERS:
                self._readers.pop(next(iter(self._readers)))
        self._readers[pid] = (self._start(pid), time.monotonic(), path, level)

    def _stick_of(self, path: str) -> Stick | None:
        for s in self._sticks:
            if path == s.mount or path.startswith(s.mount.rstrip("/") + "/"):
                return s
        return None

    def _asset(self, path: str) -> Asset | None:
        best = None
        for a in self.assets:
            if a.pattern.match(path) and (best is None or a.level > best.level):
                best = a
        return best

    def _held(self, pid: int, *, want_write: bool, keep: Callable[[str], object] | None = None) -> list[str]:
        """Paths process ``pid`` holds open (only those open for writing with ``want_write``, only those
        ``keep`` likes when given: the flags are read for those alone)."""
        base = self.proc_root / str(pid)
        out = []
        try:
            names = os.listdir(base / "fd")
        except OSError:
            return []
        if len(names) > MAX_FDS:
            self.gaps += 1
            names = names[:MAX_FDS]
        for n in names:
            try:
                target = os.readlink(base / "fd" / n)
            except OSError:
                continue
            if not target.startswith("/") or (keep is not None and not keep(target)):
                continue
            if want_write:
                try:
                    flags = int((base / "fdinfo" / n).read_text().split("flags:", 1)[1].split()[0], 8)
                except (OSError, IndexError, ValueError):
                    continue
                if flags & os.O_ACCMODE == os.O_RDONLY:
                    continue
            out.append(target)
        return out


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


def operator_of(pid: int, registry: Any, proc_root: Path = Path("/proc")) -> str | None:
    """The person behind a process: its login uid, else its uid, by the registry's people."""
    uid = None
    with contextlib.suppress(OSError, ValueError):
        uid = int((proc_root / str(pid) / "loginuid").read_text().strip())
    if uid is None or uid == 4294967295:
        try:
            uid = os.stat(proc_root / str(pid)).st_uid
        except OSError:
            return None
    for p in registry.people:
        if p.uid == uid:
            return str(p.name)
    return f"uid {uid}"
