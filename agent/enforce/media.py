"""Keeping an unregistered stick from being written: read-only at the block layer and the mount, or deauthorised.

``readonly`` sets the device read-only (``BLKROSET``), so no new mount of it
can be read-write (the kernel mounts a read-only device read-only), and
remounts every mount of it read-only. ``deauthorize`` writes 0 to the USB
device's sysfs ``authorized`` file: the kernel unbinds it and nothing of it
can be read or written. Lifting undoes the device flag or the authorisation;
a mount already made read-only stays so until the stick is mounted again.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

BLKROSET = 0x125D
BLKROGET = 0x125E


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
        if self.how == "deauthorize":
            auth = usb_authorized(device, self.sysfs)
            if auth is None:
                raise OSError(f"{device} is not a USB device with a sysfs authorized file; cannot deauthorise it")
            auth.write_text("0\n")
            return {"how": "deauthorize", "authorized": str(auth)}
        _set_ro(device, True)
        done, failed = [], {}
        for m in mounts_of(device):
            r = subprocess.run(["mount", "-o", "remount,ro", m], capture_output=True, text=True, timeout=10)
            if r.returncode == 0:
                done.append(m)
            else:
                failed[m] = r.stderr.strip() or f"mount exited with {r.returncode}"
        out: dict[str, Any] = {"how": "readonly", "remounted": done}
        if failed:
            out["remount_failed"] = failed
        return out

    def release(self, device: str, detail: dict[str, Any]) -> None:
        """Undo ``protect`` (the device writable or authorised again)."""
        if detail.get("how") == "deauthorize" and detail.get("authorized"):
            Path(str(detail["authorized"])).write_text("1\n")
            return
        if detail.get("how") == "readonly" and os.path.exists(device):
            _set_ro(device, False)
