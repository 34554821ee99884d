"""Audit record text: ``audit(SEC.MS:SERIAL): key=value ...`` to a header and a field map.

Values come in three spellings: ``"quoted"`` (a string with nothing odd in
it), bare hex (a string the kernel hex-encoded because it holds spaces,
quotes, control or non-ASCII bytes: a hostile file name must not forge
fields), and plain numbers or words. User-space records (PAM, sudo,
useradd) wrap their own fields in ``msg='...'``; those are flattened into
the same map. Decoding is pure so it is tested without a kernel.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import NamedTuple

_HEAD = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\):\s?")
_FIELD = re.compile(r"""([^\s=]+)=("[^"]*"|'[^']*'|\S*)""")
_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
# The kernel writes a SYSCALL record's fields in one order (audit_log_exit, then audit_log_task_info); the
# ones events use are taken in one anchored match instead of splitting all thirty (a third of the cost of an
# exec's records). The filter key is always last. A record of another shape is read field by field.
_SYSCALL = re.compile(
    r"arch=(?P<arch>[0-9a-f]+) syscall=(?P<syscall>\d+)(?: success=(?P<success>\w+) exit=(?P<exit>-?\d+))?"
    r" a0=(?P<a0>[0-9a-f]+) a1=(?P<a1>[0-9a-f]+) a2=(?P<a2>[0-9a-f]+) a3=[0-9a-f]+ items=\d+"
    r" ppid=(?P<ppid>\d+) pid=(?P<pid>\d+) auid=(?P<auid>\d+) uid=(?P<uid>\d+) gid=\d+ euid=\d+ suid=\d+"
    r" fsuid=\d+ egid=\d+ sgid=\d+ fsgid=\d+ tty=\S+ ses=\d+ comm=(?P<comm>\S+) exe=(?P<exe>\S+)")
# A PATH record: item and name first, then (for a name that resolved) inode and device; the name type later.
_PATH = re.compile(r"item=(?P<item>\d+) name=(?P<name>\S+)(?: inode=(?P<inode>\d+) dev=(?P<dev>[0-9a-f:]+))?")
SYSCALL_TYPE, PATH_TYPE = 1300, 1302

UNSET_ID = 4294967295


class Record(NamedTuple):
    """One audit record: its type, time, serial and raw fields (values as the kernel spelled them).

    A kernel SYSCALL or PATH record of the usual shape holds only the fields events use (see ``_SYSCALL``,
    ``_PATH``); any other record holds all of its fields.
    """

    type: int
    time: float
    serial: int
    fields: dict[str, str]
    text: bytes


def serial_of(payload: bytes) -> int | None:
    """The serial of a record (``audit(SEC.MS:SERIAL): ...``) without reading the rest; None if malformed."""
    if not payload.startswith(b"audit("):
        return None
    end = payload.find(b")", 6)
    colon = payload.rfind(b":", 6, end)
    if end < 0 or colon < 0:
        return None
    try:
        return int(payload[colon + 1:end])
    except ValueError:
        return None


def parse_record(rtype: int, payload: bytes, full: bool = True) -> Record | None:
    """The record of one message, or None if it has no ``audit(...)`` header.

    With ``full`` False only the header is read (the fields map is empty; ``parse_record(r.type, r.text)``
    reads them later): for records whose fields are rarely wanted, such as every exec's PROCTITLE.
    """
    m = _HEAD.match(payload)
    if m is None:
        return None
    secs, millis, serial = m.groups()
    when = int(secs) + int(millis) / 1000.0
    if not full:
        return Record(rtype, when, int(serial), {}, payload)
    body = payload[m.end():].decode("utf-8", "backslashreplace")
    if rtype == SYSCALL_TYPE:
        sc = _SYSCALL.match(body)
        key = body.rfind(" key=")
        if sc is not None and key > sc.end():
            found = {k: v for k, v in sc.groupdict().items() if v is not None}
            found["key"] = body[key + 5:].rstrip()
            return Record(rtype, when, int(serial), found, payload)
    elif rtype == PATH_TYPE:
        pm = _PATH.match(body)
        kind = body.find(" nametype=")
        if pm is not None:
            found = {k: v for k, v in pm.groupdict().items() if v is not None}
            if kind >= 0:
                found["nametype"] = body[kind + 10:].split(" ", 1)[0]
            return Record(rtype, when, int(serial), found, payload)
    # One C-level pass; a record names each key once (user-space ones wrap theirs in msg='...').
    fields: dict[str, str] = dict(_FIELD.findall(body))
    msg = fields.get("msg")
    if msg is not None and msg.startswith("'"):
        del fields["msg"]
        for k, v in _FIELD.findall(msg[1:-1]):
            fields.setdefault(k, v)
    return Record(rtype, when, int(serial), fields, payload)


