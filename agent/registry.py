"""The registry: who is responsible for what (DESIGN §6).

Loaded once from ``registry.yaml``, validated with a location for every
problem, then read-only. Lookups the attribution stage makes per event
(zone of an address, level of a path) are precomputed here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import LoadError, Location, Problems
from agent.events import Host
from agent.globs import compile_glob, literal_prefix
from agent.levels import Level, parse_level
from agent.schema import expect_int, expect_list, expect_map, expect_str, str_list
from agent.yamlsrc import LDict, load_file

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Unit:
    """An operating unit (运行单位) and where its alerts go."""

    name: str
    department: str | None = None
    contact: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Department:
    """A supervising department (主管部门) and where escalations go."""

    name: str
    contact: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Person:
    """A person who can operate hosts, with a clearance."""

    account: str
    name: str
    uid: int | None = None
    unit: str | None = None
    clearance: Level | None = None


_UNIT_GLOB = re.compile(r"[A-Za-z0-9:_.\\@*?\[\]-]+\.(?:service|scope|slice|socket|timer|mount|\*)")


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """An account no person logs into, answered for by its custodian."""

    account: str
    custodian: str
    unit: str | None = None  # a systemd unit name or glob (``cron.service``, ``app-*.service``)


@dataclass(frozen=True, slots=True)
class Asset:
    """Classified data at a path glob, owned by a unit."""

    path: str
    level: Level
    unit: str | None
    pattern: re.Pattern[str]
    prefix: str


@dataclass(frozen=True, slots=True)
class Medium:
    """A registered removable medium.

    ``serial`` is the device's own serial (for a device that has none, its
    filesystem's volume id); ``uuid`` (the volume id) and ``vendor`` /
    ``product`` (USB ids, four hex digits), when given, must match too.
    """

    serial: str
    level: Level | None
    holder: str | None
    label: str | None = None
    uuid: str | None = None
    vendor: str | None = None
    product: str | None = None


class ZoneMap:
    """Network zones by CIDR; the longest prefix wins, IPv4 and IPv6 (an IPv4-mapped address as IPv4).

    An address is parsed to an integer in C (``inet_pton``, then
    ``int.from_bytes``) and looked up in one dictionary per prefix length,
    longest first: no ``ipaddress`` objects on the per-event path. Text
    that ``inet_pton`` refuses (an address with a scope, a malformed one) is
    judged by ``ipaddress``, so the answers are ``ipaddress``'s own.
    """

    def __init__(self, default: str, networks: list[tuple[str, IPNetwork]]) -> None:
        self.default = default
        self.names = frozenset([default, *(name for name, _ in networks)])
        self.networks = tuple(networks)  # (zone, CIDR) as written: what an enforcement blocks or keeps open
        tables: dict[int, dict[int, dict[int, str]]] = {4: {}, 6: {}}
        for name, net in networks:
            tables[net.version].setdefault(net.prefixlen, {})[int(net.network_address)] = name
        # (bits to drop, table) per prefix length, longest first: the key of a value is value >> shift.
        self._v4 = tuple((32 - plen, {k >> (32 - plen): z for k, z in t.items()})
                         for plen, t in sorted(tables[4].items(), reverse=True))
        self._v6 = tuple((128 - plen, {k >> (128 - plen): z for k, z in t.items()})
                         for plen, t in sorted(tables[6].items(), reverse=True))

    def lookup(self, ip: str) -> str | None:
        """The zone of an address; None if the text is not an address."""
        try:
            if ":" in ip:
                value = _from_bytes(_pton(_AF_INET6, ip), "big")
                if value >> 32 != 0xFFFF:
                    return self.zone6(value)
                value &= 0xFFFFFFFF  # IPv4-mapped (::ffff:0:0/96): the IPv4 address's zone
            else:
                value = _from_bytes(_pton(_AF_INET, ip), "big")
        except (OSError, ValueError, TypeError):
            return self._lookup_text(ip)
        return self.zone4(value)

    def zone4(self, value: int) -> str:
        """The zone of an IPv4 address given as an integer."""
        for shift, table in self._v4:
            zone = table.get(value >> shift)
            if zone is not None:
                return zone
        return self.default

    def zone6(self, value: int) -> str:
        """The zone of an IPv6 address given as an integer (IPv4-mapped ones are not mapped here)."""
        for shift, table in self._v6:
            zone = table.get(value >> shift)
            if zone is not None:
                return zone
        return self.default

    def _lookup_text(self, ip: str) -> str | None:
        # What inet_pton refuses: a scoped address (fe80::1%eth0), or not an address at all.
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is None:
                return self.zone6(int(addr))
            addr = addr.ipv4_mapped
        return self.zone4(int(addr))


_pton = socket.inet_pton
_from_bytes = int.from_bytes
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


@dataclass(frozen=True)
class Registry:
    """Everything the registry file says, validated."""

    path: str
    host: Host
    units: tuple[Unit, ...] = ()
    departments: tuple[Department, ...] = ()
    people: tuple[Person, ...] = ()
    service_accounts: tuple[ServiceAccount, ...] = ()
    zones: ZoneMap = field(default_factory=lambda: ZoneMap("internet", []))
    assets: tuple[Asset, ...] = ()
    media: tuple[Medium, ...] = ()
    # The shipped example (``example: true``): its people and units are made up, so the agent
    # attributes nothing to it and monitors nothing until the admin replaces it.
    example: bool = False

    def person_by_account(self) -> dict[str, Person]:
        """People keyed by account name."""
        return {p.account: p for p in self.people}

    def unit(self, name: str | None) -> Unit | None:
        """The unit of that name, if registered."""
        return next((u for u in self.units if u.name == name), None)

    def department(self, name: str | None) -> Department | None:
        """The department of that name, if registered."""
        return next((d for d in self.departments if d.name == name), None)


def _contact(value: Any, where: Location, problems: Problems, what: str) -> dict[str, str]:
    if value is None:
        return {}
    m = expect_map(value, where, problems, what, optional=("email", "webhook", "phone", "wecom", "name"))
    if m is None:
        return {}
    return {k: str(v) for k, v in m.items() if expect_str(v, m.at(k), problems, f"{what}.{k}")}


def _level(value: Any, where: Location, problems: Problems, allow_none: bool = True) -> Level | None:
    if value is None and allow_none:
        return None
    try:
        return parse_level(value)
    except ValueError as exc:
        problems.add(where, str(exc))
        return None


def _items(doc: LDict, key: str, problems: Problems) -> list[tuple[LDict, int]]:
    seq = expect_list(doc.get(key, _EMPTY), doc.at(key), problems, key) if key in doc else None
    if seq is None:
        return []
    out = []
    for i, item in enumerate(seq):
        m = item if isinstance(item, LDict) else None
        if m is None:
            problems.add(seq.at(i), f"{key}[{i}] must be a mapping")
            continue
        out.append((m, i))
    return out


_EMPTY: list[Any] = []
_HOST_KEYS = ("id", "unit", "department", "custodian", "level", "zone")


def parse_registry(doc: Any, path: str) -> Registry:
    """Validate a loaded registry document; raise LoadErrors listing every problem."""
    problems = Problems()
    top = expect_map(doc, Location(path, 1, 1), problems, "registry", required=("host",),
                     optional=("example", "units", "departments", "people", "service_accounts", "zones",
                               "assets", "media"))
    if top is None:
        problems.raise_if_any()
        raise AssertionError("unreachable")
    h = expect_map(top.get("host"), top.at("host"), problems, "host", required=("id",), optional=_HOST_KEYS)
    host = Host()
    if h is not None:
        host = Host(
            id=expect_str(h.get("id"), h.at("id"), problems, "host.id"),
            unit=expect_str(h.get("unit"), h.at("unit"), problems, "host.unit", allow_none=True),
            department=expect_str(h.get("department"), h.at("department"), problems,
                                  "host.department", allow_none=True),
            custodian=expect_str(h.get("custodian"), h.at("custodian"), problems,
                                 "host.custodian", allow_none=True),
            level=_level(h.get("level"), h.at("level"), problems),
            zone=expect_str(h.get("zone"), h.at("zone"), problems, "host.zone", allow_none=True),
        )
    departments = []
    for m, i in _items(top, "departments", problems):
        expect_map(m, m.where, problems, f"departments[{i}]", required=("name",), optional=("contact",))
        name = expect_str(m.get("name"), m.at("name"), problems, "department name")
        if name:
            departments.append(Department(name, _contact(m.get("contact"), m.at("contact"), problems,
                                                         "contact")))
    units = []
    for m, i in _items(top, "units", problems):
        expect_map(m, m.where, problems, f"units[{i}]", required=("name",),
                   optional=("department", "contact"))
        name = expect_str(m.get("name"), m.at("name"), problems, "unit name")
        dept = expect_str(m.get("department"), m.at("department"), problems, "unit department",
                          allow_none=True)
        if name:
            units.append(Unit(name, dept, _contact(m.get("contact"), m.at("contact"), problems, "contact")))
    unit_names = {u.name for u in units}
    people: list[Person] = []
    for m, i in _items(top, "people", problems):
        expect_map(m, m.where, problems, f"people[{i}]", required=("account", "name"),
                   optional=("uid", "unit", "clearance"))
        account = expect_str(m.get("account"), m.at("account"), problems, "account")
        pname = expect_str(m.get("name"), m.at("name"), problems, "name")
        uid = expect_int(m["uid"], m.at("uid"), problems, "uid", 0, 2**32 - 2) if "uid" in m else None
        punit = expect_str(m.get("unit"), m.at("unit"), problems, "unit", allow_none=True)
        if punit and unit_names and punit not in unit_names:
            problems.add(m.at("unit"), f"unit {punit!r} is not listed under units")
        if account and pname:
            if any(p.account == account for p in people):
                problems.add(m.at("account"), f"duplicate account {account!r}")
            if uid is not None and any(p.uid == uid for p in people):
                problems.add(m.at("uid"), f"duplicate uid {uid}")
            people.append(Person(account, pname, uid, punit, _level(m.get("clearance"),
                                                                   m.at("clearance"), problems)))
    accounts = {p.account for p in people}
    services = []
    for m, i in _items(top, "service_accounts", problems):
        expect_map(m, m.where, problems, f"service_accounts[{i}]", required=("account", "custodian"),
                   optional=("unit",))
        acc = expect_str(m.get("account"), m.at("account"), problems, "account")
        cust = expect_str(m.get("custodian"), m.at("custodian"), problems, "custodian")
        if cust and cust not in accounts:
            problems.add(m.at("custodian"), f"custodian {cust!r} is not listed under people")
        unit = m.get("unit")
        if unit is not None:
            unit = expect_str(unit, m.at("unit"), problems, "unit")
            if unit is not None and not _UNIT_GLOB.fullmatch(unit):
                problems.add(m.at("unit"), f"unit {unit!r} is not a systemd unit name or glob (such as cron.service)")
                unit = None
        if acc and cust:
            services.append(ServiceAccount(acc, cust, unit))
    if host.custodian and people and host.custodian not in accounts:
        problems.add(h.at("custodian") if h else top.where,
                     f"custodian {host.custodian!r} is not listed under people")
    if host.unit and unit_names and host.unit not in unit_names:
        problems.add(h.at("unit") if h else top.where, f"unit {host.unit!r} is not listed under units")
    zones = _zones(top, problems)
    if host.zone and host.zone not in zones.names:
        problems.add(h.at("zone") if h else top.where, f"zone {host.zone!r} is not defined under zones")
    assets = []
    for m, i in _items(top, "assets", problems):
        expect_map(m, m.where, problems, f"assets[{i}]", required=("path", "level"),
                   optional=("unit", "title"))
        glob = expect_str(m.get("path"), m.at("path"), problems, "asset path")
        lvl = _level(m.get("level"), m.at("level"), problems, allow_none=False)
        aunit = expect_str(m.get("unit"), m.at("unit"), problems, "unit", allow_none=True)
        if glob is None or lvl is None:
            continue
        if not glob.startswith("/"):
            problems.add(m.at("path"), f"asset path {glob!r} must be absolute")
            continue
        try:
            pattern = compile_glob(glob)
        except ValueError as exc:
            problems.add(m.at("path"), f"bad glob {glob!r}: {exc}")
            continue
        assets.append(Asset(glob, lvl, aunit, pattern, literal_prefix(glob)))
    media: list[Medium] = []
    for m, i in _items(top, "media", problems):
        expect_map(m, m.where, problems, f"media[{i}]", required=("serial",),
                   optional=("label", "level", "holder", "uuid", "vendor", "product"))
        serial = expect_str(m.get("serial"), m.at("serial"), problems, "serial")
        ids = {k: expect_str(m.get(k), m.at(k), problems, k, allow_none=True) for k in ("uuid", "vendor", "product")}
        for k in ("vendor", "product"):
            if ids[k] is not None and not re.fullmatch(r"[0-9a-fA-F]{4}", ids[k] or ""):
                problems.add(m.at(k), f"{k} must be a USB id of four hex digits, not {ids[k]!r}")
                ids[k] = None
        holder = expect_str(m.get("holder"), m.at("holder"), problems, "holder", allow_none=True)
        if holder and holder not in accounts:
            problems.add(m.at("holder"), f"holder {holder!r} is not listed under people")
        if serial:
            if any(x.serial == serial for x in media):
                problems.add(m.at("serial"), f"duplicate serial {serial!r}")
            label = m.get("label")
            media.append(Medium(serial, _level(m.get("level"), m.at("level"), problems), holder,
                                str(label) if label is not None else None, ids["uuid"],
                                ids["vendor"].lower() if ids["vendor"] else None,
                                ids["product"].lower() if ids["product"] else None))
    example = top.get("example", False)
    if not isinstance(example, bool):
        problems.add(top.at("example"), f"example must be true or false, not {example!r}")
        example = True  # fail closed: a registry that may be the example is not trusted
    problems.raise_if_any()
    return Registry(path, host, tuple(units), tuple(departments), tuple(people), tuple(services),
                    zones, tuple(assets), tuple(media), example)


def _zones(top: LDict, problems: Problems) -> ZoneMap:
    if "zones" not in top:
        return ZoneMap("internet", [])
    z = expect_map(top["zones"], top.at("zones"), problems, "zones", optional=("default", "networks"))
    if z is None:
        return ZoneMap("internet", [])
    default = expect_str(z.get("default", "internet"), z.at("default"), problems, "zones.default")
    networks: list[tuple[str, IPNetwork]] = []
    names: list[str] = []
    for m, i in _items(z, "networks", problems):
        expect_map(m, m.where, problems, f"zones.networks[{i}]", required=("name", "cidrs"))
        name = expect_str(m.get("name"), m.at("name"), problems, "zone name")
        cidrs = expect_list(m.get("cidrs"), m.at("cidrs"), problems, "cidrs")
        if name:
            names.append(name)
        for j, c in enumerate(cidrs or ()):
            where = cidrs.at(j) if cidrs is not None else m.where
            try:
                net = ipaddress.ip_network(str(c), strict=True)
            except ValueError as exc:
                problems.add(where, f"bad CIDR {c!r}: {exc}")
                continue
            if name:
                networks.append((name, net))
    zmap = ZoneMap(default or "internet", networks)
    zmap.names = zmap.names | frozenset(names)
    return zmap


def load_registry(path: str | Path) -> Registry:
    """Load and validate a registry file; raise LoadError(s) with locations."""
    doc = load_file(path)
    if doc is None:
        raise LoadError(Location(str(path), 1, 1), "registry is empty")
    return parse_registry(doc, str(path))


__all__ = ["Asset", "Department", "Medium", "Person", "Registry", "ServiceAccount", "Unit", "ZoneMap",
           "load_registry", "parse_registry", "str_list"]
