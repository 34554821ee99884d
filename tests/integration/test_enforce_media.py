"""Unregistered sticks on a classified host: unwritable from the moment the kernel announces them.

Real loop devices with real filesystems stand in for sticks; a fixture sysfs
gives each the USB identity (serial, vendor:product) a real stick has, and a
``change`` written to the loop device's real ``uevent`` file makes the kernel
announce it on the uevent netlink socket, as it does when a stick is plugged in.
The gate, the read-only flag, the mount and the write attempts are all real.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.enforce.channel import derive
from agent.enforce.enforcer import Enforcer
from agent.enforce.media import MediaGuard, is_ro, mounts_of
from agent.enforce.mediagate import MediaGate
from agent.enforce.settings import EnforceConfig
from agent.metrics import Metrics
from agent.registry import load_registry
from tests.integration.mediakit import Stick, usb_sysfs

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices, mount, uevent netlink"),
]
USER = 1000
REGISTRY = {
    "host": {"id": "h-secret", "unit": "U", "department": "D", "custodian": "zhangsan", "level": "secret",
             "zone": "intranet"},
    "units": [{"name": "U", "department": "D"}],
    "zones": {"default": "internet", "networks": [{"name": "intranet", "cidrs": ["10.0.0.0/8"]}]},
    "people": [{"account": "zhangsan", "uid": 1000, "name": "张三", "unit": "U", "clearance": "secret"}],
    "media": [{"serial": "AA00112233", "label": "红盘-07", "level": "secret", "holder": "zhangsan",
               "vendor": "0781", "product": "5567"}],
}


class Gate:
    """An enforcer with its media gate on a fixture sysfs; journal records collected in order."""

    def __init__(self, tmp: Path, how: str = "readonly", mode: str = "enforce") -> None:
        self.sys_root = tmp / "sys"
        self.sys_root.mkdir()
        (tmp / "registry.yaml").write_text(json.dumps(REGISTRY, ensure_ascii=False), encoding="utf-8")
        registry = load_registry(tmp / "registry.yaml")
        cfg = EnforceConfig(mode=mode, media_unregistered=how, table="dw19unused")
        channel, problems = derive(_Cfg(cfg), registry)
        assert not problems
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.metrics = Metrics("t", process_metrics=False)
        self.enforcer = Enforcer(cfg, channel, state_dir=tmp / "state", host="h-secret", custodian="zhangsan",
                                 unit="U", record=self._record, metrics=self.metrics,
                                 media=MediaGuard(how, self.sys_root))
        self.enforcer.table = None  # no network enforcement in these tests: nothing touches nftables
        self.enforcer.gate = MediaGate(registry, self.enforcer.gate_media, sys_root=self.sys_root,
                                       people=lambda: ["张三 (zhangsan)"], removed=self.enforcer.media_removed)
        self.enforcer.start()

    def _record(self, rec: dict[str, Any]) -> None:
        with self.lock:
            self.records.append(rec)

    def decisions(self, device: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r["detail"] for r in self.records
                    if r["kind"] == "enforce.action" and r["detail"].get("target") == device]

    def plug(self, stick: Stick, serial: str, vendor: str, product: str, port: int) -> dict[str, Any]:
        """Give the loop device its USB identity and have the kernel announce it; the gate's decision."""
        usb_sysfs(self.sys_root, stick, serial, vendor, product, port)
        if (self.sys_root / "devices").exists():
            usb = next((self.sys_root / "devices").rglob(f"2-{port}"))
            (usb / "authorized").write_text("1\n")
        name = Path(stick.device).name
        Path(f"/sys/block/{name}/uevent").write_text("change\n")
        deadline = time.monotonic() + 10
        while not self.decisions(stick.device):
            assert time.monotonic() < deadline, f"the gate never judged {stick.device}"
            time.sleep(0.02)
        return self.decisions(stick.device)[0]

    def close(self) -> None:
        self.enforcer.shutdown()


class _Cfg:
    def __init__(self, enforce: EnforceConfig) -> None:
        self.enforce, self.path, self.forward_syslog, self.listen = enforce, "x", None, "127.0.0.1:9847"


@pytest.fixture
def media(tmp_path: Path) -> Iterator[Path]:
    """Mount points the test user can reach (pytest's own temp dirs are closed to others)."""
    top = Path(tempfile.mkdtemp(prefix="dw19-media-"))
    top.chmod(0o755)
    yield top
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(str(top)):
            subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def sticks(tmp_path: Path) -> Iterator[list[Stick]]:
    made: list[Stick] = []
    yield made
    for s in made:
        with open(s.device, "rb") as f:  # never leave a loop device read-only for whoever gets it next
            fcntl.ioctl(f.fileno(), 0x125D, struct.pack("i", 0))
        s.release()


def _as_user(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", "-c", code], user=USER, group=USER, extra_groups=[],
                          capture_output=True, text=True, timeout=30)


def _write_as_user(path: Path) -> str:
    r = _as_user(f"import sys\ntry:\n    open({str(path)!r}, 'w').write('secret')\n    print('written')\n"
                 "except OSError as e:\n    print('refused', e.errno)")
    return r.stdout.strip()


def _mount(stick: Stick, where: Path) -> str:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", stick.device, str(where)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stderr


def _rw(where: Path) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        if parts[4] == str(where):
            return "rw" in parts[5].split(",")
    raise AssertionError(f"{where} is not mounted")


