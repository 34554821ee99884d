"""Which registered medium a mounted one is: the device and the filesystem must both agree.

A stick's filesystem volume id is whatever ``mkfs`` was told (``mkfs.vfat
-i``, ``mkfs.ext4 -U``, ``tune2fs -U``), so it cannot prove which stick is in
the port. The device's serial (the USB device's, or the block device's own)
and its USB vendor:product ids are the other half. A medium is registered when
an entry's serial names its device (for a device with no serial of its own:
its volume id) and every further id the entry gives (uuid, vendor, product)
matches. A medium that carries a registered identifier but is not that
medium is unregistered, and the reason says which identifier it borrowed.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.events import Media
from agent.registry import Medium


def device_serial(m: Media) -> str | None:
    """The serial of the device itself, not of its filesystem (None for a device that has none)."""
    if m.usb_serial:
        return m.usb_serial
    if m.serial and m.serial != m.uuid:
        return m.serial
    return None


def _matches(e: Medium, m: Media) -> bool:
    own = device_serial(m)
    if own is not None:
        if e.serial != own:
            return False
    elif e.serial not in (m.uuid, m.serial):
        return False
    if e.uuid is not None and (m.uuid is None or e.uuid.lower() != m.uuid.lower()):
        return False
    if e.vendor is not None and (m.vendor or "").lower() != e.vendor:
        return False
    return not (e.product is not None and (m.product or "").lower() != e.product)


def _shares(e: Medium, m: Media) -> bool:
    ids = {x.lower() for x in (m.serial, m.usb_serial, m.uuid) if x}
    return e.serial.lower() in ids or (e.uuid is not None and e.uuid.lower() in ids)


def _describe(m: Media) -> str:
    own = device_serial(m)
    usb = f" (USB {m.vendor}:{m.product})" if m.vendor or m.product else ""
    device = f"device serial {own}{usb}" if own else f"a device with no serial of its own{usb}"
    return f"{device}, filesystem {m.uuid or '-'}"


def identify(m: Media, entries: Iterable[Medium]) -> tuple[Medium | None, str | None]:
    """The registry entry medium ``m`` is, or None and, when it borrows a registered id, why it is not that one."""
    borrowed = None
    for e in entries:
        if _matches(e, m):
            return e, None
        if borrowed is None and _shares(e, m):
            borrowed = e
    if borrowed is None:
        return None, None
    name = borrowed.label or borrowed.serial
    want = [f"serial {borrowed.serial}"] + [f"{k} {v}" for k, v in (("filesystem", borrowed.uuid),
                                                                   ("vendor", borrowed.vendor),
                                                                   ("product", borrowed.product)) if v]
    return None, f"carries an identifier of registered medium {name} ({', '.join(want)}) but is {_describe(m)}"
