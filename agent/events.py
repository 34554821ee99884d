"""The event: one observed operation, with the field catalogue of DESIGN §4.

An event is a tree of immutable named tuples: cheap to build (one C-level
tuple per group), cheap to read (``e.process.pid`` is two slot loads) and
exactly comparable. A group that carries nothing is its empty instance, so
reading any field of any event is safe and yields ``None`` when unset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from agent.levels import Level, parse_level

KINDS: tuple[str, ...] = (
    "process.exec", "process.exit",
    "net.connect", "net.accept", "net.listen", "net.dns",
    "file.open", "file.write", "file.create", "file.delete", "file.rename",
    "media.mount", "media.unmount",
    "iface.up",
    "agent.start", "agent.stop", "agent.reload", "agent.tamper",
    "auth.login", "auth.sudo", "account.change", "agent.degraded",
    "inventory.package", "inventory.account", "inventory.service", "inventory.module", "assess.check",
    "policy.applied", "policy.refused",
)
KIND_SET = frozenset(KINDS)
IFACE_KINDS = ("wired", "wireless", "bluetooth", "ppp", "cellular", "loopback", "virtual")


class Process(NamedTuple):
    """The process behind an event, identified by (pid, start_time)."""

    pid: int | None = None
    ppid: int | None = None
    name: str | None = None
    exe: str | None = None
    cmdline: str | None = None
    cwd: str | None = None
    uid: int | None = None
    user: str | None = None
    loginuid: int | None = None
    start_time: float | None = None
    unit: str | None = None  # the systemd unit (cgroup) of a process with no login identity
    package: str | None = None  # the installed package its exe belongs to (file and account changes only)


class Parent(NamedTuple):
    """The parent of the process behind an event."""

    pid: int | None = None
    name: str | None = None
    exe: str | None = None
    cmdline: str | None = None


class Operator(NamedTuple):
    """The person who answers for the operation (谁运行谁负责)."""

    account: str | None = None
    name: str | None = None
    unit: str | None = None
    clearance: Level | None = None
    known: bool | None = None


class Host(NamedTuple):
    """The host and who is in charge of it (谁主管谁负责)."""

    id: str | None = None
    unit: str | None = None
    department: str | None = None
    custodian: str | None = None
    level: Level | None = None
    zone: str | None = None


class Net(NamedTuple):
    """A network operation. ``local_zone`` extends DESIGN §4 for 一机两网.

    ``dns_malformed`` (also beyond DESIGN §4) is True on a packet to port 53
    that is not a well-formed DNS query (a response, another opcode, too short,
    a question that does not parse): reported as traffic, not as a lookup.
    """

    proto: str | None = None
    direction: str | None = None
    local_ip: str | None = None
    local_port: int | None = None
    remote_ip: str | None = None
    remote_port: int | None = None
    remote_zone: str | None = None
    domain: str | None = None
    local_zone: str | None = None
    dns_malformed: bool | None = None


class File(NamedTuple):
    """A file operation; ``level`` from registry assets, ``marking`` from content.

    ``device`` ("major:minor") and ``inode`` identify the file whatever name it was
    reached by; ``source_path`` is the registered asset behind the operation when
    ``path`` is not its registered name (a hard link, a bind mount, another mount
    namespace, or a copy found by content or by what the process read before);
    ``sha256`` is the content's hash when it was computed.
    """

    path: str | None = None
    dest_path: str | None = None
    level: Level | None = None
    marking: Level | None = None
    owner_unit: str | None = None
    on_removable: bool | None = None
    device: str | None = None
    inode: int | None = None
    sha256: str | None = None
    source_path: str | None = None
    marking_status: str | None = None  # marked, unmarked, unreadable, skipped or unscanned (see collectors.marking)


class Media(NamedTuple):
    """A removable medium; ``registered``, ``level``, ``holder`` from the registry.

    ``serial`` is the device's own serial (USB or block device), else the
    filesystem's volume id; ``uuid`` is always the volume id, and ``vendor`` /
    ``product`` the USB ids. ``mismatch`` says why a medium that carries a
    registered identifier is still not the registered one.
    """

    device: str | None = None
    mount: str | None = None
    fs: str | None = None
    serial: str | None = None
    registered: bool | None = None
    level: Level | None = None
    holder: str | None = None
    vendor: str | None = None
    product: str | None = None
    usb_serial: str | None = None
    uuid: str | None = None
    mismatch: str | None = None


class Iface(NamedTuple):
    """A network interface. ``ip`` and ``zone`` extend DESIGN §4 for 一机两网."""

    name: str | None = None
    kind: str | None = None
    ip: str | None = None
    zone: str | None = None


class Auth(NamedTuple):
    """A login, a sudo, or an account change, from the records PAM, sshd, sudo, login and useradd send.

    ``account`` is the account logged into, sudo'd as, or changed; ``registered``
    (set by attribution) whether the registry names it as a person or service
    account; ``change`` what an ``account.change`` did (add, delete, modify,
    password, lock, unlock, group-add, group-delete, group-modify).
    """

    result: str | None = None  # success | failure
    method: str | None = None  # the PAM operation or the login's way in (password, publickey, ...)
    account: str | None = None
    source_ip: str | None = None
    tty: str | None = None
    service: str | None = None  # the program that reported it: sshd, login, su, sudo, useradd, ...
    change: str | None = None
    registered: bool | None = None


class Inventory(NamedTuple):
    """A change of the host's inventory: ``change`` is added, removed or changed (``previous``: the old version)."""

    name: str | None = None
    version: str | None = None
    change: str | None = None
    previous: str | None = None