def test_an_unregistered_stick_is_read_only_before_its_first_mount_and_the_registered_one_is_not(
        tmp_path: Path, sticks: list[Stick], media: Path) -> None:
    gate = Gate(tmp_path)
    try:
        plain = Stick.make(tmp_path / "plain.img", "ext4")
        sticks.append(plain)
        d = gate.plug(plain, "C0FFEE0001", "0951", "1666", port=1)
        # The officer sees the device, the person logged in and the decision.
        assert (d["kind"], d["target"], d["result"], d["operator"]) == \
            ("media", plain.device, "enforced", "张三 (zhangsan)")
        assert d["detail"]["serial"] == "C0FFEE0001" and d["detail"]["how"] == "readonly"
        assert d["lift_by"]["command"].startswith("dutywatch enforce lift ")
        assert is_ro(plain.device)
        mnt = media / "plain"
        _mount(plain, mnt)
        assert not _rw(mnt)  # the kernel mounted it read-only: the device is
        r = subprocess.run(["touch", str(mnt / "x")], capture_output=True, text=True)
        assert r.returncode != 0 and "Read-only file system" in r.stderr  # not even root writes
        assert _write_as_user(mnt / "copy.txt") == f"refused {errno.EROFS}"
        # The ways round it: remount read-write (root's own tool, refused while the device is read-only) ...
        r = subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True, text=True)
        assert r.returncode != 0 and not _rw(mnt)
        # ... or a stick made to carry the registered stick's serial as its filesystem id, on other USB ids.
        forged = Stick.make(tmp_path / "forged.img", "vfat", fs_id="AA00-1122")
        sticks.append(forged)
        f = gate.plug(forged, "DEADBEEF99", "0951", "1666", port=2)
        assert f["result"] == "enforced" and is_ro(forged.device)
        # The near miss: the registered stick (its USB serial and ids) is admitted, writable, and said so.
        red = Stick.make(tmp_path / "red.img", "ext4")
        sticks.append(red)
        ok = gate.plug(red, "AA00112233", "0781", "5567", port=3)
        assert (ok["result"], ok["level"], ok["holder"]) == ("allowed", "secret", "zhangsan")
        assert not is_ro(red.device)
        red_mnt = media / "red"
        _mount(red, red_mnt)
        assert _rw(red_mnt)
        os.chown(red_mnt, USER, USER)
        assert _write_as_user(red_mnt / "ok.txt") == "written"
        assert gate.metrics.enforcements.value(("media", "enforced")) == 2
        assert gate.metrics.enforcements.value(("media", "allowed")) == 1
        # Lifting by id makes the stick writable again (a new mount is read-write), journaled.
        assert gate.enforcer.lift(d["id"], "command", {"uid": 0}, "checked by the officer")
        assert not is_ro(plain.device)
        subprocess.run(["umount", str(mnt)], check=True)
        _mount(plain, mnt)
        assert _rw(mnt)
    finally:
        gate.close()
    assert not is_ro(forged.device)  # the stop policy (lift) gives every stick back


def test_a_stick_mounted_before_the_agent_started_is_remounted_read_only(
        tmp_path: Path, sticks: list[Stick], media: Path) -> None:
    plain = Stick.make(tmp_path / "early.img", "ext4")
    sticks.append(plain)
    mnt = media / "early"
    _mount(plain, mnt)
    assert _rw(mnt)
    gate = Gate(tmp_path)
    try:
        usb_sysfs(gate.sys_root, plain, "C0FFEE0002", "0951", "1666", port=1)
        gate.enforcer.gate.sweep()  # what the start-up sweep does for a stick already in the port
        d = gate.decisions(plain.device)[0]
        assert d["result"] == "enforced" and d["detail"]["remounted"] == [str(mnt)]
        assert not _rw(mnt) and mounts_of(plain.device) == [str(mnt)]
    finally:
        gate.close()


def test_deauthorize_writes_the_usb_devices_authorized_file_and_lifting_restores_it(
        tmp_path: Path, sticks: list[Stick]) -> None:
    gate = Gate(tmp_path, how="deauthorize")
    try:
        plain = Stick.make(tmp_path / "plain.img", "vfat")
        sticks.append(plain)
        usb_sysfs(gate.sys_root, plain, "C0FFEE0003", "0951", "1666", port=1)
        auth = next((gate.sys_root / "devices").rglob("2-1")) / "authorized"
        auth.write_text("1\n")
        d = gate.plug(plain, "C0FFEE0003", "0951", "1666", port=1)
        assert d["result"] == "enforced" and d["detail"]["how"] == "deauthorize"
        assert auth.read_text().strip() == "0"
        assert gate.enforcer.lift(d["id"], "command", {"uid": 0}, "")
        assert auth.read_text().strip() == "1"
    finally:
        gate.close()


def test_dryrun_only_says_what_it_would_do(tmp_path: Path, sticks: list[Stick]) -> None:
    gate = Gate(tmp_path, mode="dryrun")
    try:
        plain = Stick.make(tmp_path / "plain.img", "ext4")
        sticks.append(plain)
        d = gate.plug(plain, "C0FFEE0004", "0951", "1666", port=1)
        assert (d["result"], d["mode"]) == ("dryrun", "dryrun") and not is_ro(plain.device)
    finally:
        gate.close()
