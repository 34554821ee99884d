"""Host inventory: packages, accounts and groups, enabled services, kernel modules, listening
sockets and USB storage history; and the changes between two inventories as events.

A snapshot is plain JSON (kept as ``inventory.json`` in the state directory).
The diff of two snapshots is ``inventory.package``, ``inventory.account``,
``inventory.service`` and ``inventory.module`` events that rules judge like
any other (an account no person answers for, remote-control software, a
module outside the allowed set).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from agent.assess import hostdata
from agent.assess.rootfs import ProbeError, RootFS
from agent.events import Event, Inventory, Process

MAX_USB_RECORDS = 500


def snapshot(fs: RootFS, commands: bool | None = None) -> dict[str, Any]:
    """The inventory of the host at ``fs``; a part that cannot be read is listed under ``errors``."""
    out: dict[str, Any] = {"time": time.time(), "errors": {}}

    def part(name: str, make: Any) -> None:
        try:
            out[name] = make()
        except (ProbeError, OSError, ValueError) as exc:
            out[name] = None
            out["errors"][name] = str(exc)

    part("packages", lambda: hostdata.packages(fs))
    part("accounts", lambda: {a.name: {"uid": a.uid, "gid": a.gid, "shell": a.shell, "home": a.home}
                              for a in hostdata.accounts(fs)})
    part("groups", lambda: {g.name: {"gid": g.gid, "members": list(g.members)} for g in hostdata.groups(fs)})
    part("services", lambda: hostdata.enabled_units(fs))
    part("modules", lambda: sorted(hostdata.loaded_modules(fs)))
    part("listening", lambda: [{"proto": s.proto, "address": s.address, "port": s.port, "process": s.process}
                               for s in hostdata.listeners(fs)])
    part("usb_storage", lambda: usb_storage_history(fs, fs.live if commands is None else commands))
    return out


_NEW_DEVICE = re.compile(r"usb (\S+): New USB device found, idVendor=(\w+), idProduct=(\w+)")
_FIELD = re.compile(r"usb (\S+): (Product|Manufacturer|SerialNumber): (.*)$")
_STORAGE = re.compile(r"usb-storage (\S+?):[\d.]+: USB Mass Storage device detected|"
                      r"uas (\S+?):[\d.]+: UAS is supported|scsi host\d+: usb-storage (\S+?):")


def parse_usb_log(lines: list[str]) -> list[dict[str, str]]:
    """USB mass-storage attachments in kernel log lines: time, port, vendor, product ids, names, serial."""
    devices: dict[str, dict[str, str]] = {}
    out: list[dict[str, str]] = []
    for line in lines:
        m = _NEW_DEVICE.search(line)
        if m:
            devices[m.group(1)] = {"time": line[:m.start()].strip()[:40], "port": m.group(1),
                                   "vendor_id": m.group(2), "product_id": m.group(3)}
            continue
        m = _FIELD.search(line)
        if m and m.group(1) in devices:
            devices[m.group(1)][m.group(2).lower()] = m.group(3).strip()[:128]
            continue
        m = _STORAGE.search(line)
        if m:
            port = next(g for g in m.groups() if g)
            d = devices.pop(port, {"time": line[:m.start()].strip()[:40], "port": port})
            out.append(d)
    return out[-MAX_USB_RECORDS:]


def usb_storage_history(fs: RootFS, commands: bool) -> list[dict[str, str]]:
    """USB storage history from the journal (live host, bounded command) or the root's kern.log files."""
    lines: list[str] = []
    for name in sorted(fs.listdir("/var/log"), reverse=True):
        if name == "kern.log" or re.fullmatch(r"kern\.log\.\d+", name):
            try:
                lines += fs.lines(f"/var/log/{name}") or []
            except ProbeError:
                continue
    if commands:
        from agent.assess.command import run_bounded
        # Every boot the journal keeps, kernel messages only; bounded like any probe command.
        argv = ["journalctl", "-k", "--no-pager", "-o", "short-iso", "-q"]
        res = run_bounded([*argv, "--grep", "usb|USB|uas"], timeout=15, max_bytes=32 * 1024 * 1024)
        if res.error is None and res.returncode not in (0, 1):  # a journalctl built without pattern support
            res = run_bounded([*argv, "-b", "-0"], timeout=15, max_bytes=32 * 1024 * 1024)
        if res.error is None:
            lines += res.stdout.splitlines()
    return parse_usb_log(lines)


def _items(snap: dict[str, Any], key: str) -> dict[str, str] | None:
    v = snap.get(key)
    if v is None:
        return None
    if key == "packages":
        return {str(k): str(x) for k, x in v.items()}
    if key == "accounts":
        return {str(k): f"uid={x['uid']} gid={x['gid']} shell={x['shell']} home={x['home']}" for k, x in v.items()}
    if key == "services":
        return {str(k): str(x) for k, x in v.items()}
    if key == "modules":
        return {str(k): "" for k in v}
    return None


_KINDS = {"packages": "inventory.package", "accounts": "inventory.account", "services": "inventory.service",
          "modules": "inventory.module"}


def diff(previous: dict[str, Any] | None, current: dict[str, Any], now: float | None = None) -> list[Event]:
    """Change events between two snapshots; none against no previous one (the first is the baseline).

    A part that could not be read in either snapshot yields no events (an
    unreadable package database is not every package removed).
    """
    if previous is None:
        return []
    when = time.time() if now is None else now
    out: list[Event] = []
    for key, kind in _KINDS.items():
        old, new = _items(previous, key), _items(current, key)
        if old is None or new is None:
            continue
        accounts = current.get("accounts") or {}
        old_accounts = previous.get("accounts") or {}
        for name in sorted(new.keys() - old.keys()):
            out.append(_event(kind, when, name, new[name], "added", None, accounts.get(name)))
        for name in sorted(old.keys() - new.keys()):
            out.append(_event(kind, when, name, old[name], "removed", None, old_accounts.get(name)))
        for name in sorted(k for k in new.keys() & old.keys() if new[k] != old[k]):
            out.append(_event(kind, when, name, new[name], "changed", old[name], accounts.get(name)))
    return out


def _event(kind: str, when: float, name: str, version: str, change: str, previous: str | None,
           account: dict[str, Any] | None) -> Event:
    proc = Process()
    if kind == "inventory.account" and account is not None:
        # The account itself is who answers for it: attribution finds its person or custodian, or no one.
        proc = Process(uid=int(account["uid"]), user=name)
    return Event(kind, when, "inventory", process=proc,
                 inventory=Inventory(name, version or None, change, previous or None))


def load_snapshot(path: Path) -> dict[str, Any] | None:
    """The last kept snapshot, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_snapshot(path: Path, snap: dict[str, Any]) -> None:
    """Keep a snapshot for the next diff (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(snap, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
