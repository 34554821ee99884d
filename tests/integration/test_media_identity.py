"""A stick is its device and its filesystem together: a borrowed filesystem id does not make a registered stick.

Real loop devices with real ext4 filesystems (this kernel has no vfat); the USB serial and vendor:product
ids come from a fixture sysfs in which the loop device leads through a USB
device node (there is no USB device here).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.events import Event
from collectors.base import Sources
from collectors.media import MediaCollector
from tests.integration.mediakit import Stick, attributor, usb_sysfs

needs = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"),
                           reason="needs root, mkfs.ext4 (e2fsprogs) and losetup (util-linux)")
REGISTERED_FS = "5e0c3f5a-2b7d-4f6e-9a1c-0d2e4f6a8b10"


@pytest.fixture
def sticks(tmp_path: Path) -> Iterator[list[Stick]]:
    made: list[Stick] = []
    yield made
    for s in made:
        s.release()


def _mounts(tmp_path: Path, sys_root: Path, todo: list[tuple[Stick, str]]) -> list[Event]:
    """Mount each stick under a media root while the media collector runs; its attributed media.mount events."""
    attribute = attributor(tmp_path, {
        "host": {"id": "h1", "level": "secret", "custodian": "zhang"},
        "people": [{"account": "zhang", "uid": 1000, "name": "张三", "clearance": "secret"}],
        "media": [{"serial": "AA00112233", "uuid": REGISTERED_FS, "vendor": "0781", "product": "5567",
                   "label": "红盘-07", "level": "secret", "holder": "zhang"}],
    })
    media = MediaCollector({"roots": [str(tmp_path / "media")]}, Sources(Path("/proc"), sys_root, time.time),
                           udev_root=tmp_path / "udev")
    events: list[Event] = []
    stop = threading.Event()
    t = threading.Thread(target=media.run, args=(events.append, stop), daemon=True)
    t.start()
    try:
        for stick, name in todo:
            stick.mount(tmp_path / "media" / name)
        end = time.monotonic() + 10
        while sum(e.kind == "media.mount" for e in events) < len(todo) and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(timeout=5)
    return [attribute(e) for e in events if e.kind == "media.mount"]


@pytest.mark.root
@needs
def test_a_stick_formatted_with_a_registered_filesystem_id_is_unregistered_and_says_why(
        tmp_path: Path, sticks: list[Stick]) -> None:
    sys_root = tmp_path / "sys"
    genuine = Stick.make(tmp_path / "genuine.img", "ext4", REGISTERED_FS)
    sticks.append(genuine)
    forged = Stick.make(tmp_path / "forged.img", "ext4", REGISTERED_FS)  # mkfs.ext4 -U: the registered id
    sticks.append(forged)
    usb_sysfs(sys_root, genuine, "AA00112233", "0781", "5567", port=1)
    usb_sysfs(sys_root, forged, "C0FFEE0042", "0951", "1666", port=2)
    by_mount = {e.media.mount: e for e in _mounts(tmp_path, sys_root, [(genuine, "red"), (forged, "fake")])}
    real, fake = by_mount[str(tmp_path / "media" / "red")], by_mount[str(tmp_path / "media" / "fake")]

    # The registered stick: device and filesystem both agree.
    assert (real.media.usb_serial, real.media.vendor, real.media.product, real.media.uuid) == (
        "AA00112233", "0781", "5567", REGISTERED_FS)
    assert real.media.registered is True and real.media.holder == "zhang" and real.media.mismatch is None

    # The same filesystem id on another device: unregistered, and the record says which id it borrowed.
    assert fake.media.uuid == REGISTERED_FS and fake.media.usb_serial == "C0FFEE0042"
    assert fake.media.registered is False
    assert fake.media.mismatch is not None
    assert "红盘-07" in fake.media.mismatch and "C0FFEE0042" in fake.media.mismatch, fake.media.mismatch


@pytest.mark.root
@needs
def test_a_device_without_a_serial_cannot_pass_for_the_registered_stick(
        tmp_path: Path, sticks: list[Stick]) -> None:
    bare = Stick.make(tmp_path / "bare.img", "ext4", REGISTERED_FS)  # a loop device: no serial, no USB ids
    sticks.append(bare)
    (event,) = _mounts(tmp_path, tmp_path / "empty-sys", [(bare, "bare")])
    assert event.media.serial == REGISTERED_FS and event.media.usb_serial is None
    assert event.media.registered is False and event.media.mismatch is not None
