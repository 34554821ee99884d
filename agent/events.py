"""The event: one observed operation, with the field catalogue of DESIGN §4.

An event is a tree of immutable named tuples: cheap to build (one C-level
tuple per group), cheap to read (``e.process.pid`` is two slot loads) and
exactly comparable. A group that carries nothing is its empty instance, so
reading any field of any event is safe and yields ``None`` when unset.
"""

from __future__ import annotations

import json
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
    """A network operation. ``local_zone`` extends DESIGN §4 for 一机两网."""

    proto: str | None = None
    direction: str | None = None
    local_ip: str | None = None
    local_port: int | None = None
    remote_ip: str | None = None
    remote_port: int | None = None
    remote_zone: str | None = None
    domain: str | None = None
    local_zone: str | None = None


class File(NamedTuple):
    """A file operation; ``level`` from registry assets, ``marking`` from content."""

    path: str | None = None
    dest_path: str | None = None
    level: Level | None = None
    marking: Level | None = None
    owner_unit: str | None = None
    on_removable: bool | None = None


class Media(NamedTuple):
    """A removable medium; ``registered``, ``level``, ``holder`` from the registry."""

    device: str | None = None
    mount: str | None = None
    fs: str | None = None
    serial: str | None = None
    registered: bool | None = None
    level: Level | None = None
    holder: str | None = None


class Iface(NamedTuple):
    """A network interface. ``ip`` and ``zone`` extend DESIGN §4 for 一机两网."""

    name: str | None = None
    kind: str | None = None
    ip: str | None = None
    zone: str | None = None


GROUP_TYPES: dict[str, type[Any]] = {
    "process": Process, "parent": Parent, "operator": Operator, "host": Host,
    "net": Net, "file": File, "media": Media, "iface": Iface,
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
    detail: str | None = None  # free text of agent lifecycle events (extends DESIGN §4)

    def to_dict(self) -> dict[str, Any]:
        """The event as nested JSON-ready dicts, with only the fields set."""
        out: dict[str, Any] = {"event": {"kind": self.kind}}
        if self.time is not None:
            out["event"]["time"] = self.time
        if self.collector is not None:
            out["event"]["collector"] = self.collector
        if self.detail is not None:
            out["event"]["detail"] = self.detail
        for group in GROUP_TYPES:
            values = getattr(self, group)
            d = {k: _dump(v) for k, v in zip(values._fields, values, strict=True) if v is not None}
            if d:
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
    "known": "bool", "on_removable": "bool", "registered": "bool",
    "time": "float", "start_time": "float",
}
_INT_FIELDS = {"pid", "ppid", "uid", "loginuid", "local_port", "remote_port"}


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