class Assess(NamedTuple):
    """A configuration check whose result changed; ``items`` the L3-CES1 items, comma-separated."""

    check: str | None = None
    policy: str | None = None
    result: str | None = None
    items: str | None = None
    previous: str | None = None


GROUP_TYPES: dict[str, type[Any]] = {
    "process": Process, "parent": Parent, "operator": Operator, "host": Host,
    "net": Net, "file": File, "media": Media, "iface": Iface, "auth": Auth,
    "inventory": Inventory, "assess": Assess,
}
EMPTY: dict[str, Any] = {name: cls() for name, cls in GROUP_TYPES.items()}


class Event(NamedTuple):
    """One observed operation. Groups not given are empty, never ``None``."""

    kind: str
    time: float | None = None
    collector: str | None = None
    process: Process = Process()
    parent: Parent = Parent()
    operator: Operator = Operator()
    host: Host = Host()
    net: Net = Net()
    file: File = File()
    media: Media = Media()
    iface: Iface = Iface()
    auth: Auth = Auth()
    detail: str | None = None  # free text of agent lifecycle events (extends DESIGN §4)
    inventory: Inventory = Inventory()
    assess: Assess = Assess()

    def to_dict(self) -> dict[str, Any]:
        """The event as nested JSON-ready dicts, with only the fields set."""
        out: dict[str, Any] = {"event": {"kind": self.kind}}
        if self.time is not None:
            out["event"]["time"] = self.time
        if self.collector is not None:
            out["event"]["collector"] = self.collector
        if self.detail is not None:
            out["event"]["detail"] = self.detail
        for group, names, empty, levels in _DICT_PLAN:
            values = getattr(self, group)
            if values == empty:  # most groups of an event are not given: skip them in one comparison
                continue
            d = {k: v for k, v in zip(names, values, strict=True) if v is not None}
            if d:
                for name in levels:
                    if name in d:
                        d[name] = _dump(d[name])
                out[group] = d
        return out

    def to_json(self) -> str:
        """Compact JSON of ``to_dict``, keys sorted, UTF-8 text kept as is."""
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        """Build an event from its dict form; ValueError names a bad field."""
        return event_from_dict(data)

    @classmethod
    def from_json(cls, text: str) -> Event:
        """Build an event from its JSON form."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("an event is a JSON object")
        return event_from_dict(data)

    def field(self, dotted: str) -> Any:
        """The value of a catalogue field such as ``process.pid``."""
        group, _, name = dotted.partition(".")
        if group == "event":
            return getattr(self, name)
        return getattr(getattr(self, group), name)


def _dump(v: Any) -> Any:
    return str(v) if isinstance(v, Level) else v


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of the catalogue: its group, name and value type."""

    group: str
    name: str
    type: str  # str | int | float | bool | level

    @property
    def dotted(self) -> str:
        """The name rules use, such as ``process.pid``."""
        return f"{self.group}.{self.name}"


