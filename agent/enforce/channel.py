"""What enforcement must leave open, derived from the config and the registry, and checked.

The management channel is the Prometheus scrape (the ``listen`` port), the
syslog target, the DNS resolvers of ``/etc/resolv.conf`` and the addresses
the admin lists in ``enforce.network.allow`` (the policy source, a jump host).
A config whose enforcement would cut one of them is refused, by ``dutywatch
check`` and by the agent, with its place.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.enforce.nft import IPNet, Layout
from agent.errors import LoadError, Location
from agent.registry import Registry

RESOLV_CONF = Path("/etc/resolv.conf")
ANY4, ANY6 = ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")


@dataclass(frozen=True)
class Channel:
    """The forbidden zones and what stays open, for one config and registry."""

    forbidden: tuple[str, ...]
    default_forbidden: bool  # the registry's default zone (all that no zone names) is forbidden
    zone_nets: dict[str, tuple[IPNet, ...]]  # CIDRs of each named zone
    layout: Layout
    named: dict[str, str]  # management address -> what it is (for messages)
    default_zone: str = ""  # the registry's zone for every address no zone names

    def zone_of(self, ip: str) -> str:
        """The zone an address is in (the most specific named network, else the default zone)."""
        try:
            a = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return self.default_zone
        best: tuple[int, str] | None = None
        for name, nets in self.zone_nets.items():
            for n in nets:
                if a in n and (best is None or n.prefixlen > best[0]):
                    best = (n.prefixlen, name)
        return best[1] if best is not None else self.default_zone

    def forbidden_nets(self) -> tuple[IPNet, ...]:
        """Every address of the forbidden zones (the table keeps the open zones open before it looks)."""
        if self.default_forbidden:
            return (ANY4, ANY6)
        return tuple(n for z in self.forbidden for n in self.zone_nets.get(z, ()))

    def nets_of_zone(self, zone: str) -> tuple[IPNet, ...]:
        """What blocking a whole zone puts in the kernel (the default zone: everything, minus the open zones)."""
        if zone in self.zone_nets:
            return self.zone_nets[zone]
        return (ANY4, ANY6)

    def is_management(self, ip: str) -> bool:
        """Whether an address belongs to the management channel."""
        try:
            a = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        return any(a in n for n in self.layout.management)


def resolvers(path: Path = RESOLV_CONF) -> list[str]:
    """``nameserver`` addresses of resolv.conf."""
    out = []
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.append(parts[1].split("%", 1)[0])
    except OSError:
        pass
    return out


def _host_addresses(host: str) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        return sorted({str(ai[4][0]) for ai in socket.getaddrinfo(host, None)})
    except OSError:
        return []


def derive(config: Any, registry: Registry, resolv: Path = RESOLV_CONF) -> tuple[Channel, list[LoadError]]:
    """The channel for ``config`` (an agent Config) and ``registry``, and every problem with it."""
    ec = config.enforce
    where = ec.network_where or ec.where or Location(config.path)
    problems: list[LoadError] = []
    zones = registry.zones
    forbidden = tuple(ec.forbidden) or (zones.default,)
    for z in forbidden:
        if z not in zones.names:
            problems.append(LoadError(where, f"enforce.network.forbidden names zone {z!r}, which the registry "
                                             f"does not define (zones: {', '.join(sorted(zones.names))})"))
    if registry.host.zone and registry.host.zone in forbidden:
        problems.append(LoadError(where, f"enforce.network.forbidden names {registry.host.zone!r}, the zone of this "
                                         "host itself: enforcing it would cut the host off its own network"))
    zone_nets: dict[str, list[IPNet]] = {}
    for name, net in zones.networks:
        zone_nets.setdefault(name, []).append(net)
    permitted = [n for name, nets in zone_nets.items() if name not in forbidden for n in nets]
    named: dict[str, str] = {}
    management: list[IPNet] = []
    allowed = []
    for a in ec.allow:
        with contextlib.suppress(ValueError):  # a bad one is reported by the config's own check
            allowed.append(ipaddress.ip_network(a, strict=False))

    def keep(addr: str, what: str, explicit: bool) -> None:
        try:
            net = ipaddress.ip_network(addr, strict=False)
        except ValueError:
            problems.append(LoadError(where, f"{what}: {addr!r} is not an address"))
            return
        zone = zones.lookup(str(net.network_address))
        explicit = explicit or any(net.subnet_of(a) for a in allowed if a.version == net.version)  # type: ignore[arg-type]
        if zone in forbidden and not explicit and ec.active:
            problems.append(LoadError(where, f"{what} {addr} is in zone {zone!r}, which enforcement forbids: "
                                             "blocking it would cut the management channel (list it in "
                                             "enforce.network.allow to keep it open on purpose, or forbid "
                                             "other zones)"))
        management.append(net)
        named[str(net)] = what

    if config.forward_syslog is not None:
        from agent.forward.target import parse_target
        target = parse_target(config.forward_syslog, Location(config.path))
        addrs = _host_addresses(target.host)
        if not addrs:
            problems.append(LoadError(where, f"the syslog target {target.host} does not resolve: enforcement "
                                             "cannot keep it open"))
        for a in addrs:
            keep(a, f"the syslog target {target.label}", False)
    where_dns = "enforce.network.resolvers" if ec.resolvers is not None else str(resolv)
    for a in (ec.resolvers if ec.resolvers is not None else resolvers(resolv)):
        try:
            if ipaddress.ip_address(a).is_loopback:
                continue
        except ValueError:
            pass
        keep(a, f"the DNS resolver {a} ({where_dns})", False)
    for a in ec.allow:
        keep(a, "enforce.network.allow entry", True)
    port = None
    listen = str(config.listen)
    if listen:
        try:
            port = int(listen.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            port = None
    layout = Layout(port, tuple(management), tuple(permitted))
    default_forbidden = zones.default in forbidden
    return Channel(forbidden, default_forbidden, {k: tuple(v) for k, v in zone_nets.items()}, layout,
                   named, zones.default), problems
