"""Host interfaces: ``iface.up`` when a network interface comes up or gains an address.

An rtnetlink socket subscribed to link and address groups wakes the
collector; without one it rereads /sys/class/net every ``interval``. Each
interface is classified from sysfs (wireless, bluetooth, ppp, cellular,
loopback, virtual, else wired) and reported with its first address, which
attribution turns into a network zone. Bluetooth adapters (hci*) have no
network interface until a PAN is up, so /sys/class/bluetooth is also read
every ``interval`` and a new adapter is reported as a bluetooth interface.

No thread of its own: it shares the agent's collector loop (``collectors.loop``), which waits
on the rtnetlink socket and wakes for the next ``interval`` read; a quiet host wakes it once an
interval. Each change costs a few sysfs reads, so it never holds up the loop's other collectors.
When it fails, the supervisor detaches it and attaches it again after a backoff.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.events import Event, Iface
from collectors.base import Availability, Emit, Health, Sources, section, translate_os_error
from collectors.loop import Loop, run_alone

log = logging.getLogger(__name__)

RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
IFLA_IFNAME, IFA_ADDRESS, IFA_LOCAL = 3, 1, 2
IFF_UP = 0x1
ARPHRD_PPP, ARPHRD_RAWIP, ARPHRD_LOOPBACK, ARPHRD_6LOWPAN = 512, 519, 772, 825
# Drivers of USB/PCIe modems that present a network interface to a mobile network.
WWAN_DRIVERS = frozenset({"qmi_wwan", "cdc_mbim", "huawei_cdc_ncm", "sierra_net", "mhi_net", "ipheth",
                          "option", "cdc_ncm_wwan", "t7xx", "iosm"})
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def classify(sys_root: Path, name: str) -> str:
    """The kind of network interface ``name`` as sysfs describes it."""
    d = sys_root / "class" / "net" / name
    try:
        arphrd = int(_read(d / "type") or "-1")
    except ValueError:
        arphrd = -1
    uevent = dict(line.split("=", 1) for line in _read(d / "uevent").splitlines() if "=" in line)
    devtype = uevent.get("DEVTYPE", "")
    try:
        real = d.resolve(strict=True)
    except OSError:
        real = d
    device_path = str(real)
    driver = os.path.basename(os.path.realpath(d / "device" / "driver"))
    if name == "lo" or arphrd == ARPHRD_LOOPBACK:
        return "loopback"
    if (d / "wireless").exists() or (d / "phy80211").exists() or devtype == "wlan":
        return "wireless"
    if devtype == "bluetooth" or arphrd == ARPHRD_6LOWPAN or "/bluetooth/" in device_path:
        return "bluetooth"
    if arphrd == ARPHRD_PPP:
        return "ppp"
    if devtype == "wwan" or driver in WWAN_DRIVERS or arphrd == ARPHRD_RAWIP:
        return "cellular"
    if "/devices/virtual/" in device_path:
        return "virtual"
    return "wired"


def first_address(name: str) -> str | None:
    """The interface's first IPv4 address, else its first global IPv6 address."""
    import psutil

    addrs = psutil.net_if_addrs().get(name, [])
    v4: list[str] = [str(a.address) for a in addrs if a.family == socket.AF_INET]
    v6 = [str(a.address).split("%")[0] for a in addrs if a.family == socket.AF_INET6]
    v6 = [a for a in v6 if not ipaddress.IPv6Address(a).is_link_local]
    found = v4 or v6
    return found[0] if found else None


def _attrs(data: bytes, off: int, end: int) -> Iterator[tuple[int, bytes]]:
    while off + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, off)
        if length < _RTATTR.size:
            return
        yield kind & 0x3FFF, data[off + _RTATTR.size: off + length]
        off += (length + 3) & ~3


def parse_rtnetlink(data: bytes) -> Iterator[tuple[str, int, Any]]:
    """Decode link and address messages as (what, ifindex, value).

    ``("link", index, (name, up))``, ``("dellink", index, name)``,
    ``("addr", index, ip)``, ``("deladdr", index, ip)``.
    """
    off = 0
    while off + _NLMSG.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size:
            return
        body, end = off + _NLMSG.size, off + length
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            _fam, _type, index, flags, _change = _IFINFO.unpack_from(data, body)
            name = next((v.rstrip(b"\0").decode() for k, v in _attrs(data, body + _IFINFO.size, end)
                         if k == IFLA_IFNAME), "")
            if mtype == RTM_NEWLINK:
                yield "link", index, (name, bool(flags & IFF_UP))
            else:
                yield "dellink", index, name
        elif mtype in (RTM_NEWADDR, RTM_DELADDR):
            family, _plen, _fl, _scope, index = _IFADDR.unpack_from(data, body)
            found = dict(_attrs(data, body + _IFADDR.size, end))
            raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
                ip = socket.inet_ntop(family, raw)
                yield ("addr" if mtype == RTM_NEWADDR else "deladdr"), index, ip
        off += (length + 3) & ~3