_TYPE_OVERRIDES = {
    "level": "level", "clearance": "level", "marking": "level",
    "known": "bool", "on_removable": "bool", "registered": "bool", "dns_malformed": "bool",
    "time": "float", "start_time": "float",
}
_INT_FIELDS = {"pid", "ppid", "uid", "loginuid", "local_port", "remote_port", "inode"}


def _type_of(name: str) -> str:
    if name in _TYPE_OVERRIDES:
        return _TYPE_OVERRIDES[name]
    return "int" if name in _INT_FIELDS else "str"


FIELDS: dict[str, FieldSpec] = {}
for _f in ("kind", "time", "collector", "detail"):
    FIELDS[f"event.{_f}"] = FieldSpec("event", _f, _type_of(_f))
for _g, _cls in GROUP_TYPES.items():
    for _f in _cls._fields:
        FIELDS[f"{_g}.{_f}"] = FieldSpec(_g, _f, _type_of(_f))
GROUPS = ("event", *GROUP_TYPES)
# Event.to_dict per group: its name, its field names, the empty group, and the fields that may
# hold a Level (shown by name).
_DICT_PLAN = tuple((g, cls._fields, EMPTY[g],
                    tuple(f for f in cls._fields if _type_of(f) == "level"))
                   for g, cls in GROUP_TYPES.items())


def _coerce(spec: FieldSpec, value: Any) -> Any:
    if value is None:
        return None
    t = spec.type
    if t == "str":
        if isinstance(value, str):
            return value
    elif t == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif t == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t == "bool":
        if isinstance(value, bool):
            return value
    elif t == "level":
        return parse_level(value)
    raise ValueError(f"{spec.dotted} must be {t}, not {type(value).__name__} {value!r}")


