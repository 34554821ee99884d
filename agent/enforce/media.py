"""Keeping an unregistered stick from being written: read-only at the block layer and the mount, or deauthorised.

``readonly`` sets the device read-only (``BLKROSET``), so no new mount of it
can be read-write (the kernel mounts a read-only device read-only), and
remounts every mount of it read-only. The remount is the ``mount`` system call
on the filesystem itself (its superblock), so it holds in every mount
namespace, also when the agent runs in a private one (the unit's
``PrivateMounts``); the ``mount`` command is not used: it refuses a user other
than root whatever the capabilities. ``deauthorize`` writes 0 to the USB
device's sysfs ``authorized`` file: the kernel unbinds it and nothing of it
can be read or written. Where that write is refused (the unit's sandbox keeps
``/sys`` read-only unless the enforcement drop-in opens it) the stick is made
read-only instead, and the record says why: it fails closed. Lifting undoes
the device flag or the authorisation; a mount already made read-only stays so
until the stick is mounted again.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from pathlib import Path
from typing import Any

BLKROSET = 0x125D
BLKROGET = 0x125E
MS_RDONLY, MS_REMOUNT = 0x1, 0x20
# statvfs flags that are also mount flags (same values) and a remount must keep, or it would clear them.
_KEEP = {os.ST_NOSUID: 0x2, os.ST_NODEV: 0x4, os.ST_NOEXEC: 0x8, os.ST_SYNCHRONOUS: 0x10,
         os.ST_MANDLOCK: 0x40, os.ST_NOATIME: 0x400, os.ST_NODIRATIME: 0x800, os.ST_RELATIME: 0x200000}


def _set_ro(device: str, ro: bool) -> None:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKROSET, struct.pack("i", 1 if ro else 0))
    finally:
        os.close(fd)


def is_ro(device: str) -> bool:
    """Whether the block device is read-only."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return bool(struct.unpack("i", fcntl.ioctl(fd, BLKROGET, b"\0" * 4))[0])
    finally:
        os.close(fd)


def mounts_of(device: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Mount points of a block device (by its device number)."""
    try:
        st = os.stat(device)
    except OSError:
        return []
    want = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    out = []
    for line in mountinfo.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[2] == want:
            out.append(parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    return out


def remount_ro(mount: str) -> None:
    """Make the filesystem mounted at ``mount`` read-only (its superblock: every mount of it, in every namespace),
    keeping the mount's other flags. Raises OSError (EBUSY while a file on it is open for writing)."""
    keep = 0
    flags = os.statvfs(mount).f_flag
    for st, ms in _KEEP.items():
        if flags & st:
            keep |= ms
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
    if libc.mount(None, os.fsencode(mount), None, MS_REMOUNT | MS_RDONLY | keep, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"remount read-only: {os.strerror(err)}"
                      + (" (the mount system call is refused: see the enforcement drop-in)" if err == errno.EPERM
                         else ""), mount)


def usb_authorized(device: str, sysfs: Path = Path("/sys")) -> Path | None:
    """The ``authorized`` file of the USB device behind a block device, if there is one."""
    try:
        rdev = os.stat(device).st_rdev
        p = (sysfs / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}").resolve(strict=True)
        sysfs = sysfs.resolve()
    except OSError:
        return None
    for d in [p, *p.parents]:
        if d == sysfs or sysfs not in d.parents:
            break
        if (d / "authorized").is_file() and (d / "idVendor").is_file():
            return d / "authorized"
    return None


class MediaGuard:
    """Applies and lifts the media enforcement the config chose (readonly, deauthorize, off)."""

    def __init__(self, how: str = "readonly", sysfs: Path = Path("/sys")) -> None:
        self.how = how
        self.sysfs = sysfs

    def protect(self, device: str, detail: dict[str, Any]) -> dict[str, Any]:
        """Make ``device`` unwritable now; returns what was done (for the journal and for lifting)."""
        if self.how == "off":
            raise OSError(f"enforce.media.unregistered is off: {device} left as it is")
        refused = None
        if self.how == "deauthorize":
            auth = usb_authorized(device, self.sysfs)
            if auth is None:
                raise OSError(f"{device} is not a USB device with a sysfs authorized file; cannot deauthorise it")
            try:
                auth.write_text("0\n")
                return {"how": "deauthorize", "authorized": str(auth)}
            except OSError as exc:  # read-only /sys or no right to write it: keep it from being written instead
                refused = f"deauthorising refused ({auth}: {exc.strerror or exc}); made read-only instead"
        _set_ro(device, True)
        done, failed = [], {}
        for m in mounts_of(device):
            try:
                remount_ro(m)
                done.append(m)
            except OSError as exc:
                failed[m] = exc.strerror or str(exc)
        out: dict[str, Any] = {"how": "readonly", "remounted": done}
        if failed:
            out["remount_failed"] = failed
        if refused:
            out["deauthorize_refused"] = refused
        return out

    def release(self, device: str, detail: dict[str, Any]) -> None:
        """Undo ``protect`` (the device writable or authorised again)."""
        if detail.get("how") == "deauthorize" and detail.get("authorized"):
            Path(str(detail["authorized"])).write_text("1\n")
            return
        if detail.get("how") == "readonly" and os.path.exists(device):
            _set_ro(device, False)
