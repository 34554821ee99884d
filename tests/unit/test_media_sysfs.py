"""Removable-media detection against fixture sysfs, udev and mountinfo trees."""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

from collectors.base import Sources
from collectors.media import MediaCollector, device_facts, parse_mountinfo, volume_id_of

USB_DISK = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb"
SATA_DISK = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda"
CARD_READER = "devices/platform/soc/mmc_host/mmc0/mmc0:0001/block/mmcblk0"


def _node(sys_root: Path, rel: str, majmin: str, **files: str) -> Path:
    d = sys_root / rel
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text + "\n")
    link = sys_root / "dev" / "block" / majmin
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(d, link.parent))
    return d


def _tree(tmp: Path) -> Path:
    sys_root = tmp / "sys"
    _node(sys_root, USB_DISK, "8:16", removable="0")
    _node(sys_root, USB_DISK + "/sdb1", "8:17", partition="1")
    (sys_root / USB_DISK.split("/2-1:1.0")[0] / "serial").write_text("AA00112233\n")
    _node(sys_root, SATA_DISK, "8:0", removable="0")
    _node(sys_root, SATA_DISK + "/sda1", "8:1", partition="1")
    _node(sys_root, CARD_READER, "179:0", removable="1")
    _node(sys_root, CARD_READER + "/mmcblk0p1", "179:1", partition="1")
    _node(sys_root, "devices/virtual/block/loop0", "7:0", removable="0")
    return sys_root


def test_a_usb_partition_is_removable_with_the_sticks_serial(tmp_path: Path) -> None:
    facts = device_facts(_tree(tmp_path), tmp_path / "udev", 8, 17)
    assert facts.usb and facts.serial == "AA00112233"


def test_a_card_reader_partition_takes_its_disks_removable_flag(tmp_path: Path) -> None:
    facts = device_facts(_tree(tmp_path), tmp_path / "udev", 179, 1)
    assert facts.removable and not facts.usb and facts.serial is None


def test_a_sata_disk_is_fixed(tmp_path: Path) -> None:
    facts = device_facts(_tree(tmp_path), tmp_path / "udev", 8, 1)
    assert not facts.removable and not facts.usb and facts.serial is None


def test_udev_serial_is_used_when_sysfs_has_none(tmp_path: Path) -> None:
    udev = tmp_path / "udev"
    udev.mkdir()
    (udev / "b179:1").write_text("S:disk/by-id/mmc-SD32G_0x1234\nE:ID_SERIAL_SHORT=0x1234abcd\nG:systemd\n")
    assert device_facts(_tree(tmp_path), udev, 179, 1).serial == "0x1234abcd"


def test_an_unknown_device_is_nothing(tmp_path: Path) -> None:
    facts = device_facts(_tree(tmp_path), tmp_path / "udev", 253, 9)
    assert not facts.removable and not facts.usb and facts.serial is None


def test_mountinfo_lines_with_escapes_and_optional_fields() -> None:
    text = (
        "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
        "90 29 8:17 / /media/zhang/My\\040Stick rw,nosuid shared:50 - vfat /dev/sdb1 rw,uid=1000\n"
        "garbage line\n"
    )
    a, b = parse_mountinfo(text)
    assert (a.mount_id, a.major, a.minor, a.mount, a.fs, a.source) == (36, 98, 0, "/mnt/parent", "ext3", "/dev/root")
    assert (b.mount, b.fs, b.source) == ("/media/zhang/My Stick", "vfat", "/dev/sdb1")


def test_volume_ids_of_ext4_fat32_fat16_and_exfat() -> None:
    u = uuid.UUID("0d5f7c1e-8a42-4c44-9d55-6b1f0e7a9c11")
    ext4 = bytearray(2048)
    ext4[1024 + 0x38: 1024 + 0x3A] = b"\x53\xef"
    ext4[1024 + 0x68: 1024 + 0x78] = u.bytes
    assert volume_id_of(bytes(ext4)) == str(u)
    fat32 = bytearray(512)
    fat32[82:90] = b"FAT32   "
    struct.pack_into("<I", fat32, 67, 0x1A2B3C4D)
    assert volume_id_of(bytes(fat32)) == "1A2B-3C4D"
    fat16 = bytearray(512)
    fat16[54:62] = b"FAT16   "
    struct.pack_into("<I", fat16, 39, 0x00FF0001)
    assert volume_id_of(bytes(fat16)) == "00FF-0001"
    exfat = bytearray(512)
    exfat[3:11] = b"EXFAT   "
    struct.pack_into("<I", exfat, 100, 0xDEADBEEF)
    assert volume_id_of(bytes(exfat)) == "DEAD-BEEF"
    assert volume_id_of(bytes(2048)) is None


def test_scan_reports_removable_mounts_and_their_removal(tmp_path: Path) -> None:
    sys_root = _tree(tmp_path)
    clock_now = [1000.0]
    c = MediaCollector({"roots": ["/media"]}, Sources(tmp_path / "proc", sys_root, lambda: clock_now[0]),
                       udev_root=tmp_path / "udev")
    base = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "23 22 0:21 / /tmp rw - tmpfs tmpfs rw\n"
        "24 22 0:40 / /media/ram rw - tmpfs tmpfs rw\n"  # under a root but no block device
    )
    assert c.scan(base) == []
    stick = "90 22 8:17 / /run/media/zhang/STICK rw - vfat /dev/sdb1 rw\n"
    loop = "91 22 7:0 / /media/img rw - ext4 /dev/dw-fixture-loop0 rw\n"
    (usb_up, loop_up) = c.scan(base + stick + loop)
    assert usb_up.kind == "media.mount" and usb_up.time == 1000.0
    assert (usb_up.media.device, usb_up.media.mount, usb_up.media.fs, usb_up.media.serial) == (
        "/dev/sdb1", "/run/media/zhang/STICK", "vfat", "AA00112233")
    assert loop_up.media.mount == "/media/img"  # removable because it sits under a media root
    assert c.removable_mount_for("/run/media/zhang/STICK/docs/a.docx") == usb_up.media
    assert c.removable_mount_for("/run/media/zhang/STICKY/a") is None
    assert c.scan(base + stick + loop) == []  # nothing changed, nothing said
    (gone,) = c.scan(base + loop)
    assert gone.kind == "media.unmount" and gone.media == usb_up.media
    assert [m.mount for m in c.removable_mounts()] == ["/media/img"]