class HostCollector:
    """Emits iface.up for interfaces that come up or gain an address, and once for each at start."""

    name = "host"

    def __init__(self, config: Mapping[str, Any] | None, sources: Sources | None = None) -> None:
        self._src = sources or Sources()
        self.interval = float(section(config, "interval", 30.0))
        self.health = Health()
        self._up: dict[str, bool] = {}
        self._said: dict[str, set[str | None]] = {}
        self._names: dict[int, str] = {}
        self._hci: set[str] = set()
        self._sock: socket.socket | None = None

    def available(self) -> Availability:
        """``netlink`` when an rtnetlink socket can be opened, else ``poll``."""
        try:
            self._socket().close()
        except OSError as exc:
            return Availability("poll", str(translate_os_error("rtnetlink", exc)))
        return Availability("netlink")

    def _socket(self) -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                          socket.NETLINK_ROUTE)
        s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        return s

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Report the interfaces up now, then every change until ``stop`` (on a private loop)."""
        run_alone(self, emit, stop)

    def attach(self, loop: Loop, emit: Emit) -> None:
        """Report the interfaces up now and register the rtnetlink socket and the sysfs timer with ``loop``."""
        try:
            self._sock = self._socket()
            self.health.mode = "netlink"
        except OSError as exc:
            log.warning("host: polling %s every %.0fs: %s", self._net, self.interval,
                        translate_os_error("rtnetlink", exc))
            self._sock, self.health.mode = None, "poll"
        self.health.up = True
        sock = self._sock
        if sock is not None:
            loop.register(sock.fileno(), lambda: self._drain(sock, emit), self)
            self._rescan(emit)  # once: netlink says every change after it (poll mode: at every tick)

        def tick() -> None:
            if sock is None:
                self._rescan(emit)
            self._bluetooth(emit)
            loop.call_later(self.interval, tick, self)

        tick()

    def detach(self) -> None:
        """Close the rtnetlink socket."""
        self.health.up = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def _net(self) -> Path:
        return self._src.sys_root / "class" / "net"

    def _drain(self, sock: socket.socket, emit: Emit) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.health.drop("kernel_overflow")
                self._rescan(emit)  # the lost messages can only be recovered from the current state
                continue
            for what, index, value in parse_rtnetlink(data):
                self._change(what, index, value, emit)

    def _change(self, what: str, index: int, value: Any, emit: Emit) -> None:
        if what == "link":
            name, up = value
            self._names[index] = name
            self._link(name, up, emit)
        elif what == "dellink":
            self._names.pop(index, None)
            self._up.pop(value, None)
            self._said.pop(value, None)
        else:
            name = self._names.get(index) or _index_name(index)
            if name is None:
                return
            if what == "deladdr":
                self._said.get(name, set()).discard(value)
            elif self._up.get(name) and not ipaddress.ip_address(value).is_link_local:
                self._say(name, value, emit)

    def _link(self, name: str, up: bool, emit: Emit) -> None:
        was = self._up.get(name, False)
        self._up[name] = up
        if up and not was:
            self._said[name] = set()
            self._say(name, first_address(name), emit)
        elif not up:
            self._said.pop(name, None)

    def _say(self, name: str, ip: str | None, emit: Emit) -> None:
        said = self._said.setdefault(name, set())
        if ip in said:
            return
        said.add(ip)
        kind = classify(self._src.sys_root, name)
        e = Event("iface.up", self._src.clock(), self.name, iface=Iface(name=name, kind=kind, ip=ip))
        log.info("iface.up %s (%s) %s", name, kind, ip or "-")
        self.health.saw(e.time or 0.0)
        emit(e)

    def _rescan(self, emit: Emit) -> None:
        try:
            names = sorted(p.name for p in self._net.iterdir())
        except OSError:
            return
        for name in names:
            try:
                up = bool(int(_read(self._net / name / "flags") or "0", 16) & IFF_UP)
            except ValueError:
                continue
            self._link(name, up, emit)
            if up and self.health.mode == "poll":
                ip = first_address(name)
                if ip is not None:
                    self._say(name, ip, emit)
        for gone in set(self._up) - set(names):
            self._up.pop(gone, None)
            self._said.pop(gone, None)

    def _bluetooth(self, emit: Emit) -> None:
        try:
            now = {p.name for p in (self._src.sys_root / "class" / "bluetooth").iterdir() if p.name.startswith("hci")}
        except OSError:
            now = set()
        for name in sorted(now - self._hci):
            e = Event("iface.up", self._src.clock(), self.name, iface=Iface(name=name, kind="bluetooth"))
            self.health.saw(e.time or 0.0)
            emit(e)
        self._hci = now


def _index_name(index: int) -> str | None:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None
