"""Sticks for the removable-media tests: real loop devices with real filesystems, and the sysfs a USB stick would have.

There is no USB device here, so the USB half of a stick's identity (serial,
vendor and product ids) comes from a fixture sysfs tree in which the loop
device's major:minor leads through a USB device node, exactly as
``/sys/dev/block/MAJ:MIN`` does for a real stick. Everything else (the block
device, its superblock, the mount, the files) is real.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.attribution import Attributor
from agent.registry import load_registry

USB = "devices/pci0000:00/0000:00:14.0/usb2/2-{port}"


@dataclass
class Stick:
    """One loop device holding a filesystem image; ``mount`` puts it where the collector looks."""

    image: Path
    device: str
    fs: str

    @classmethod
    def make(cls, image: Path, fs: str = "vfat", fs_id: str | None = None, size_mb: int = 16) -> Stick:
        subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
        if fs == "vfat":
            subprocess.run(["mkfs.vfat", *(["-i", fs_id.replace("-", "")] if fs_id else []), str(image)],
                           check=True, capture_output=True)
        else:
            subprocess.run(["mkfs.ext4", "-q", "-F", *(["-U", fs_id] if fs_id else []), str(image)], check=True)
        dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                             text=True).stdout.strip()
        # A loop device keeps a read-only flag (BLKROSET) across detach: a fresh stick starts writable whatever
        # an earlier test's enforcement left on this loop number.
        subprocess.run(["blockdev", "--setrw", dev], check=True, capture_output=True)
        return cls(image, dev, fs)

    @property
    def majmin(self) -> tuple[int, int]:
        rdev = os.stat(self.device).st_rdev
        return os.major(rdev), os.minor(rdev)

    def mount(self, where: Path, *options: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        opts = ["-o", ",".join(options)] if options else []
        subprocess.run(["mount", *opts, self.device, str(where)], check=True)

    def release(self) -> None:
        """Unmount wherever it is mounted (in this namespace) and detach the loop device."""
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            parts = line.split()
            if len(parts) > 9 and parts[parts.index("-") + 2] == self.device:
                subprocess.run(["umount", "-l", parts[4]], check=False, capture_output=True)
        subprocess.run(["blockdev", "--setrw", self.device], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", self.device], check=False, capture_output=True)


def usb_sysfs(sys_root: Path, stick: Stick, serial: str, vendor: str, product: str, port: int = 1) -> None:
    """Make ``stick``'s block device look, in ``sys_root``, like a USB stick with these ids."""
    usb = sys_root / USB.format(port=port)
    disk = usb / f"2-{port}:1.0/host6/target6:0:0/6:0:0:0/block/sd{chr(ord('a') + port)}"
    disk.mkdir(parents=True, exist_ok=True)
    (disk / "removable").write_text("1\n")
    for name, text in (("serial", serial), ("idVendor", vendor), ("idProduct", product)):
        (usb / name).write_text(text + "\n")
    major, minor = stick.majmin
    link = sys_root / "dev" / "block" / f"{major}:{minor}"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(disk, link.parent))


def attributor(where: Path, doc: dict[str, object]) -> Attributor:
    """An attribution stage for a registry written from ``doc``."""
    path = where / "registry.yaml"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return Attributor(load_registry(path))
