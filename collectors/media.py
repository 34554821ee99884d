"""Removable media: mounts and unmounts from /proc/self/mountinfo, woken by the kernel.

The kernel marks the mountinfo file with POLLPRI|POLLERR whenever the mount
table of our namespace changes (util-linux's libmount waits the same way),
so the collector sleeps in poll() and rereads the table only when woken.

A mount is removable when its block device says so in sysfs (its own or its
disk's ``removable`` flag, or a device path through a USB bus), or when it
sits under one of the configured media roots and is backed by a block
device (a loop-mounted image under /media counts, which is how tests stand
in for a USB stick). Its serial is, in order: a ``serial`` file on the
device's sysfs path, udev's ``ID_SERIAL_SHORT``, and else the filesystem's
volume id read from the superblock (ext2/3/4 UUID, FAT/exFAT/NTFS serial).

A medium's identity is the device and the filesystem together: the USB
device's serial and vendor:product ids (the sysfs node that has
``idVendor``), or the block device's own serial, and the volume id, which is
always read from the superblock (``media.uuid``). Anyone can format a stick
with a registered stick's volume id; no one can give it that stick's device.

Mounts made in other mount namespaces are seen too (``collectors.mountns``):
a device not already mounted here is reported with its mount point as the
agent reaches it (``/proc/PID/root/...``), and the event's detail names the
namespace. A namespace that merely copied our mounts adds nothing.

No thread of its own: it shares the agent's collector loop (``collectors.loop``), which waits
on our mountinfo, each foreign namespace's mountinfo (EPOLLPRI: the table changed) and the
sweep hint, with a timer only until the next idle sweep. A mount's scan is a few sysfs reads
and one superblock read; the files collector's catch-up it triggers runs on the files
collector's own thread (it is only woken from here), so the loop is never held for long.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import select
import stat
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.events import Event, Media
from collectors.base import Availability, Emit, Health, Sources, section
from collectors.loop import Loop, Timer, run_alone
from collectors.mountns import SWEEP_EVERY, SWEEP_IDLE, Namespace, Namespaces

log = logging.getLogger(__name__)

DEFAULT_ROOTS = ("/media", "/run/media", "/mnt")
_MOUNTS_CHANGED = select.EPOLLPRI | select.EPOLLERR  # a mount table is always readable (EPOLLIN): never ask for it
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo: the fields this collector uses."""

    mount_id: int
    major: int
    minor: int
    mount: str
    fs: str
    source: str


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What sysfs and udev say about a block device."""

    removable: bool = False
    usb: bool = False
    serial: str | None = None
    usb_serial: str | None = None
    vendor: str | None = None
    product: str | None = None


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text; malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        parts = line.split(" ")
        try:
            sep = parts.index("-", 6)
            major, minor = (int(x) for x in parts[2].split(":"))
            out.append(Mount(int(parts[0]), major, minor, _unescape(parts[4]), parts[sep + 1],
                             _unescape(parts[sep + 2])))
        except (ValueError, IndexError):
            continue
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def device_facts(sys_root: Path, udev_root: Path, major: int, minor: int) -> DeviceFacts:
    """Removable flag, USB path and serial of block device ``major:minor``."""
    link = sys_root / "dev" / "block" / f"{major}:{minor}"
    try:
        dev = link.resolve(strict=True)
    except OSError:
        return DeviceFacts()
    disk = dev.parent if (dev / "partition").exists() else dev
    removable = _read(dev / "removable") == "1" or _read(disk / "removable") == "1"
    devices = sys_root.resolve() / "devices"
    try:
        rel = dev.relative_to(devices).parts
    except ValueError:
        rel = dev.parts
    usb = any(p.startswith("usb") for p in rel)
    serial = usb_serial = vendor = product = None
    here = dev
    while here != devices and devices in here.parents:
        if serial is None:
            serial = _read(here / "serial") or _read(here / "device" / "serial") or None
        if (here / "idVendor").exists():  # the USB device itself
            vendor, product = _read(here / "idVendor"), _read(here / "idProduct")
            usb_serial = _read(here / "serial") or None
            break
        here = here.parent
    if not serial:
        serial = _udev_serial(udev_root / f"b{major}:{minor}")
    return DeviceFacts(removable, usb, serial or None, usb_serial, vendor or None, product or None)


def _udev_serial(path: Path) -> str | None:
    text = _read(path)
    for line in (text or "").splitlines():
        if line.startswith("E:ID_SERIAL_SHORT="):
            return line.split("=", 1)[1] or None
    return None


def volume_id(device: str) -> str | None:
    """The filesystem's own id from its superblock (blkid's UUID), or None."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            return None
        head = os.pread(fd, 2048, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return volume_id_of(head)


def volume_id_of(head: bytes) -> str | None:
    """Decode the volume id from the first 2 KiB of a filesystem image."""
    if len(head) >= 2048 and head[1024 + 0x38: 1024 + 0x3A] == b"\x53\xef":
        return str(uuid.UUID(bytes=head[1024 + 0x68: 1024 + 0x78]))
    if len(head) < 512:
        return None
    if head[3:11] == b"EXFAT   ":
        return _serial32(head, 100)
    if head[3:11] == b"NTFS    ":
        return f"{struct.unpack_from('<Q', head, 0x48)[0]:016X}"
    if head[82:90] == b"FAT32   ":
        return _serial32(head, 67)
    if head[54:57] == b"FAT":
        return _serial32(head, 39)
    return None


def _serial32(head: bytes, off: int) -> str:
    v = struct.unpack_from("<I", head, off)[0]
    return f"{v >> 16:04X}-{v & 0xFFFF:04X}"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class MediaCollector:
    """Emits media.mount / media.unmount and keeps the table of removable mounts."""

    name = "media"

    def __init__(self, config: Mapping[str, Any] | None, sources: Sources | None = None,
                 udev_root: Path = Path("/run/udev/data"), audit: Any = None) -> None:
        self._sources = sources or Sources()
        self._audit = audit  # the kernel audit collector: who made a mount, from its record
        self._udev_root = udev_root
        roots: Iterable[str] = section(config, "roots", DEFAULT_ROOTS)
        self.roots = tuple(os.path.realpath(r) for r in roots)
        self.health = Health()
        self._table: dict[int, Media] = {}
        self._known: dict[int, Media | None] = {}
        self._foreign: dict[int, dict[int, Media | None]] = {}  # namespace inode -> its mounts, judged
        self._since: dict[str, float] = {}  # mount point -> when the mount was first seen (wall clock)
        self._lock = threading.Lock()
        self._namespaces: Namespaces | None = None
        self._listeners: list[Callable[[], None]] = []  # told when the table of removable mounts changed
        # While attached to a loop: our mount table, the loop, where events go, the descriptors followed
        # beside it (sweep hint, foreign tables), the next turn, and the sweep bookkeeping.
        self._fd: int | None = None
        self._loop: Loop | None = None
        self._emit: Emit | None = None
        self._watched: set[int] = set()
        self._timer: Timer | None = None
        self._last_sweep = self._last_looked = -SWEEP_IDLE
        self._swept_at: float | None = None

    @property
    def _mountinfo(self) -> Path:
        return self._sources.proc_root / "self" / "mountinfo"

    def available(self) -> Availability:
        """Runs wherever mountinfo can be read."""
        try:
            with open(self._mountinfo, "rb"):
                pass
        except OSError as exc:
            return Availability(None, f"{self._mountinfo}: {exc.strerror}")
        return Availability("mountinfo")

    def removable(self, m: Mount, root: str = "") -> Media | None:
        """The medium behind mount ``m`` (of the namespace whose ``/`` is ``root``), or None when not removable."""
        block = m.major != 0 or m.source.startswith("/dev/")
        if not block:
            return None
        facts = device_facts(self._sources.sys_root, self._udev_root, m.major, m.minor)
        under_root = any(_under(m.mount, r) for r in self.roots)
        if not (under_root or facts.removable or facts.usb):
            return None
        fs_id = volume_id(m.source) if m.source.startswith("/dev/") else None
        return Media(device=m.source, mount=root + m.mount if root else m.mount, fs=m.fs,
                     serial=facts.serial or fs_id, vendor=facts.vendor, product=facts.product,
                     usb_serial=facts.usb_serial, uuid=fs_id)

    def removable_mounts(self) -> tuple[Media, ...]:
        """The removable media mounted now (a snapshot)."""
        with self._lock:
            return tuple(self._table.values())

    def mounted_since(self, mount: str) -> float | None:
        """When the medium at ``mount`` was first seen mounted (wall clock), or None."""
        with self._lock:
            return self._since.get(mount)

    def removable_mount_for(self, path: str) -> Media | None:
        """The removable medium holding ``path`` (deepest mount wins), or None."""
        best: Media | None = None
        for media in self.removable_mounts():
            mnt = media.mount or ""
            if _under(path, mnt) and (best is None or len(mnt) > len(best.mount or "")):
                best = media
        return best

    def scan(self, text: str, ns: Namespace | None = None, since: float | None = None) -> list[Event]:
        """Update the table from mountinfo ``text`` (of namespace ``ns``, else ours); the events for what changed.

        ``since`` is the earliest time a new mount may have been made (wall clock; default: now),
        from which the files collector's catch-up looks for files written to it.
        """
        mounts = {m.mount_id: m for m in parse_mountinfo(text)}
        events: list[Event] = []
        before = self._known if ns is None else self._foreign.get(ns.ino, {})
        known: dict[int, Media | None] = {}
        # A namespace that copied our mounts (unshare -m, a service's private namespace) holds the same
        # devices: only a device mounted nowhere else is news.
        elsewhere = set() if ns is None else {m.device for mid, m in self._table.items() if mid not in before}
        for mid, m in mounts.items():
            if mid in before:
                known[mid] = before[mid]
                continue
            # Each mount is judged once: a busy container host has many mounts.
            media = self.removable(m, ns.root if ns is not None else "")
            if media is not None and ns is not None and media.device in elsewhere:
                media = None
            known[mid] = media
            if media is not None:
                detail = None if ns is None else \
                    f"mounted at {m.mount} in another mount namespace (mnt:[{ns.ino}], pid {ns.pid})"
                events.append(Event("media.mount", self._sources.clock(), self.name, media=media, detail=detail))
        for mid, gone in before.items():
            if mid not in mounts and gone is not None:
                events.append(Event("media.unmount", self._sources.clock(), self.name, media=gone))
        if ns is None:
            self._known = known
        else:
            self._foreign[ns.ino] = known
        self._publish(since)
        return events

    def forget(self, ns: Namespace) -> list[Event]:
        """Namespace ``ns`` is gone: its media were unmounted with it."""
        gone = self._foreign.pop(ns.ino, {})
        self._publish()
        return [Event("media.unmount", self._sources.clock(), self.name, media=m) for m in gone.values() if m]

    def _publish(self, since: float | None = None) -> None:
        seen = self._sources.clock() if since is None else since
        table = {mid: m for mid, m in self._known.items() if m is not None}
        for mounts in self._foreign.values():
            table.update((mid, m) for mid, m in mounts.items() if m is not None)
        with self._lock:
            self._table = table
            mounts_now = {m.mount for m in table.values() if m.mount}
            changed = mounts_now != set(self._since)
            self._since = {m: self._since.get(m, seen) for m in mounts_now}
        if changed:
            for tell in self._listeners:
                tell()

    def subscribe(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` (from the media thread) whenever the removable mounts change: the files collector."""
        self._listeners.append(changed)

    def sweep_now(self, pid: int | None = None) -> None:
        """A hook for sources that see programs run or mounts made: look at ``pid``'s namespace (else all) soon."""
        if self._namespaces is not None:
            self._namespaces.hint(pid)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Report current removable mounts, then every change until ``stop``, in every mount namespace."""
        run_alone(self, emit, stop)

    def attach(self, loop: Loop, emit: Emit) -> None:
        """Report current removable mounts and register the mount tables, the sweep hint and the sweep timer."""
        fd = os.open(self._mountinfo, os.O_RDONLY | os.O_CLOEXEC)
        self._fd, self._loop, self._emit = fd, loop, emit
        self._namespaces = Namespaces(self._sources.proc_root)
        self.health.mode, self.health.up = "mountinfo", True
        self._emit_all(self.scan(_read_fd(fd)), emit)
        loop.register(fd, lambda: self._emit_all(self.scan(_read_fd(fd)), emit), self, _MOUNTS_CHANGED)
        self._last_sweep = self._last_looked = -SWEEP_IDLE
        self._swept_at = None
        self._turn()

    def _turn(self) -> None:
        """Sweep or look where hinted, follow the namespaces found, and set the timer for the next turn."""
        spaces, loop, emit = self._namespaces, self._loop, self._emit
        assert spaces is not None and loop is not None and emit is not None
        now = time.monotonic()
        full, pids = spaces.hinted() if now >= self._last_looked + SWEEP_EVERY else (False, [])
        if full or now >= self._last_sweep + SWEEP_IDLE:
            self._last_sweep, sweep_wall = now, self._sources.clock()
            new, gone = spaces.sweep()
            for ns in gone:
                self._emit_all(self.forget(ns), emit)
        else:
            sweep_wall, new = None, spaces.look(pids)
        if sweep_wall is not None or pids:
            self._last_looked = now
            # A namespace found now was made after the last whole sweep, and so were its own mounts:
            # the files collector's catch-up looks for files written to them since then.
            for ns in new:
                self._emit_all(self._scan_ns(ns, self._swept_at), emit)
            self._swept_at = sweep_wall if sweep_wall is not None else self._swept_at
            self._follow(spaces, loop, emit)
        if self._timer is not None:
            self._timer.cancel()
        # Until the next idle sweep, or (a hint came too soon after a look) until the next allowed look.
        due = self._last_sweep + SWEEP_IDLE if spaces.hint_fd() in self._watched else self._last_looked + SWEEP_EVERY
        self._timer = loop.call_at(due, self._turn, self)

    def _hinted(self) -> None:
        if time.monotonic() < self._last_looked + SWEEP_EVERY:
            # Too soon after a look: the hint waits (unheard) for the next allowed one.
            assert self._loop is not None and self._namespaces is not None
            self._loop.unregister(self._namespaces.hint_fd())
            self._watched.discard(self._namespaces.hint_fd())
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(self._last_looked + SWEEP_EVERY, self._turn, self)
        else:
            self._turn()

    def _follow(self, spaces: Namespaces, loop: Loop, emit: Emit) -> None:
        """Watch the sweep hint and every foreign namespace's mount table (and no more)."""
        for old in self._watched:
            loop.unregister(old)
        self._watched = {spaces.hint_fd()}
        loop.register(spaces.hint_fd(), self._hinted, self)
        for ns in spaces.known.values():
            loop.register(ns.fd, functools.partial(self._changed, ns, emit), self, _MOUNTS_CHANGED)
            self._watched.add(ns.fd)

    def _changed(self, ns: Namespace, emit: Emit) -> None:
        self._emit_all(self._scan_ns(ns), emit)

    def detach(self) -> None:
        """Close the mount tables."""
        self.health.up = False
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None:
            for fd in self._watched:
                self._loop.unregister(fd)
            if self._fd is not None:
                self._loop.unregister(self._fd)
        self._watched, self._timer, self._loop, self._emit = set(), None, None, None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._namespaces is not None:
            self._namespaces.close()
            self._namespaces = None

    def _scan_ns(self, ns: Namespace, since: float | None = None) -> list[Event]:
        try:
            text = _read_fd(ns.fd)
        except OSError:  # its process went: the next sweep reads it through another, or forgets it
            return []
        if not text:  # likewise (a namespace always has a root mount)
            return []
        return self.scan(text, ns, since)

    def _emit_all(self, events: list[Event], emit: Emit) -> None:
        for e in events:
            if self._audit is not None and e.process.pid is None:
                who = self._audit.mounted_by(e.media.mount)
                if who is not None:
                    e = e._replace(process=who[0], parent=who[1])
            log.info("%s %s on %s (%s, serial %s)", e.kind, e.media.device, e.media.mount, e.media.fs, e.media.serial)
            self.health.saw(e.time or 0.0)
            emit(e)


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "surrogateescape")
