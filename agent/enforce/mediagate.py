"""The media gate: an unregistered stick on a classified host is made unwritable as it arrives, before a mount.

The kernel announces every block device it adds or changes on the uevent
netlink socket (``NETLINK_KOBJECT_UEVENT``); the gate judges each removable
one (sysfs ``removable``, or a USB path) the moment it appears, with the same
identity the media collector uses (device serial, USB ids, filesystem id),
and hands an unregistered one to the enforcer, which sets the device
read-only (a mount of it can then only be read-only) or deauthorises it, per
``enforce.media.unregistered``. A registered stick is let through, journaled
with its level. Sticks already present at start are judged by a sweep.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from agent.events import Media
from agent.levels import Level
from agent.mediaid import identify
from agent.registry import Registry
from collectors.loop import Served

_log = logging.getLogger("dutywatch.enforce.media")
NETLINK_KOBJECT_UEVENT = 15


def parse_uevent(data: bytes) -> dict[str, str]:
    """``KEY=value`` fields of one kernel uevent message (the ``ACTION@DEVPATH`` header is skipped)."""
    out: dict[str, str] = {}
    for part in data.split(b"\0")[1:]:
        key, sep, value = part.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def kernel_name(major: int, minor: int) -> str | None:
    """The kernel's name of block device ``major:minor`` (its ``DEVNAME``), from the running kernel's sysfs."""
    try:
        text = Path(f"/sys/dev/block/{major}:{minor}/uevent").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("DEVNAME="):
            return line.split("=", 1)[1] or None
    return None


def logged_in(registry: Registry) -> list[str]:
    """Who is logged in here (utmp), by name where the registry knows the account."""
    try:
        import psutil
        accounts = sorted({u.name for u in psutil.users()})
    except (ImportError, OSError):
        return []
    names = {p.account: p.name for p in registry.people}
    return [f"{names[a]} ({a})" if a in names else a for a in accounts]


class MediaGate:
    """See the module docstring; ``decide(media, people)`` is the enforcer's ``gate_media``."""

    def __init__(self, registry: Registry, decide: Callable[[Media, str | None, list[str]], None], *,
                 sys_root: Path = Path("/sys"), udev_root: Path = Path("/run/udev/data"),
                 dev_root: Path = Path("/dev"),
                 people: Callable[[], list[str]] | None = None,
                 removed: Callable[[str], None] | None = None) -> None:
        self.registry = registry
        self.decide = decide
        self.removed = removed
        self.sys_root = sys_root
        self.udev_root = udev_root
        self.dev_root = dev_root
        self.people = people or (lambda: logged_in(registry))
        self._served: Served | None = None
        self._sock: socket.socket | None = None
        self.seen: dict[str, str] = {}  # device -> decision, for tests and the bench
        self.judged = threading.Condition()

    @property
    def classified(self) -> bool:
        """Whether this host is one the gate guards (confidential or above)."""
        lvl = self.registry.host.level
        return lvl is not None and lvl >= Level.CONFIDENTIAL

    @property
    def running(self) -> bool:
        """Whether the gate listens."""
        return self._served is not None and self._served.alive

    def start(self) -> None:
        """Listen for uevents, then sweep the block devices already present."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 1))  # group 1: the kernel's own uevents, before udev has run any rule
        self._sock = sock
        self._served = Served(sock.fileno(), self._readable, "media-gate")
        self._served.start()
        self.sweep()

    def stop(self) -> None:
        """Stop listening."""
        if self._served is not None:
            self._served.stop()
        if self._sock is not None:
            self._sock.close()

    def sweep(self) -> None:
        """Judge every removable block device present now."""
        base = self.sys_root / "dev" / "block"
        try:
            entries = sorted(base.iterdir())
        except OSError:
            return
        for link in entries:
            try:
                major, minor = (int(x) for x in link.name.split(":"))
            except ValueError:
                continue
            self.judge(kernel_name(major, minor) or link.resolve().name, major, minor)

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:  # ENOBUFS: uevents were lost; a sweep catches up
            _log.warning("uevents lost (%s): sweeping the block devices", exc)
            self.sweep()
            return
        ev = parse_uevent(data)
        if ev.get("SUBSYSTEM") != "block":
            return
        action, name = ev.get("ACTION"), ev.get("DEVNAME")
        if not name:
            return
        if action == "remove":
            device = str(self.dev_root / name)
            if self.seen.pop(device, None) is not None and self.removed is not None:
                self.removed(device)
            return
        if action in ("add", "change"):
            try:
                self.judge(name, int(ev.get("MAJOR", "")), int(ev.get("MINOR", "")))
            except ValueError:
                return

    def judge(self, name: str, major: int, minor: int) -> None:
        """Decide about block device ``name`` (``major:minor``) if it is removable and this host classified."""
        from collectors.media import device_facts, volume_id

        if not self.classified:
            return
        facts = device_facts(self.sys_root, self.udev_root, major, minor)
        if not (facts.removable or facts.usb):
            return
        device = str(self.dev_root / name)
        fs_id = volume_id(device)
        if fs_id is None and facts.serial is None:
            return  # no medium in the slot yet (an empty card reader), or nothing on it to identify
        media = Media(device=device, serial=facts.serial or fs_id, vendor=facts.vendor, product=facts.product,
                      usb_serial=facts.usb_serial, uuid=fs_id)
        entry, why = identify(media, self.registry.media)
        key = f"{media.serial}|{media.uuid}|{media.vendor}:{media.product}"
        if self.seen.get(device) == key:
            return  # the same medium announced again (a change event after our own BLKROSET)
        self.seen[device] = key
        if entry is not None:
            media = media._replace(registered=True, level=entry.level, holder=entry.holder)
        else:
            media = media._replace(registered=False)
        try:
            self.decide(media, why, self.people())
        finally:
            with self.judged:
                self.judged.notify_all()