def text(raw: str | None) -> str | None:
    """A string field's value: quotes removed, hex decoded, ``(null)`` and ``?`` as None."""
    if raw is None or raw in ("(null)", "?", ""):
        return None
    if raw[0] in "\"'":
        return raw[1:-1]
    if _HEX.match(raw):
        return bytes.fromhex(raw).decode("utf-8", "backslashreplace")
    return raw


def raw_bytes(raw: str | None) -> bytes:
    """A string field's value as bytes (hex decoded, quotes removed)."""
    if not raw or raw == "(null)":
        return b""
    if raw[0] in "\"'":
        return raw[1:-1].encode()
    if _HEX.match(raw):
        return bytes.fromhex(raw)
    return raw.encode()


def number(raw: str | None, base: int = 10) -> int | None:
    """An integer field, or None when absent or not a number."""
    if raw is None:
        return None
    try:
        return int(raw, base)
    except ValueError:
        return None


def ident(raw: str | None) -> int | None:
    """A uid/auid field; the unset id (4294967295, also spelled -1) is None."""
    n = number(raw)
    if n is None or n in (UNSET_ID, -1):
        return None
    return n


def keys(raw: str | None) -> tuple[str, ...]:
    """The filter keys of a SYSCALL record (several are joined by \\x01)."""
    t = text(raw)
    return tuple(t.split("\x01")) if t else ()


def sockaddr(raw: str | None) -> tuple[str, str | None, int | None]:
    """(family, address, port) of a SOCKADDR record's ``saddr``: inet, inet6, unix, netlink or other."""
    data = raw_bytes(raw) if raw and not raw.startswith("{") else b""
    if len(data) < 2:
        return "other", None, None
    fam = struct.unpack_from("=H", data)[0]
    if fam == 2 and len(data) >= 8:
        port = struct.unpack_from("!H", data, 2)[0]
        return "inet", str(ipaddress.IPv4Address(data[4:8])), port
    if fam == 10 and len(data) >= 24:
        port = struct.unpack_from("!H", data, 2)[0]
        addr = ipaddress.IPv6Address(data[8:24])
        mapped = addr.ipv4_mapped
        return "inet6", str(mapped if mapped is not None else addr), port
    if fam == 1:
        return "unix", data[2:].split(b"\0")[0].decode("utf-8", "backslashreplace") or None, None
    if fam == 16:
        return "netlink", None, None
    return "other", None, None


def argv(fields: dict[str, str]) -> list[str]:
    """The arguments of an EXECVE record, long ones reassembled from their ``aN[i]`` pieces."""
    return [a.decode("utf-8", "backslashreplace") for a in argv_bytes(fields)]


def argv_bytes(fields: dict[str, str]) -> list[bytes]:
    """The arguments of an EXECVE record as the program got them (bytes)."""
    argc = number(fields.get("argc")) or 0
    out: list[bytes] = []
    for i in range(argc):
        whole = fields.get(f"a{i}")
        if whole is not None:
            out.append(raw_bytes(whole))
            continue
        parts: list[bytes] = []
        j = 0
        while (piece := fields.get(f"a{i}[{j}]")) is not None:
            parts.append(bytes.fromhex(piece) if _HEX.match(piece) else raw_bytes(piece))
            j += 1
        if not parts and f"a{i}_len" not in fields:
            break  # the rest was in a record we did not get
        out.append(b"".join(parts))
    return out


def proctitle(raw: str | None) -> list[str]:
    """The arguments of a PROCTITLE record (NUL-separated, the kernel cuts it at 128 bytes)."""
    data = raw_bytes(raw)
    return [a.decode("utf-8", "backslashreplace") for a in data.split(b"\0") if a] if data else []


def device(raw: str | None) -> str | None:
    """A PATH record's ``dev`` (hex ``fe:00``) as ``major:minor`` in decimal, as /proc/self/mountinfo has it."""
    t = text(raw) if raw is not None and not raw.count(":") else raw
    if not t or ":" not in t:
        return None
    major, _, minor = t.partition(":")
    try:
        return f"{int(major, 16)}:{int(minor, 16)}"
    except ValueError:
        return None