def event_from_dict(data: dict[str, Any]) -> Event:
    """Build an event from nested dicts as ``Event.to_dict`` writes them."""
    unknown = [k for k in data if k not in GROUPS]
    if unknown:
        raise ValueError(f"unknown event group {unknown[0]!r}")
    head = data.get("event") or {}
    if not isinstance(head, dict):
        raise ValueError("event must be a mapping")
    for k in head:
        if f"event.{k}" not in FIELDS:
            raise ValueError(f"unknown field event.{k}")
    kind = head.get("kind")
    if kind not in KIND_SET:
        raise ValueError(f"event.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    groups: dict[str, Any] = {}
    for group, cls in GROUP_TYPES.items():
        raw = data.get(group)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise ValueError(f"{group} must be a mapping")
        values = {}
        for k, v in raw.items():
            spec = FIELDS.get(f"{group}.{k}")
            if spec is None:
                raise ValueError(f"unknown field {group}.{k}")
            values[k] = _coerce(spec, v)
        groups[group] = cls(**values)
    return Event(
        kind=kind,
        time=_coerce(FIELDS["event.time"], head.get("time")),
        collector=_coerce(FIELDS["event.collector"], head.get("collector")),
        detail=_coerce(FIELDS["event.detail"], head.get("detail")),
        **groups,
    )



class EventDecoder:
    """The JSON text of one event to an Event: ``Event.from_json``'s result and errors, decoded in C.

    msgspec parses and type-checks the text in one pass into structs
    generated from the field catalogue (so they cannot drift from it); the
    structs become the event's named tuples directly. Whatever msgspec does
    not accept as is (a bad value, a level name to convert, JSON it rejects)
    goes through ``Event.from_json``, so errors, and the odd values the
    standard parser accepts, read exactly as there. About five times faster
    than ``from_json`` on typical events.
    """

    def __init__(self, finish: Callable[..., Event] | None = None) -> None:
        """``finish`` builds the event from its thirteen parts (Event's order): attribution can do it directly."""
        import msgspec  # the recording and central paths need it, the agent's import does not

        # Level fields arrive as names and need parse_level: typed as null here, a name
        # makes msgspec refuse the text, which then takes the full path.
        py = {"str": str, "int": int, "float": float, "bool": bool, "level": None}

        def struct(name: str, fields: list[tuple[Any, ...]]) -> Any:
            # gc=False: the structs hold only scalars and live for one event.
            return msgspec.defstruct(name, fields, forbid_unknown_fields=True, gc=False)

        def optional(t: Any) -> Any:
            return None if t is None else t | None

        groups = {g: struct(f"{g}_fields", [(f, optional(py[FIELDS[f"{g}.{f}"].type]), None) for f in cls._fields])
                  for g, cls in GROUP_TYPES.items()}
        head = struct("event_fields", [("kind", str), ("time", float | None, None),
                                       ("collector", str | None, None), ("detail", str | None, None)])
        top = struct("event_json", [("event", head), *((g, s | None, None) for g, s in groups.items())])
        assert tuple(GROUP_TYPES) == ("process", "parent", "operator", "host", "net", "file", "media", "iface",
                                      "auth", "inventory", "assess")
        self.decode = _decoder(msgspec.json.Decoder(top).decode, msgspec.DecodeError, msgspec.structs.astuple,
                               finish if finish is not None else _event_of)

    def __call__(self, text: bytes | str) -> Event:
        """The event of one JSON text; ValueError names the problem."""
        return self.decode(text)


def _decoder(decode: Callable[[bytes | str], Any], error: type[Exception], astuple: Callable[[Any], tuple[Any, ...]],
             finish: Callable[..., Event]) -> Callable[[bytes | str], Event]:
    """The decoding function, everything it uses bound as locals of a closure: it runs once per event."""
    new = tuple.__new__
    e1, e2, e3, e4 = _EMPTY_PROCESS, _EMPTY_PARENT, _EMPTY_OPERATOR, _EMPTY_HOST
    e5, e6, e7, e8, e9 = _EMPTY_NET, _EMPTY_FILE, _EMPTY_MEDIA, _EMPTY_IFACE, _EMPTY_AUTH
    e10, e11 = Inventory(), Assess()
    kinds = KIND_SET

    def slow(text: bytes | str) -> Event:
        return finish(*Event.from_json(text.decode("utf-8") if isinstance(text, bytes) else text))

    def decode_event(text: bytes | str) -> Event:
        try:
            top = decode(text)
        except error:  # msgspec.DecodeError, also the base of its ValidationError
            return slow(text)
        # One C call unpacks each level; the groups in GROUP_TYPES order (checked by the caller).
        head, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11 = astuple(top)
        kind, etime, collector, detail = astuple(head)
        if kind not in kinds or g10 is not None or g11 is not None:  # inventory and assessment records are rare
            return slow(text)
        return finish(
            kind, etime, collector,
            e1 if g1 is None else new(Process, astuple(g1)),
            e2 if g2 is None else new(Parent, astuple(g2)),
            e3 if g3 is None else new(Operator, astuple(g3)),
            e4 if g4 is None else new(Host, astuple(g4)),
            e5 if g5 is None else new(Net, astuple(g5)),
            e6 if g6 is None else new(File, astuple(g6)),
            e7 if g7 is None else new(Media, astuple(g7)),
            e8 if g8 is None else new(Iface, astuple(g8)),
            e9 if g9 is None else new(Auth, astuple(g9)),
            detail, e10, e11)

    return decode_event


def _event_of(*parts: Any) -> Event:
    event: Event = tuple.__new__(Event, parts)
    return event


_EMPTY_PROCESS, _EMPTY_PARENT, _EMPTY_OPERATOR, _EMPTY_HOST = Process(), Parent(), Operator(), Host()
_EMPTY_NET, _EMPTY_FILE, _EMPTY_MEDIA, _EMPTY_IFACE, _EMPTY_AUTH = Net(), File(), Media(), Iface(), Auth()
