"""Removable media on a real kernel: a loop-mounted ext4 image under a media root stands in for a USB stick."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.events import Event
from agent.levels import Level
from collectors.files import FilesCollector
from collectors.marking import MarkingResult
from collectors.media import MediaCollector

needs = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("mount"),
    reason="needs root, mkfs.ext4 (e2fsprogs) and mount (util-linux)",
)


def _marker(path: str, fd: int) -> MarkingResult:
    found = "机密★" in os.pread(fd, 1 << 20, 0).decode(errors="replace")
    return MarkingResult("marked", Level.SECRET) if found else MarkingResult("unmarked")


def _wait(what: Callable[[], bool], events: list[Event], limit: float = 15.0) -> None:
    end = time.monotonic() + limit
    while not what():
        if time.monotonic() > end:
            raise AssertionError(f"timed out; events: {[e.to_dict() for e in events]}")
        time.sleep(0.05)


@pytest.fixture
def stick(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """An ext4 image, an empty media root, the mount point to use and the image's UUID."""
    image, root = tmp_path / "stick.img", tmp_path / "media"
    root.mkdir()
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    fs_uuid = subprocess.run(["blkid", "-s", "UUID", "-o", "value", str(image)], check=True,
                             capture_output=True, text=True).stdout.strip()
    mnt = root / "usb"
    mnt.mkdir()
    yield image, mnt, fs_uuid
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
@needs
def test_mount_write_unmount_on_a_removable_medium(stick: tuple[Path, Path, str]) -> None:
    image, mnt, fs_uuid = stick
    media = MediaCollector({"roots": [str(mnt.parent)]})
    files = FilesCollector({"paths": []}, media=media, marker=_marker)
    events: list[Event] = []
    lock = threading.Lock()

    def emit(e: Event) -> bool:
        with lock:
            events.append(e)
        return True

    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(emit, stop), daemon=True) for c in (media, files)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: media.health.up and files.health.up, events)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        _wait(lambda: any(e.kind == "media.mount" for e in events), events)
        _wait(lambda: str(mnt) in files.watched_roots(), events)

        doc = mnt / "报告.txt"
        script = (f"open({str(doc)!r}, 'w', encoding='utf-8').write('机密★10年\\n关于某事的报告');"
                  "import os; print(os.getpid())")
        pid = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                 text=True).stdout)
        _wait(lambda: any(e.file.path == str(doc) for e in events), events)
        assert media.removable_mount_for(str(doc)) is not None

        subprocess.run(["umount", str(mnt)], check=True)
        _wait(lambda: any(e.kind == "media.unmount" for e in events), events)
        _wait(lambda: str(mnt) not in files.watched_roots(), events)
        assert media.removable_mount_for(str(doc)) is None
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    assert not any(t.is_alive() for t in threads), "a collector did not honour stop"

    (mounted,) = [e for e in events if e.kind == "media.mount"]
    assert mounted.collector == "media"
    assert mounted.media.mount == str(mnt)
    assert mounted.media.fs == "ext4"
    assert mounted.media.device is not None and mounted.media.device.startswith("/dev/loop")
    assert mounted.media.serial == fs_uuid  # a loop device has no sysfs serial: the volume UUID stands in

    (written,) = [e for e in events if e.file.path == str(doc)]
    assert written.kind == "file.create"
    assert written.process.pid == pid
    assert written.file.on_removable is True
    assert written.file.marking == Level.SECRET
    assert written.media == mounted.media

    (unmounted,) = [e for e in events if e.kind == "media.unmount"]
    assert unmounted.media == mounted.media
    assert [e.kind for e in events].index("media.unmount") > [e.kind for e in events].index("file.create")


@pytest.mark.root
@needs
def test_a_mount_outside_the_media_roots_is_not_removable(stick: tuple[Path, Path, str], tmp_path: Path) -> None:
    image, _mnt, _ = stick
    elsewhere = tmp_path / "data"
    elsewhere.mkdir()
    media = MediaCollector({"roots": [str(tmp_path / "media")]})
    events: list[Event] = []
    stop = threading.Event()
    t = threading.Thread(target=media.run, args=(events.append, stop), daemon=True)
    t.start()
    try:
        _wait(lambda: media.health.up, events)
        subprocess.run(["mount", "-o", "loop", str(image), str(elsewhere)], check=True)
        try:
            time.sleep(1.0)  # a media.mount, if one were wrongly emitted, arrives in this time
            assert media.removable_mount_for(str(elsewhere / "x")) is None
        finally:
            subprocess.run(["umount", str(elsewhere)], check=True)
    finally:
        stop.set()
        t.join(timeout=5)
    assert [e for e in events if e.media.mount == str(elsewhere)] == []
