"""Host interfaces: real dummy links woken through rtnetlink, and kinds read from fixture sysfs trees."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.events import Event
from collectors.base import Sources
from collectors.host import HostCollector, classify

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip link add)")


class Running:
    """A host collector on a thread."""

    def __init__(self, collector: HostCollector) -> None:
        self.collector, self.events, self.stop = collector, list[Event](), threading.Event()
        self.thread = threading.Thread(target=collector.run, args=(self.emit, self.stop), daemon=True)
        self.thread.start()

    def emit(self, e: Event) -> bool:
        self.events.append(e)
        return True

    def wait_for(self, what: Callable[[], bool], limit: float = 10.0) -> None:
        end = time.monotonic() + limit
        while not what():
            if time.monotonic() > end:
                raise AssertionError(f"timed out; events: {[e.to_dict() for e in self.events]}")
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "collector did not honour stop"


@pytest.fixture
def dummy() -> Iterator[Callable[[], str]]:
    """Makes a uniquely named virtual link (dummy, or veth where the kernel has no dummy); removed afterwards."""
    name = f"dwf{secrets.token_hex(3)}"

    def make() -> str:
        if subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True).returncode:
            _ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        return name

    yield make
    subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@pytest.mark.root
@root_only
def test_link_up_then_address_each_give_iface_up(dummy: Callable[[], str]) -> None:
    r = Running(HostCollector({"interval": 30.0}))
    try:
        r.wait_for(lambda: r.collector.health.up)
        assert r.collector.health.mode == "netlink"
        name = dummy()
        _ip("link", "set", name, "up")
        r.wait_for(lambda: any(e.iface.name == name for e in r.events))
        _ip("addr", "add", "192.0.2.7/24", "dev", name)  # documentation range: nothing is sent
        r.wait_for(lambda: any(e.iface.ip == "192.0.2.7" for e in r.events))
        time.sleep(1.0)  # an IPv6 link-local address arrives meanwhile and must not count
    finally:
        r.close()
    ours = [(e.kind, e.iface.name, e.iface.kind, e.iface.ip) for e in r.events if e.iface.name == name]
    assert ours == [("iface.up", name, "virtual", None), ("iface.up", name, "virtual", "192.0.2.7")]
    assert all(e.collector == "host" for e in r.events)


@pytest.mark.root
@root_only
def test_interfaces_up_at_start_are_reported_once_with_their_address(dummy: Callable[[], str]) -> None:
    name = dummy()
    _ip("addr", "add", "198.51.100.9/24", "dev", name)
    _ip("link", "set", name, "up")
    r = Running(HostCollector({"interval": 30.0}))
    try:
        r.wait_for(lambda: any(e.iface.name == name for e in r.events))
        r.wait_for(lambda: any(e.iface.name == "lo" for e in r.events))
        _ip("link", "set", name, "down")
        time.sleep(0.5)
    finally:
        r.close()
    ours = [(e.iface.kind, e.iface.ip) for e in r.events if e.iface.name == name]
    assert ours == [("virtual", "198.51.100.9")]
    (lo,) = [e for e in r.events if e.iface.name == "lo"]
    assert (lo.iface.kind, lo.iface.ip) == ("loopback", "127.0.0.1")


# -- fixture sysfs ---------------------------------------------------------------------------------------------------

def _iface(sys_root: Path, name: str, device: str, *, arphrd: int = 1, up: bool = True,
           uevent: str = "", driver: str | None = None, extra: tuple[str, ...] = ()) -> None:
    d = sys_root / device / "net" / name
    d.mkdir(parents=True)
    (d / "type").write_text(f"{arphrd}\n")
    (d / "flags").write_text("0x1003\n" if up else "0x1002\n")
    (d / "uevent").write_text(f"INTERFACE={name}\n{uevent}")
    for sub in extra:
        (d / sub).mkdir()
    if driver:
        drv = sys_root / "bus" / "usb" / "drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (sys_root / device / "driver").symlink_to(os.path.relpath(drv, sys_root / device))
        (d / "device").symlink_to(os.path.relpath(sys_root / device, d))
    link = sys_root / "class" / "net" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(d, link.parent))


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    s = tmp_path / "sys"
    pci = "devices/pci0000:00/0000:00:1f.6"
    _iface(s, "lo", "devices/virtual", arphrd=772)
    _iface(s, "eno1", pci)
    _iface(s, "wlp2s0", "devices/pci0000:00/0000:00:1c.0/0000:02:00.0", uevent="DEVTYPE=wlan\n",
           extra=("wireless", "phy80211"))
    _iface(s, "bnep0", "devices/pci0000:00/0000:00:14.0/usb1/1-7/1-7:1.0/bluetooth/hci0",
           uevent="DEVTYPE=bluetooth\n")
    _iface(s, "ppp0", "devices/virtual", arphrd=512)
    _iface(s, "wwan0", "devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.4", arphrd=65534, driver="qmi_wwan")
    _iface(s, "wwan1", "devices/pci0000:00/0000:00:1d.0/0000:05:00.0", arphrd=519, uevent="DEVTYPE=wwan\n",
           up=False)
    _iface(s, "veth0", "devices/virtual")
    (s / "class" / "bluetooth" / "hci0").mkdir(parents=True)
    return s


EXPECTED = {"lo": "loopback", "eno1": "wired", "wlp2s0": "wireless", "bnep0": "bluetooth", "ppp0": "ppp",
            "wwan0": "cellular", "wwan1": "cellular", "veth0": "virtual"}


@pytest.mark.parametrize(("name", "kind"), sorted(EXPECTED.items()))
def test_classify_fixture_interfaces(sysfs: Path, name: str, kind: str) -> None:
    assert classify(sysfs, name) == kind


def test_start_reports_each_up_interface_of_the_tree_and_bluetooth_adapters(sysfs: Path) -> None:
    r = Running(HostCollector({"interval": 30.0}, Sources(sys_root=sysfs, clock=lambda: 7.0)))
    try:
        r.wait_for(lambda: len(r.events) >= len(EXPECTED))
        time.sleep(0.3)
    finally:
        r.close()
    got = sorted((e.iface.name, e.iface.kind) for e in r.events)
    assert got == sorted([(n, k) for n, k in EXPECTED.items() if n != "wwan1"] + [("hci0", "bluetooth")])
    assert {e.time for e in r.events} == {7.0}
